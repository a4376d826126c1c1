// Package workerpolicy owns the executor's persistent-worker policy: which
// actions go to a warm worker and under which pool key (Plan), the protocols
// it speaks, the per-key record of what happened (fallbacks, warm and cold
// times, verification results, quarantine after a worker damaged its inputs
// or disagreed with a one-shot run), the history of served keys that is
// prewarmed after a restart, and the workspace rules (the tool files a
// worker keeps, everything else removed between requests).
//
// It does not run actions: the builder stages, sends the request through
// the workerpool lease, collects and uploads, and reports each outcome here.
// All of the policy's state is behind Workers' own lock; callers only use
// its methods.
package workerpolicy

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"

	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
	"github.com/hearth-build/hearth/internal/wsclean"
)

// Options configure Workers.
type Options struct {
	// Protocols are the wire protocols this executor speaks; an action
	// asking for another runs one-shot.
	Protocols []workerproto.Protocol
	// VerifyFraction of the actions a worker served are also run one-shot
	// and compared (0: never, 1: always).
	VerifyFraction float64
	// HistoryPath, when set, is where the most served keys are remembered
	// for prewarming after a restart.
	HistoryPath string
	Logger      *slog.Logger
	// Random returns a number in [0, 1) for verification sampling
	// (default math/rand/v2.Float64).
	Random func() float64
}

// Workers is the persistent-worker side of one executor: the pool and the
// policy around it. Its methods are safe for concurrent use.
type Workers struct {
	pool *workerpool.Pool
	opts Options
	log  *slog.Logger

	// saves are the history writes in flight; Close waits for them.
	saves  sync.WaitGroup
	saveMu sync.Mutex // one history write at a time
	// releases are the leases being ended in the background (ReleaseLater);
	// Close waits for them before it stops the pool.
	releases sync.WaitGroup

	// cleaned remembers the workspaces' unchanged tool directories, so
	// emptying a workspace after a request does not list each one again.
	cleaned wsclean.Index
	// toolSets remembers what plans derived from recent tool sets.
	toolSets toolSets

	mu      sync.Mutex
	keys    map[string]*keyRecord
	history map[string]*historyEntry
	saveErr error // the first failed background save, for Close
	closed  bool
}

// New serves persistent-worker actions from pool with the policy of o.
func New(pool *workerpool.Pool, o Options) *Workers {
	if o.Random == nil {
		o.Random = rand.Float64
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Workers{pool: pool, opts: o, log: log, keys: map[string]*keyRecord{}, history: map[string]*historyEntry{}}
}

// Acquire leases a worker for plan (see workerpool.Pool.Acquire).
func (w *Workers) Acquire(ctx context.Context, plan *Plan) (*workerpool.Lease, error) {
	return w.pool.Acquire(ctx, plan.Spec)
}

// Close waits for history writes in flight, saves the history once more and
// stops every worker. It returns the first error of any history write.
func (w *Workers) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.releases.Wait()
	w.saves.Wait()
	var err error
	if w.opts.HistoryPath != "" {
		w.saveMu.Lock()
		err = w.SaveHistory(w.opts.HistoryPath)
		w.saveMu.Unlock()
	}
	w.pool.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.saveErr, err)
}

func (w *Workers) supports(p workerproto.Protocol) bool {
	return slices.Contains(w.opts.Protocols, p)
}

// WarmClientKeys lists the clients' persistentWorkerKey values for which an
// idle warm worker exists here. The scheduler routes by the client's key: it
// cannot compute Hearth's pool key, which needs the input tree.
func (w *Workers) WarmClientKeys() []string {
	warm := w.pool.WarmKeys()
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, k := range warm {
		if r := w.keys[k]; r != nil && r.clientKey != "" && !seen[r.clientKey] {
			seen[r.clientKey] = true
			out = append(out, r.clientKey)
		}
	}
	sort.Strings(out)
	return out
}

// WarmWorkers counts, per routing key (workeraction.RoutingKey), the
// requests that started workers can take now, for the scheduler's routing.
func (w *Workers) WarmWorkers() map[string]int {
	capacity := w.pool.WarmCapacity()
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]int, len(capacity))
	for k, n := range capacity {
		if r := w.keys[k]; r != nil && r.routingKey != "" {
			out[r.routingKey] += n
		}
	}
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

// Status reports every key the pool or the policy knows.
func (w *Workers) Status() Status {
	ps := w.pool.Stats()
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
			out.Verified, out.Mismatches, out.MismatchedPaths = r.verified, r.mismatches, slices.Clone(r.lastMismatches)
			out.MedianWarmMillis = float64(r.warmDurations.median().Microseconds()) / 1000
			out.MedianColdMillis = float64(r.coldDurations.median().Microseconds()) / 1000
		}
		st.Keys = append(st.Keys, out)
	}
	sort.Slice(st.Keys, func(i, j int) bool { return st.Keys[i].Key < st.Keys[j].Key })
	return st
}
