package metrics

import (
	"strings"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hearth-build/hearth/internal/metadatapb"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// Pool key labels: the first keyWidth characters of Hearth's pool key (a
// hash), for at most maxKeys keys per process, then "other".
const (
	keyWidth = 12
	maxKeys  = 32
)

// Executor counts one process's executed actions, from the responses
// executors produce:
//
//	hearth_executor_actions_total{outcome}
//	hearth_executor_action_seconds{outcome}            worker start to worker completed
//	hearth_worker_warm_hits_total{key}                 actions served by a worker that had served before
//	hearth_worker_cold_starts_total{key}               actions that started a worker
//	hearth_worker_fallbacks_total{key,reason}          worker actions run one-shot instead
//	hearth_worker_quarantines_total{key}               keys quarantined (outputs differed, inputs damaged)
//	hearth_worker_action_seconds{key,start}            execution time on a worker, start = warm | cold
//
// and, from the pools added with AddPool, read at each scrape:
//
//	hearth_worker_processes{key,state}                 live workers: starting, idle, busy
//	hearth_worker_recycles_total{key,reason}           stopped workers by reason
type Executor struct {
	keys       *Capper
	reasons    *Capper
	actions    *prometheus.CounterVec
	actionTime *prometheus.HistogramVec
	warm       *prometheus.CounterVec
	cold       *prometheus.CounterVec
	fallbacks  *prometheus.CounterVec
	quarantine *prometheus.CounterVec
	workerTime *prometheus.HistogramVec
	pools      *poolCollector
}

// NewExecutor registers the executor series on reg. Executors of one
// process share one Executor.
func NewExecutor(reg prometheus.Registerer) *Executor {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
	}
	histogram := func(name, help string, labels ...string) *prometheus.HistogramVec {
		return register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: durationBuckets}, labels))
	}
	m := &Executor{
		keys:       NewCapper(maxKeys, keyWidth),
		reasons:    NewCapper(16, 40),
		actions:    counter("hearth_executor_actions_total", "Actions this process executed, by outcome.", "outcome"),
		actionTime: histogram("hearth_executor_action_seconds", "Time an executor spent on an action, from worker start to worker completed, by outcome.", "outcome"),
		warm:       counter("hearth_worker_warm_hits_total", "Actions served by a persistent worker that had served before, by pool key.", "key"),
		cold:       counter("hearth_worker_cold_starts_total", "Persistent worker actions that started a new worker, by pool key.", "key"),
		fallbacks:  counter("hearth_worker_fallbacks_total", "Persistent worker actions run one-shot instead, by pool key and reason.", "key", "reason"),
		quarantine: counter("hearth_worker_quarantines_total", "Pool keys quarantined because a worker kept state or damaged its inputs.", "key"),
		workerTime: histogram("hearth_worker_action_seconds", "Execution time of actions served by persistent workers, by pool key and start (warm or cold).", "key", "start"),
	}
	m.pools = register(reg, &poolCollector{
		keys: m.keys,
		processes: prometheus.NewDesc("hearth_worker_processes", "Live persistent worker processes, by pool key and state.",
			[]string{"key", "state"}, nil),
		recycles: prometheus.NewDesc("hearth_worker_recycles_total", "Persistent worker processes stopped, by pool key and reason.",
			[]string{"key", "reason"}, nil),
		last: map[string]map[workerpool.Reason]int64{}, sums: map[[2]string]float64{},
	})
	return m
}

// AddPool has the pool's statistics read at each scrape.
func (m *Executor) AddPool(stats func() workerpool.Stats) {
	m.pools.mu.Lock()
	m.pools.sources = append(m.pools.sources, stats)
	m.pools.mu.Unlock()
}

