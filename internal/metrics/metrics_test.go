package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/metadatapb"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/workerpool"
)

func TestCapper(t *testing.T) {
	c := NewCapper(2, 4)
	for _, tc := range []struct{ in, want string }{
		{"abcdef", "abcd"}, {"xy", "xy"}, {"third", Other}, {"abcdef", "abcd"}, {"", ""}, {"xy", "xy"},
	} {
		if got := c.Label(tc.in); got != tc.want {
			t.Errorf("Label(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		resp *repb.ExecuteResponse
		want string
	}{
		{&repb.ExecuteResponse{Result: &repb.ActionResult{}}, "success"},
		{&repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: 2}}, "exit_nonzero"},
		{&repb.ExecuteResponse{CachedResult: true, Result: &repb.ActionResult{}}, "cached"},
		{&repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_DEADLINE_EXCEEDED)}}, "timeout"},
		{&repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_CANCELLED)}}, "cancelled"},
		{&repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_FAILED_PRECONDITION)}}, "error"},
	} {
		if got := Outcome(tc.resp); got != tc.want {
			t.Errorf("Outcome(%v) = %q, want %q", tc.resp, got, tc.want)
		}
	}
}

func TestPlatformLabel(t *testing.T) {
	p := &repb.Platform{Properties: []*repb.Platform_Property{
		{Name: "persistentWorkerKey", Value: "abc"}, {Name: "OSFamily", Value: "linux"}, {Name: "arch", Value: "amd64"},
	}}
	if got := PlatformLabel(p); got != "OSFamily=linux,arch=amd64" {
		t.Errorf("PlatformLabel = %q", got)
	}
	if got := PlatformLabel(nil); got != "default" {
		t.Errorf("PlatformLabel(nil) = %q", got)
	}
}

