package scheduler

import (
	"context"
	"encoding/json"
	"maps"
	"sort"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// ExecutorStatus describes one connected executor for the /status page.
type ExecutorStatus struct {
	Name        string              `json:"name"`
	Properties  map[string][]string `json:"properties"`
	MaxInflight int                 `json:"max_inflight"`
	Running     int                 `json:"running"`
	Accepting   bool                `json:"accepting"`
	WarmKeys    []string            `json:"warm_keys"`
	// WarmWorkers is the scheduler's view of idle warm workers per routing
	// key (the executor's last report less what was assigned since).
	WarmWorkers map[string]int32 `json:"warm_workers"`
	// PersistentWorkers is the executor's own report, per pool key.
	PersistentWorkers json.RawMessage `json:"persistent_workers,omitempty"`
}

// Status is the scheduler's state for the /status page.
type Status struct {
	// Replica names this replica when the state is shared (Config.Replica).
	Replica    string `json:"replica,omitempty"`
	Queued     int    `json:"queued"`
	Operations int    `json:"operations"`
	// Executors are this replica's own.
	Executors []ExecutorStatus `json:"executors"`
	// TasksAdopted counts the running attempts that executors reported
	// when they (re)connected here and this replica took over (from a
	// replica that went away, or from an older session); TasksDone the
	// reported ones whose operation was completed already (a result the
	// executor reports again, unsure the dead replica read it);
	// TasksRefused the others, cancelled (their lease had lapsed, ...).
	// All since start.
	TasksAdopted int64 `json:"tasks_adopted"`
	TasksDone    int64 `json:"tasks_done"`
	TasksRefused int64 `json:"tasks_refused"`
	// Shared is the state every replica shares, as Redis holds it; only
	// from StatusWithShared.
	Shared *SharedStatus `json:"shared,omitempty"`
}

// SharedStatus is the size of the shared scheduler state.
type SharedStatus struct {
	// Queued is what waits in every shape's shared queue, for executors
	// at any replica.
	Queued int `json:"queued"`
	// Leased counts the actions assigned at any replica and not finished.
	Leased int `json:"leased"`
	// Queues are the shapes with something queued.
	Queues []SharedQueue `json:"queues"`
	// Error is set when the shared state did not answer.
	Error string `json:"error,omitempty"`
}

// SharedQueue is one shape's shared queue.
type SharedQueue struct {
	// Platform is the shape's properties, "name=value" joined by commas.
	Platform   string                    `json:"platform"`
	Timeout    string                    `json:"timeout,omitempty"`
	Queued     int                       `json:"queued"`
	Properties []*repb.Platform_Property `json:"-"`
}

// Status reports the queue and every connected executor.
func (s *Scheduler) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Replica: s.cfg.Replica, Queued: s.queued, Operations: len(s.ops), Executors: []ExecutorStatus{},
		TasksAdopted: s.adopted, TasksDone: s.alreadyDone, TasksRefused: s.refused}
	for e := range s.executors {
		es := ExecutorStatus{
			Name: e.name, Properties: e.caps.props, MaxInflight: e.maxInflight,
			Running: len(e.tasks), Accepting: e.accepting, WarmKeys: []string{},
			WarmWorkers: maps.Clone(e.warm),
		}
		for k := range e.warm {
			es.WarmKeys = append(es.WarmKeys, k)
		}
		sort.Strings(es.WarmKeys)
		if json.Valid([]byte(e.status)) {
			es.PersistentWorkers = json.RawMessage(e.status)
		}
		st.Executors = append(st.Executors, es)
	}
	sort.Slice(st.Executors, func(i, j int) bool { return st.Executors[i].Name < st.Executors[j].Name })
	return st
}

// StatusWithShared is Status plus, with shared state, the shared queues and
// leases read from it: O(shapes) work, no scan of operations.
func (s *Scheduler) StatusWithShared(ctx context.Context) Status {
	st := s.Status()
	if s.shared == nil {
		return st
	}
	sh := &SharedStatus{Queues: []SharedQueue{}}
	st.Shared = sh
	c, err := s.shared.Counts(ctx)
	if err != nil {
		sh.Error = err.Error()
		return st
	}
	sh.Leased = c.Leased
	for key, n := range c.Queued {
		sh.Queued += n
		if n == 0 {
			continue
		}
		q := SharedQueue{Platform: key, Queued: n}
		if props, timeout, ok := parseShapeKey(key); ok {
			q.Properties = props
			parts := make([]string, 0, len(props))
			for _, p := range props {
				parts = append(parts, p.GetName()+"="+p.GetValue())
			}
			q.Platform = strings.Join(parts, ",")
			if timeout > 0 {
				q.Timeout = timeout.String()
			}
		}
		sh.Queues = append(sh.Queues, q)
	}
	sort.Slice(sh.Queues, func(i, j int) bool {
		a, b := sh.Queues[i], sh.Queues[j]
		return a.Platform < b.Platform || a.Platform == b.Platform && a.Timeout < b.Timeout
	})
	return st
}
