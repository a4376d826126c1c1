package workerpolicy

import (
	"strconv"
	"strings"
	"sync"

	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// toolSet is what a plan derives from its tool files: the pool key (which
// hashes every one of them) and their paths and pool entries. Shared by the
// plans of one tool set, so never modified.
type toolSet struct {
	key   string
	paths map[string]bool
	spec  []workerpool.Tool
}

// toolSets remembers the tool sets of recent keys: a warm worker's
// consecutive requests share their tools (a node_modules of hundreds of
// files), and deriving the set costs three passes over the input tree and a
// hash over every tool file on every request.
type toolSets struct {
	mu    sync.Mutex
	byID  map[string]*toolSet
	order []string // insertion order, for the bound
}

// maxToolSets bounds the memo; a tool set is a few hundred small entries.
const maxToolSets = 64

// toolSetFor returns the tool set of an action with key input in (Tools
// unset) and tree, whose tools its startup arguments name.
func (w *Workers) toolSetFor(in workeraction.KeyInput, tree *inputtree.Tree, startup []string) *toolSet {
	id := workeraction.ToolSetID(tree, startup, "")
	var memoKey string
	if id != "" {
		// Everything else the pool key hashes: equal memo keys, equal pool keys.
		memoKey = strings.Join([]string{
			in.Instance, in.ClientKey, in.Protocol, in.WorkingDir,
			strconv.FormatBool(in.Multiplex), strconv.FormatBool(in.Sandboxing), strconv.FormatBool(in.Cancellable),
			strings.Join(in.Startup, "\x00"), strings.Join(in.Env, "\x00"), id,
		}, "\x01")
		w.toolSets.mu.Lock()
		ts := w.toolSets.byID[memoKey]
		w.toolSets.mu.Unlock()
		if ts != nil {
			return ts
		}
	}
	tools := workeraction.ToolFiles(tree, startup, "")
	in.Tools = tools
	ts := &toolSet{key: workeraction.PoolKey(in), paths: make(map[string]bool, len(tools)), spec: make([]workerpool.Tool, 0, len(tools))}
	for _, f := range tools {
		ts.paths[f.Path] = true
		ts.spec = append(ts.spec, workerpool.Tool{Path: f.Path, Digest: f.Digest, Executable: f.Executable})
	}
	if memoKey != "" {
		m := &w.toolSets
		m.mu.Lock()
		if m.byID == nil {
			m.byID = make(map[string]*toolSet)
		}
		if _, ok := m.byID[memoKey]; !ok {
			if len(m.order) >= maxToolSets {
				delete(m.byID, m.order[0])
				m.order = m.order[1:]
			}
			m.byID[memoKey] = ts
			m.order = append(m.order, memoKey)
		}
		m.mu.Unlock()
	}
	return ts
}