// ActionFinished counts one executed action.
func (m *Executor) ActionFinished(resp *repb.ExecuteResponse) {
	outcome := Outcome(resp)
	m.actions.WithLabelValues(outcome).Inc()
	md := resp.GetResult().GetExecutionMetadata()
	if md.GetWorkerStartTimestamp() != nil && md.GetWorkerCompletedTimestamp() != nil {
		m.actionTime.WithLabelValues(outcome).Observe(seconds(md.GetWorkerCompletedTimestamp().AsTime().Sub(md.GetWorkerStartTimestamp().AsTime())))
	}
	info := WorkerInfo(resp)
	if info == nil {
		return
	}
	key := m.keys.Label(info.GetPoolKey())
	if len(info.GetMismatch()) > 0 || strings.HasPrefix(info.GetFallbackReason(), "damaged_inputs") {
		m.quarantine.WithLabelValues(key).Inc()
	}
	if info.GetFellBack() {
		m.fallbacks.WithLabelValues(key, m.reasons.Label(FallbackReason(info.GetFallbackReason()))).Inc()
		return
	}
	start := "cold"
	if info.GetWarm() {
		start = "warm"
		m.warm.WithLabelValues(key).Inc()
	} else {
		m.cold.WithLabelValues(key).Inc()
	}
	if md.GetExecutionStartTimestamp() != nil && md.GetExecutionCompletedTimestamp() != nil {
		m.workerTime.WithLabelValues(key, start).Observe(seconds(md.GetExecutionCompletedTimestamp().AsTime().Sub(md.GetExecutionStartTimestamp().AsTime())))
	}
}

// WorkerInfo returns the persistent worker facts of a result, or nil when
// the action did not ask for a worker.
func WorkerInfo(resp *repb.ExecuteResponse) *metadatapb.PersistentWorkerInfo {
	for _, a := range resp.GetResult().GetExecutionMetadata().GetAuxiliaryMetadata() {
		info := &metadatapb.PersistentWorkerInfo{}
		if a.MessageIs(info) && a.UnmarshalTo(info) == nil {
			return info
		}
	}
	return nil
}

// FallbackReason is the kind of a fallback reason: the text before its
// first colon ("quarantined: outputs differ…" → "quarantined").
func FallbackReason(r string) string {
	if i := strings.Index(r, ":"); i >= 0 {
		r = r[:i]
	}
	if r == "" {
		return "unknown"
	}
	return r
}

// poolCollector turns pool snapshots into series. Recycle counts are per
// key and a pool forgets idle keys, so the collector keeps its own sums,
// grown by each key's increase since the last scrape: counters never go
// down, whatever the pool forgets or folds into "other".
type poolCollector struct {
	keys                *Capper
	processes, recycles *prometheus.Desc

	mu      sync.Mutex
	sources []func() workerpool.Stats
	last    map[string]map[workerpool.Reason]int64 // pool key → reason → last count seen
	sums    map[[2]string]float64                  // (label, reason) → total
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.processes
	ch <- c.recycles
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	procs := map[[2]string]int{}
	seen := map[string]bool{}
	for _, src := range c.sources {
		for _, ks := range src().Keys {
			label := c.keys.Label(ks.Key)
			procs[[2]string{label, "starting"}] += ks.Starting
			procs[[2]string{label, "idle"}] += ks.Idle
			procs[[2]string{label, "busy"}] += ks.Busy
			seen[ks.Key] = true
			last := c.last[ks.Key]
			if last == nil {
				last = map[workerpool.Reason]int64{}
				c.last[ks.Key] = last
			}
			for r, n := range ks.Recycles {
				if d := n - last[r]; d > 0 {
					c.sums[[2]string{label, string(r)}] += float64(d)
				}
				last[r] = n
			}
		}
	}
	for k := range c.last {
		if !seen[k] {
			delete(c.last, k) // forgotten: if it comes back, it counts from zero
		}
	}
	for k, n := range procs {
		ch <- prometheus.MustNewConstMetric(c.processes, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	for k, n := range c.sums {
		ch <- prometheus.MustNewConstMetric(c.recycles, prometheus.CounterValue, n, k[0], k[1])
	}
}