func TestSchedulerObserver(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewScheduler(reg, func() scheduler.Status {
		return scheduler.Status{Executors: []scheduler.ExecutorStatus{{Name: "a", Running: 2}, {Name: "b", Running: 1}}, TasksAdopted: 4, TasksDone: 2, TasksRefused: 1}
	})
	plat := &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}}}
	m.Queued(scheduler.OpEvent{Name: "op1", Platform: plat})
	m.Queued(scheduler.OpEvent{Name: "op2", Platform: plat})
	if got := testutil.ToFloat64(m.depth.WithLabelValues("OSFamily=linux")); got != 2 {
		t.Errorf("depth after two queued = %v, want 2", got)
	}
	m.Started(scheduler.OpEvent{Name: "op1", Executor: "a"})
	m.Queued(scheduler.OpEvent{Name: "op1", Platform: plat, Attempt: 1}) // its executor left
	m.Started(scheduler.OpEvent{Name: "op1", Executor: "b"})
	m.Finished(scheduler.OpEvent{Name: "op1", Response: &repb.ExecuteResponse{Result: &repb.ActionResult{}}})
	m.Finished(scheduler.OpEvent{Name: "op2", Response: &repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_CANCELLED)}}})
	m.Finished(scheduler.OpEvent{Name: "hit", Response: &repb.ExecuteResponse{CachedResult: true}})
	if got := testutil.ToFloat64(m.depth.WithLabelValues("OSFamily=linux")); got != 0 {
		t.Errorf("depth at the end = %v, want 0", got)
	}
	if got := testutil.ToFloat64(m.requeues); got != 1 {
		t.Errorf("requeues = %v, want 1", got)
	}
	for outcome, want := range map[string]float64{"success": 1, "cancelled": 1, "cached": 1, "error": 0} {
		if got := testutil.ToFloat64(m.outcomes.WithLabelValues(outcome)); got != want {
			t.Errorf("actions_total{outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
	if n := testutil.CollectAndCount(m.wait); n != 1 {
		t.Errorf("queue wait series = %d, want 1", n)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetMetric()[0].Gauge != nil {
			got[f.GetName()] = f.GetMetric()[0].GetGauge().GetValue()
		}
		if f.GetName() == "hearth_scheduler_task_handovers_total" {
			for _, m := range f.GetMetric() {
				got["handovers_"+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	if got["hearth_scheduler_executors_connected"] != 2 || got["hearth_scheduler_actions_running"] != 3 {
		t.Errorf("status gauges = %v, want 2 executors and 3 running", got)
	}
	if got["handovers_adopted"] != 4 || got["handovers_done"] != 2 || got["handovers_refused"] != 1 {
		t.Errorf("handover counters = %v, want 4 adopted, 2 done, 1 refused", got)
	}
}

func workerResponse(t *testing.T, info *metadatapb.PersistentWorkerInfo, took time.Duration) *repb.ExecuteResponse {
	t.Helper()
	a, err := anypb.New(info)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1000, 0)
	return &repb.ExecuteResponse{Result: &repb.ActionResult{ExecutionMetadata: &repb.ExecutedActionMetadata{
		WorkerStartTimestamp: timestamppb.New(start), WorkerCompletedTimestamp: timestamppb.New(start.Add(took)),
		ExecutionStartTimestamp: timestamppb.New(start), ExecutionCompletedTimestamp: timestamppb.New(start.Add(took)),
		AuxiliaryMetadata: []*anypb.Any{a},
	}}}
}

func TestExecutorActions(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewExecutor(reg)
	key := "0123456789abcdef0123"
	m.ActionFinished(workerResponse(t, &metadatapb.PersistentWorkerInfo{PoolKey: key}, time.Second))
	m.ActionFinished(workerResponse(t, &metadatapb.PersistentWorkerInfo{PoolKey: key, Warm: true}, 100*time.Millisecond))
	m.ActionFinished(workerResponse(t, &metadatapb.PersistentWorkerInfo{PoolKey: key, Warm: true}, 100*time.Millisecond))
	m.ActionFinished(workerResponse(t, &metadatapb.PersistentWorkerInfo{PoolKey: key, FellBack: true, FallbackReason: "damaged_inputs: wrote to x"}, time.Second))
	m.ActionFinished(&repb.ExecuteResponse{Result: &repb.ActionResult{}})
	short := key[:keyWidth]
	for name, tc := range map[string]struct {
		c    prometheus.Collector
		want float64
	}{
		"warm":       {m.warm.WithLabelValues(short), 2},
		"cold":       {m.cold.WithLabelValues(short), 1},
		"fallback":   {m.fallbacks.WithLabelValues(short, "damaged_inputs"), 1},
		"quarantine": {m.quarantine.WithLabelValues(short), 1},
		"actions":    {m.actions.WithLabelValues("success"), 5},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s = %v, want %v", name, got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.workerTime); n != 2 {
		t.Errorf("worker action time series = %d, want 2 (warm and cold)", n)
	}
}

// TestPoolCollectorMonotonic: recycles must never go down, even when the
// pool forgets a key or a key falls under "other".
func TestPoolCollectorMonotonic(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewExecutor(reg)
	m.keys = NewCapper(1, keyWidth)
	m.pools.keys = m.keys
	var stats workerpool.Stats
	m.AddPool(func() workerpool.Stats { return stats })
	recycles := func() float64 {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		sum := 0.0
		for _, f := range families {
			if f.GetName() == "hearth_worker_recycles_total" {
				for _, s := range f.GetMetric() {
					sum += s.GetCounter().GetValue()
				}
			}
		}
		return sum
	}
	stats = workerpool.Stats{Keys: []workerpool.KeyStats{
		{Key: "a", Idle: 1, Recycles: map[workerpool.Reason]int64{workerpool.ReasonMaxInvocations: 3}},
		{Key: "b", Busy: 1, Recycles: map[workerpool.Reason]int64{workerpool.ReasonIdleTimeout: 2}},
	}}
	if got := recycles(); got != 5 {
		t.Fatalf("recycles = %v, want 5", got)
	}
	stats.Keys = stats.Keys[:1] // b forgotten
	if got := recycles(); got != 5 {
		t.Fatalf("recycles after a key was forgotten = %v, want 5", got)
	}
	stats.Keys[0].Recycles = map[workerpool.Reason]int64{workerpool.ReasonMaxInvocations: 4}
	stats.Keys = append(stats.Keys, workerpool.KeyStats{Key: "b", Recycles: map[workerpool.Reason]int64{workerpool.ReasonIdleTimeout: 1}})
	if got := recycles(); got != 7 {
		t.Fatalf("recycles = %v, want 7", got)
	}
	if n := testutil.CollectAndCount(m.pools, "hearth_worker_processes"); n != 6 {
		t.Errorf("process series = %d, want 6 (a and other, three states each)", n)
	}
}

func TestSharedCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	linux := []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}}
	var shared *scheduler.SharedStatus
	RegisterShared(reg, "east-1:8980", func(context.Context) scheduler.Status { return scheduler.Status{Shared: shared} })
	shared = &scheduler.SharedStatus{Queued: 5, Leased: 2, Queues: []scheduler.SharedQueue{
		{Platform: "OSFamily=linux", Queued: 3, Properties: linux},
		// The same platform with a timeout, and with a persistent worker
		// hint: one label.
		{Platform: "OSFamily=linux", Timeout: "1m0s", Queued: 1, Properties: linux},
		{Platform: "OSFamily=linux,persistentWorkerKey=k", Queued: 1, Properties: append(linux, &repb.Platform_Property{Name: "persistentWorkerKey", Value: "k"})},
	}}
	want := `
# HELP hearth_scheduler_replica_info This replica of servers sharing scheduler state; always 1.
# TYPE hearth_scheduler_replica_info gauge
hearth_scheduler_replica_info{replica="east-1:8980"} 1
# HELP hearth_scheduler_shared_leases Actions assigned (leased) at any replica and not finished.
# TYPE hearth_scheduler_shared_leases gauge
hearth_scheduler_shared_leases 2
# HELP hearth_scheduler_shared_queue_depth Actions waiting in the shared queues, for executors at any replica, by platform.
# TYPE hearth_scheduler_shared_queue_depth gauge
hearth_scheduler_shared_queue_depth{platform="OSFamily=linux"} 5
# HELP hearth_scheduler_shared_up 1 if the shared scheduler state answered this scrape, else 0.
# TYPE hearth_scheduler_shared_up gauge
hearth_scheduler_shared_up 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	shared = &scheduler.SharedStatus{Error: "redis: connection refused"}
	want = `
# HELP hearth_scheduler_replica_info This replica of servers sharing scheduler state; always 1.
# TYPE hearth_scheduler_replica_info gauge
hearth_scheduler_replica_info{replica="east-1:8980"} 1
# HELP hearth_scheduler_shared_up 1 if the shared scheduler state answered this scrape, else 0.
# TYPE hearth_scheduler_shared_up gauge
hearth_scheduler_shared_up 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
