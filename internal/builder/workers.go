package builder

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// Workers is the builder's persistent worker side: the pool, the policy
// (protocols, verification), quarantined keys, and per-key statistics that
// the pool cannot see (fallbacks, verification, warm vs cold action times).
type Workers struct {
	Pool      *workerpool.Pool
	protocols []workerproto.Protocol
	// verifyFraction of worker actions is also run one-shot and compared.
	verifyFraction float64
	random         func() float64

	// HistoryPath, when set, is where the most served keys are remembered
	// for prewarming after a restart.
	HistoryPath string
	saveMu      sync.Mutex

	mu      sync.Mutex
	keys    map[string]*keyRecord
	history map[string]*historyEntry
}

// Close saves the history and stops every worker.
func (w *Workers) Close() {
	if w.HistoryPath != "" {
		w.saveMu.Lock()
		w.SaveHistory(w.HistoryPath)
		w.saveMu.Unlock()
	}
	w.Pool.Close()
}

// keyRecord is what the builder knows of one pool key.
type keyRecord struct {
	clientKey      string
	quarantined    string // why, or ""
	fallbacks      map[string]int64
	verified       int64
	mismatches     int64
	warmDurations  durations
	coldDurations  durations
	lastMismatches []string
}

// durations keeps the most recent action times for a median.
type durations struct {
	samples []time.Duration
	next    int
}

const durationSamples = 201

func (d *durations) add(x time.Duration) {
	if len(d.samples) < durationSamples {
		d.samples = append(d.samples, x)
		return
	}
	d.samples[d.next] = x
	d.next = (d.next + 1) % durationSamples
}

func (d *durations) median() time.Duration {
	if len(d.samples) == 0 {
		return 0
	}
	s := slices.Clone(d.samples)
	slices.Sort(s)
	return s[len(s)/2]
}

// NewWorkers serves persistent worker actions from pool, for the given
// protocols, verifying verifyFraction of them against a one-shot run.
func NewWorkers(pool *workerpool.Pool, protocols []workerproto.Protocol, verifyFraction float64) *Workers {
	return &Workers{Pool: pool, protocols: protocols, verifyFraction: verifyFraction, random: rand.Float64, keys: map[string]*keyRecord{}}
}

func (w *Workers) record(key string) *keyRecord {
	r := w.keys[key]
	if r == nil {
		r = &keyRecord{fallbacks: map[string]int64{}}
		w.keys[key] = r
	}
	return r
}

func (w *Workers) supports(p workerproto.Protocol) bool {
	return slices.Contains(w.protocols, p)
}

// WarmClientKeys lists the clients' persistentWorkerKey values for which an
// idle warm worker exists here. The scheduler routes by the client's key: it
// cannot compute Hearth's pool key, which needs the input tree.
func (w *Workers) WarmClientKeys() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, k := range w.Pool.WarmKeys() {
		if r := w.keys[k]; r != nil && r.clientKey != "" && !seen[r.clientKey] {
			seen[r.clientKey] = true
			out = append(out, r.clientKey)
		}
	}
	sort.Strings(out)
	return out
}

// KeyStatus is one pool key in /status.
type KeyStatus struct {
	workerpool.KeyStats
	ClientKey        string           `json:"client_key,omitempty"`
	Quarantined      string           `json:"quarantined,omitempty"`
	Fallbacks        map[string]int64 `json:"fallbacks,omitempty"`
	Verified         int64            `json:"verified"`
	Mismatches       int64            `json:"verify_mismatches"`
	MismatchedPaths  []string         `json:"mismatched_paths,omitempty"`
	MedianWarmMillis float64          `json:"median_warm_ms"`
	MedianColdMillis float64          `json:"median_cold_ms"`
}

// Status is the persistent worker state of one executor.
type Status struct {
	Total workerpool.KeyStats `json:"total"`
	Keys  []KeyStatus         `json:"keys"`
}

// Status reports every key the pool or the builder knows.
func (w *Workers) Status() Status {
	ps := w.Pool.Stats()
	w.mu.Lock()
	defer w.mu.Unlock()
	st := Status{Total: ps.Total}
	byKey := map[string]workerpool.KeyStats{}
	for _, k := range ps.Keys {
		byKey[k.Key] = k
	}
	keys := map[string]bool{}
	for k := range byKey {
		keys[k] = true
	}
	for k := range w.keys {
		keys[k] = true
	}
	for k := range keys {
		ks := byKey[k]
		ks.Key = k
		out := KeyStatus{KeyStats: ks}
		if r := w.keys[k]; r != nil {
			out.ClientKey, out.Quarantined = r.clientKey, r.quarantined
			out.Fallbacks = maps.Clone(r.fallbacks)
			out.Verified, out.Mismatches, out.MismatchedPaths = r.verified, r.mismatches, r.lastMismatches
			out.MedianWarmMillis = float64(r.warmDurations.median().Microseconds()) / 1000
			out.MedianColdMillis = float64(r.coldDurations.median().Microseconds()) / 1000
		}
		st.Keys = append(st.Keys, out)
	}
	sort.Slice(st.Keys, func(i, j int) bool { return st.Keys[i].Key < st.Keys[j].Key })
	return st
}

// PrepareWorkspace is the pool's Prepare hook: it links the tool files of a
// new worker into its workspace, where they stay for the worker's life.
func (b *Builder) PrepareWorkspace(ctx context.Context, workspace string, spec *workerpool.Spec) error {
	tools, _ := spec.Tools.([]inputtree.File)
	for _, f := range tools {
		dst := filepath.Join(workspace, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("preparing worker workspace: %w", err)
		}
		if err := b.Files.Link(ctx, f.Digest, f.Executable, dst); err != nil {
			return fmt.Errorf("preparing worker workspace: tool %s: %w", f.Path, err)
		}
	}
	return nil
}
