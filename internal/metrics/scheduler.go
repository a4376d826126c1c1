package metrics

import (
	"sort"
	"strings"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/hearth-build/hearth/internal/scheduler"
)

// Scheduler is a scheduler.Observer that keeps the scheduler's series:
//
//	hearth_scheduler_queue_depth{platform}           actions waiting
//	hearth_scheduler_queue_wait_seconds{platform}    time from queued to handed out
//	hearth_scheduler_requeues_total                  actions queued again after their executor left
//	hearth_scheduler_actions_total{outcome}          finished operations: cached, success,
//	                                                 exit_nonzero, timeout, cancelled, error
//	hearth_scheduler_execution_seconds{outcome}      handed out to finished
//	hearth_scheduler_executors_connected             executor sessions
//	hearth_scheduler_actions_running                 actions on executors
//	hearth_scheduler_operations                      operations known (running, queued, finished and kept)
//	hearth_scheduler_task_handovers_total{result}    running attempts that reconnecting executors reported:
//	                                                 adopted (taken over, e.g. from a killed replica), done
//	                                                 (completed already: a result reported again) or refused (cancelled)
//
// Platforms are labelled by their sorted properties (persistent worker
// hints left out), at most 20 distinct platforms, then "other".
type Scheduler struct {
	platforms *Capper
	depth     *prometheus.GaugeVec
	wait      *prometheus.HistogramVec
	requeues  prometheus.Counter
	outcomes  *prometheus.CounterVec
	execTime  *prometheus.HistogramVec

	mu      sync.Mutex
	queued  map[string]queuedOp // by operation name
	started map[string]time.Time
}

type queuedOp struct {
	platform string
	since    time.Time
}

// NewScheduler registers the scheduler's series on reg. status, if set, is
// read at each scrape for the gauges of connected executors.
func NewScheduler(reg prometheus.Registerer, status func() scheduler.Status) *Scheduler {
	m := &Scheduler{
		platforms: NewCapper(20, 120),
		depth: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hearth_scheduler_queue_depth", Help: "Actions waiting in the queue, by platform.",
		}, []string{"platform"})),
		wait: register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hearth_scheduler_queue_wait_seconds", Help: "Time actions spent queued before an executor took them, by platform.",
			Buckets: durationBuckets,
		}, []string{"platform"})),
		requeues: register(reg, prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hearth_scheduler_requeues_total", Help: "Actions queued again because their executor went away.",
		})),
		outcomes: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_scheduler_actions_total", Help: "Finished operations by outcome.",
		}, []string{"outcome"})),
		execTime: register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hearth_scheduler_execution_seconds", Help: "Time from handing an action to an executor to its result, by outcome.",
			Buckets: durationBuckets,
		}, []string{"outcome"})),
		queued:  map[string]queuedOp{},
		started: map[string]time.Time{},
	}
	for _, o := range []string{"cached", "success", "exit_nonzero", "timeout", "cancelled", "error"} {
		m.outcomes.WithLabelValues(o) // present from the start, so rate() sees the first one
	}
	if status != nil && reg != nil {
		gauge := func(name, help string, f func(scheduler.Status) float64) {
			register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(status()) }))
		}
		gauge("hearth_scheduler_executors_connected", "Connected executor sessions.", func(s scheduler.Status) float64 { return float64(len(s.Executors)) })
		gauge("hearth_scheduler_actions_running", "Actions assigned to executors and not finished.", func(s scheduler.Status) float64 {
			n := 0
			for _, e := range s.Executors {
				n += e.Running
			}
			return float64(n)
		})
		gauge("hearth_scheduler_operations", "Operations the scheduler knows, finished ones included until they expire.", func(s scheduler.Status) float64 { return float64(s.Operations) })
		// Counted by the scheduler since start, so read at the scrape
		// like the gauges.
		for result, f := range map[string]func(scheduler.Status) int64{
			"adopted": func(s scheduler.Status) int64 { return s.TasksAdopted },
			"done":    func(s scheduler.Status) int64 { return s.TasksDone },
			"refused": func(s scheduler.Status) int64 { return s.TasksRefused },
		} {
			register(reg, prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "hearth_scheduler_task_handovers_total", ConstLabels: prometheus.Labels{"result": result},
				Help: "Running attempts that executors reported when they reconnected here: adopted (taken over, as from a replica that went away), done (completed already: a result reported again) or refused (cancelled: their lease had lapsed, ...).",
			}, func() float64 { return float64(f(status())) }))
		}
	}
	return m
}

// Queued implements scheduler.Observer.
func (m *Scheduler) Queued(e scheduler.OpEvent) {
	p := m.platforms.Label(PlatformLabel(e.Platform))
	m.mu.Lock()
	if _, ok := m.queued[e.Name]; !ok {
		m.depth.WithLabelValues(p).Inc()
	}
	m.queued[e.Name] = queuedOp{platform: p, since: time.Now()}
	delete(m.started, e.Name)
	m.mu.Unlock()
	if e.Attempt > 0 {
		m.requeues.Inc()
	}
}

// Started implements scheduler.Observer.
func (m *Scheduler) Started(e scheduler.OpEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if q, ok := m.leaveQueueLocked(e.Name); ok {
		m.wait.WithLabelValues(q.platform).Observe(seconds(time.Since(q.since)))
	}
	m.started[e.Name] = time.Now()
}

func (m *Scheduler) leaveQueueLocked(name string) (queuedOp, bool) {
	q, ok := m.queued[name]
	if ok {
		delete(m.queued, name)
		m.depth.WithLabelValues(q.platform).Dec()
	}
	return q, ok
}

// Finished implements scheduler.Observer.
func (m *Scheduler) Finished(e scheduler.OpEvent) {
	outcome := Outcome(e.Response)
	m.outcomes.WithLabelValues(outcome).Inc()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leaveQueueLocked(e.Name)
	if t, ok := m.started[e.Name]; ok {
		delete(m.started, e.Name)
		m.execTime.WithLabelValues(outcome).Observe(seconds(time.Since(t)))
	}
}

// Outcome classifies a finished operation's response.
func Outcome(r *repb.ExecuteResponse) string {
	switch c := code.Code(r.GetStatus().GetCode()); {
	case r.GetCachedResult():
		return "cached"
	case c == code.Code_DEADLINE_EXCEEDED:
		return "timeout"
	case c == code.Code_CANCELLED:
		return "cancelled"
	case c != code.Code_OK:
		return "error"
	case r.GetResult().GetExitCode() != 0:
		return "exit_nonzero"
	}
	return "success"
}

// PlatformLabel is the label value of a platform: its properties sorted,
// name=value joined by commas, without the persistent worker hints (they
// differ per tool, not per machine).
func PlatformLabel(p *repb.Platform) string {
	var parts []string
	for _, prop := range p.GetProperties() {
		n := prop.GetName()
		if strings.HasPrefix(n, "persistentWorker") || n == "supports-workers" || n == "supports-multiplex-workers" || n == "requires-worker-protocol" {
			continue
		}
		parts = append(parts, n+"="+prop.GetValue())
	}
	if len(parts) == 0 {
		return "default"
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
