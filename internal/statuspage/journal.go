package statuspage

import (
	"sort"
	"strconv"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/metrics"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// Journal is a scheduler.Observer that remembers what the page shows: the
// queue, the operations in flight, the last finished ones and the last
// failures. It holds only bounded history.
type Journal struct {
	keep, keepFailures int

	mu         sync.Mutex
	generation uint64 // events seen; equal generations mean equal journals
	queued     map[string]*Op
	running    map[string]*Op
	finished   []*Op // newest last, at most keep
	failures   []*Op // newest last, at most keepFailures
	outcomes   map[string]int64
}

// NewJournal keeps the last keep finished operations and keepFailures
// failed ones.
func NewJournal(keep, keepFailures int) *Journal {
	return &Journal{keep: keep, keepFailures: keepFailures, queued: map[string]*Op{}, running: map[string]*Op{}, outcomes: map[string]int64{}}
}

// Op is one operation as the page shows it.
type Op struct {
	Name     string `json:"name"`
	Instance string `json:"instance,omitempty"`
	// Action is "hash/size".
	Action   string    `json:"action"`
	Platform string    `json:"platform"`
	Executor string    `json:"executor,omitempty"`
	Attempt  int       `json:"attempt"`
	QueuedAt time.Time `json:"queued_at"`
	// StartedAt is when the scheduler handed it to Executor.
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// DurationMillis is queued to finished.
	DurationMillis float64 `json:"duration_ms,omitempty"`
	Outcome        string  `json:"outcome,omitempty"`
	ExitCode       int32   `json:"exit_code"`
	Status         string  `json:"status,omitempty"`
	// Mode is how it ran: warm, cold, fallback, one-shot, or cached.
	Mode           string  `json:"mode,omitempty"`
	PoolKey        string  `json:"pool_key,omitempty"`
	FallbackReason string  `json:"fallback_reason,omitempty"`
	Stages         []Stage `json:"stages,omitempty"`
}

// Stage is one timestamp of ExecutedActionMetadata, as milliseconds after
// the worker started.
type Stage struct {
	Name   string  `json:"name"`
	Millis float64 `json:"ms"`
}

func newOp(e scheduler.OpEvent) *Op {
	return &Op{
		Name: e.Name, Instance: e.Instance, Action: e.Action.Hash + "/" + strconv.FormatInt(e.Action.Size, 10),
		Platform: metrics.PlatformLabel(e.Platform), Attempt: e.Attempt, QueuedAt: e.QueuedAt,
	}
}

// Queued implements scheduler.Observer.
func (j *Journal) Queued(e scheduler.OpEvent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.generation++
	op := j.running[e.Name]
	delete(j.running, e.Name)
	if op == nil {
		op = newOp(e)
	}
	op.Attempt, op.Executor, op.StartedAt = e.Attempt, "", time.Time{}
	j.queued[e.Name] = op
}

// Started implements scheduler.Observer.
func (j *Journal) Started(e scheduler.OpEvent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.generation++
	op := j.queued[e.Name]
	delete(j.queued, e.Name)
	if op == nil {
		op = newOp(e)
	}
	op.Executor, op.Attempt, op.StartedAt = e.Executor, e.Attempt, time.Now()
	j.running[e.Name] = op
}

// Finished implements scheduler.Observer.
func (j *Journal) Finished(e scheduler.OpEvent) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.generation++
	op := j.running[e.Name]
	if op == nil {
		op = j.queued[e.Name]
	}
	delete(j.running, e.Name)
	delete(j.queued, e.Name)
	if op == nil {
		op = newOp(e)
	}
	op.FinishedAt = time.Now()
	if !op.QueuedAt.IsZero() {
		op.DurationMillis = millis(op.FinishedAt.Sub(op.QueuedAt))
	}
	describe(op, e.Response)
	j.outcomes[op.Outcome]++
	j.finished = appendBounded(j.finished, op, j.keep)
	if op.Outcome != "success" && op.Outcome != "cached" {
		j.failures = appendBounded(j.failures, op, j.keepFailures)
	}
}

