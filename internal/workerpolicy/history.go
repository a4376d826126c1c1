package workerpolicy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// The executor remembers the pool keys it served most, with everything
// needed to start their workers again (startup argv, environment, protocol,
// tool digests), so that after a restart it can start them before the first
// action arrives.

// maxHistoryKeys bounds the keys remembered and prewarmed.
const maxHistoryKeys = 16

// historyEntry is one remembered key, as stored on disk.
type historyEntry struct {
	Key       string `json:"key"`
	Family    string `json:"family,omitempty"`
	ClientKey string `json:"client_key,omitempty"`
	// RoutingKey is what the scheduler routes the key's actions by. Older
	// files lack it; their client key (if any) is the same thing.
	RoutingKey  string        `json:"routing_key,omitempty"`
	Served      int64         `json:"served"`
	Argv        []string      `json:"argv"`
	Env         []string      `json:"env"`
	Protocol    string        `json:"protocol"`
	Multiplex   bool          `json:"multiplex,omitempty"`
	Sandboxing  bool          `json:"sandboxing,omitempty"`
	Cancellable bool          `json:"cancellable,omitempty"`
	Tools       []historyTool `json:"tools"`
}

type historyTool struct {
	Path       string `json:"path"`
	Function   string `json:"digest_function"`
	Hash       string `json:"hash"`
	Size       int64  `json:"size"`
	Executable bool   `json:"executable,omitempty"`
}

// servedLocked counts one action served by a worker of spec's key; w.mu is
// held.
func (w *Workers) servedLocked(spec *workerpool.Spec, clientKey string) {
	e := w.history[spec.Key]
	if e == nil {
		e = &historyEntry{
			Key: spec.Key, Family: spec.Family, ClientKey: clientKey, RoutingKey: w.record(spec.Key).routingKey, Argv: spec.Argv, Env: spec.Env,
			Protocol: spec.Protocol.String(), Multiplex: spec.Multiplex, Sandboxing: spec.Sandboxing, Cancellable: spec.Cancellable,
		}
		for _, t := range spec.Tools {
			e.Tools = append(e.Tools, historyTool{Path: t.Path, Function: digest.Lower(t.Digest.Function), Hash: t.Digest.Hash, Size: t.Digest.Size, Executable: t.Executable})
		}
		w.history[spec.Key] = e
	}
	e.Served++
	// Save when a key is new and then now and again, so that a crash loses
	// little; Close saves the rest (and waits for these writes).
	if w.opts.HistoryPath != "" && !w.closed && (e.Served == 1 || e.Served%100 == 0) {
		w.saves.Add(1)
		go func() {
			defer w.saves.Done()
			w.saveMu.Lock()
			err := w.SaveHistory(w.opts.HistoryPath)
			w.saveMu.Unlock()
			if err != nil {
				w.log.Warn("saving the persistent worker history", "path", w.opts.HistoryPath, "err", err)
				w.mu.Lock()
				if w.saveErr == nil {
					w.saveErr = err
				}
				w.mu.Unlock()
			}
		}()
	}
}

// SaveHistory writes the most served keys to path (atomically).
func (w *Workers) SaveHistory(path string) error {
	w.mu.Lock()
	entries := make([]*historyEntry, 0, len(w.history))
	for k, e := range w.history {
		if r := w.keys[k]; r != nil && r.quarantined != "" {
			continue // never prewarm a key whose workers were caught keeping state
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Served > entries[j].Served })
	if len(entries) > maxHistoryKeys {
		entries = entries[:maxHistoryKeys]
	}
	data, err := json.MarshalIndent(entries, "", "  ")
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(path, data); err != nil {
		return fmt.Errorf("saving the persistent worker history: %w", err)
	}
	return nil
}

// ReadHistory reads a file written by SaveHistory (nil when absent).
func ReadHistory(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	return data, err
}

// Prewarm starts perKey workers for each remembered key whose tool files are
// all in store, most served first, and keeps remembering every key. It
// returns how many keys it started workers for.
func (w *Workers) Prewarm(ctx context.Context, history []byte, store cas.Store, perKey int) (int, error) {
	if len(history) == 0 || perKey <= 0 {
		return 0, nil
	}
	var entries []*historyEntry
	if err := json.Unmarshal(history, &entries); err != nil {
		return 0, fmt.Errorf("reading worker history: %w", err)
	}
	warmed := 0
	w.mu.Lock()
	for _, e := range entries {
		// Remembered even when not prewarmed now (its tool may come back);
		// keys served since replace it in the top list over time.
		w.history[e.Key] = e
		r := w.record(e.Key)
		r.clientKey = e.ClientKey
		r.routingKey = e.RoutingKey
		if r.routingKey == "" {
			r.routingKey = e.ClientKey
		}
	}
	w.mu.Unlock()
	for _, e := range entries {
		spec, digests, err := e.spec()
		if err != nil {
			continue
		}
		missing, err := store.FindMissing(ctx, digests)
		if err != nil {
			return warmed, err
		}
		if len(missing) > 0 {
			continue // the tool is not here any more: its users moved on
		}
		if err := w.pool.Warm(spec, perKey); err != nil {
			continue
		}
		warmed++
	}
	return warmed, nil
}

func (e *historyEntry) spec() (*workerpool.Spec, []digest.Digest, error) {
	protocol, err := workerproto.ParseProtocol(e.Protocol)
	if err != nil {
		return nil, nil, err
	}
	var tools []workerpool.Tool
	var digests []digest.Digest
	for _, t := range e.Tools {
		fn, ok := digest.FunctionFromLower(t.Function)
		if !ok {
			return nil, nil, fmt.Errorf("digest function %q", t.Function)
		}
		d, err := digest.New(fn, t.Hash, t.Size)
		if err != nil {
			return nil, nil, err
		}
		if err := inputtree.ValidateRelativePath(t.Path); err != nil || t.Path == "" {
			return nil, nil, fmt.Errorf("tool path %q", t.Path)
		}
		tools = append(tools, workerpool.Tool{Path: t.Path, Digest: d, Executable: t.Executable})
		digests = append(digests, d)
	}
	return &workerpool.Spec{
		Key: e.Key, Family: e.Family, Argv: e.Argv, Env: e.Env, Protocol: protocol,
		Multiplex: e.Multiplex, Sandboxing: e.Sandboxing, Cancellable: e.Cancellable, Tools: tools,
	}, digests, nil
}
