package scheduler

import (
	"encoding/json"
	"maps"
	"sort"
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
	Queued     int              `json:"queued"`
	Operations int              `json:"operations"`
	Executors  []ExecutorStatus `json:"executors"`
}

// Status reports the queue and every connected executor.
func (s *Scheduler) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Queued: s.queued, Operations: len(s.ops), Executors: []ExecutorStatus{}}
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