func appendBounded(ops []*Op, op *Op, n int) []*Op {
	ops = append(ops, op)
	if len(ops) > n {
		ops = append(ops[:0:0], ops[len(ops)-n:]...)
	}
	return ops
}

// describe fills in what the response tells.
func describe(op *Op, r *repb.ExecuteResponse) {
	op.Outcome = metrics.Outcome(r)
	op.ExitCode = r.GetResult().GetExitCode()
	if st := r.GetStatus(); st.GetCode() != 0 {
		op.Status = code.Code(st.GetCode()).String() + ": " + st.GetMessage()
	}
	md := r.GetResult().GetExecutionMetadata()
	if op.Executor == "" {
		op.Executor = md.GetWorker()
	}
	switch info := metrics.WorkerInfo(r); {
	case r.GetCachedResult():
		op.Mode = "cached"
	case info == nil:
		op.Mode = "one-shot"
	case info.GetFellBack():
		op.Mode, op.FallbackReason = "fallback", info.GetFallbackReason()
	case info.GetWarm():
		op.Mode = "warm"
	default:
		op.Mode = "cold"
	}
	if info := metrics.WorkerInfo(r); info != nil {
		op.PoolKey = info.GetPoolKey()
	}
	if r.GetCachedResult() || md.GetWorkerStartTimestamp() == nil {
		return
	}
	start := md.GetWorkerStartTimestamp().AsTime()
	for _, s := range []struct {
		name string
		t    *timestamppb.Timestamp
	}{
		{"input_fetch_start", md.GetInputFetchStartTimestamp()},
		{"input_fetch_done", md.GetInputFetchCompletedTimestamp()},
		{"execution_start", md.GetExecutionStartTimestamp()},
		{"execution_done", md.GetExecutionCompletedTimestamp()},
		{"upload_start", md.GetOutputUploadStartTimestamp()},
		{"upload_done", md.GetOutputUploadCompletedTimestamp()},
		{"worker_done", md.GetWorkerCompletedTimestamp()},
	} {
		if s.t != nil {
			op.Stages = append(op.Stages, Stage{Name: s.name, Millis: millis(s.t.AsTime().Sub(start))})
		}
	}
}

// JournalSnapshot is the journal at one generation.
type JournalSnapshot struct {
	Generation uint64 `json:"generation"`
	// Queue is oldest first; InFlight by start; Finished and Failures
	// newest first.
	Queue    []*Op            `json:"queue"`
	InFlight []*Op            `json:"in_flight"`
	Finished []*Op            `json:"finished"`
	Failures []*Op            `json:"failures"`
	Outcomes map[string]int64 `json:"outcomes"`
	// FinishedTotal counts every finished operation since start.
	FinishedTotal int64 `json:"finished_total"`
}

// Snapshot copies the journal.
func (j *Journal) Snapshot() JournalSnapshot {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := JournalSnapshot{Generation: j.generation, Queue: []*Op{}, InFlight: []*Op{}, Outcomes: map[string]int64{}}
	for _, op := range j.queued {
		c := *op
		s.Queue = append(s.Queue, &c)
	}
	sort.Slice(s.Queue, func(a, b int) bool { return s.Queue[a].QueuedAt.Before(s.Queue[b].QueuedAt) })
	for _, op := range j.running {
		c := *op
		s.InFlight = append(s.InFlight, &c)
	}
	sort.Slice(s.InFlight, func(a, b int) bool { return s.InFlight[a].StartedAt.Before(s.InFlight[b].StartedAt) })
	s.Finished = reversed(j.finished)
	s.Failures = reversed(j.failures)
	for k, v := range j.outcomes {
		s.Outcomes[k] = v
		s.FinishedTotal += v
	}
	return s
}

func reversed(ops []*Op) []*Op {
	out := make([]*Op, 0, len(ops))
	for i := len(ops) - 1; i >= 0; i-- {
		c := *ops[i]
		out = append(out, &c)
	}
	return out
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
