package scheduler

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/metadata"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/workerapi"
)

const (
	pools     = 10
	cpuLevels = 5 // cpu_count 2, 4, 8, 16, 32
	shapes    = pools * cpuLevels
	executors = 1000
)

// stream is an in-memory worker API stream: the scheduler's side of one
// simulated executor's session.
type stream struct {
	ctx context.Context
	in  chan *workerapi.ExecutorMessage
	out chan *workerapi.SchedulerMessage
}

func (s *stream) Send(m *workerapi.SchedulerMessage) error {
	select {
	case s.out <- m:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *stream) Recv() (*workerapi.ExecutorMessage, error) {
	select {
	case m := <-s.in:
		return m, nil
	case <-s.ctx.Done():
		return nil, io.EOF
	}
}

func (s *stream) Context() context.Context     { return s.ctx }
func (s *stream) SetHeader(metadata.MD) error  { return nil }
func (s *stream) SendHeader(metadata.MD) error { return nil }
func (s *stream) SetTrailer(metadata.MD)       {}
func (s *stream) SendMsg(any) error            { return nil }
func (s *stream) RecvMsg(any) error            { return nil }

// farm is a scheduler with simulated executors that hold every assignment
// until the gate opens, then finish each at once.
type farm struct {
	s        *scheduler.Scheduler
	gate     chan struct{}
	assigned atomic.Int64 // assignments received after the gate opened
	held     atomic.Int64 // assignments received before
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func shapeProps(pool, level int) []*repb.Platform_Property {
	osFamily := "linux"
	if pool%2 == 1 {
		osFamily = "Linux" // matched case-insensitively
	}
	return []*repb.Platform_Property{
		{Name: "OSFamily", Value: osFamily},
		{Name: "cpu_count", Value: fmt.Sprint(2 << level)},
		{Name: "persistentWorkerKey", Value: fmt.Sprint("k", pool)}, // a hint: ignored for matching
		{Name: "pool", Value: fmt.Sprint("p", pool)},
	}
}

// newFarm connects n executors: executor i serves pool i%pools with
// cpu_count 2<<((i/pools)%cpuLevels), so it matches the shapes of its pool
// up to its cpu level (1 to 5 of the 50 shapes).
func newFarm(tb testing.TB, n int, maxInflight int32) *farm {
	f := &farm{s: scheduler.New(scheduler.Config{HeartbeatTimeout: time.Hour, Logger: slog.New(slog.DiscardHandler)}), gate: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	for i := range n {
		st := &stream{ctx: ctx, in: make(chan *workerapi.ExecutorMessage, 4), out: make(chan *workerapi.SchedulerMessage, 4)}
		st.in <- &workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Register{Register: &workerapi.Register{
			Name: fmt.Sprint("exec-", i), MaxInflight: maxInflight, MinimumProperties: []string{"cpu_count"},
			Properties: []*workerapi.Property{
				{Name: "OSFamily", Value: "linux"},
				{Name: "cpu_count", Value: fmt.Sprint(2 << ((i / pools) % cpuLevels))},
				{Name: "pool", Value: fmt.Sprint("p", i%pools)},
			},
		}}}
		f.wg.Add(2)
		go func() { defer f.wg.Done(); f.s.Connect(st) }()
		go func() { defer f.wg.Done(); f.simulate(ctx, st) }()
	}
	// Wait until every executor is registered (an unmatchable action fails
	// fast only once executors are connected; the last one connects last).
	for {
		if len(f.s.Status().Executors) == n {
			return f
		}
		time.Sleep(time.Millisecond)
	}
}

func (f *farm) simulate(ctx context.Context, st *stream) {
	var held []*workerapi.Assign
	finish := func(a *workerapi.Assign) {
		select {
		case st.in <- &workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Finished{Finished: &workerapi.Finished{
			TaskId: a.GetTaskId(), Response: &repb.ExecuteResponse{Result: &repb.ActionResult{}},
		}}}:
		case <-ctx.Done():
		}
	}
	gate := f.gate
	for {
		select {
		case m := <-st.out:
			a := m.GetAssign()
			if a == nil {
				continue
			}
			if gate != nil {
				f.held.Add(1)
				held = append(held, a)
				continue
			}
			f.assigned.Add(1)
			finish(a)
		case <-gate:
			gate = nil
			for _, a := range held {
				finish(a)
			}
			held = nil
		case <-ctx.Done():
			return
		}
	}
}

func (f *farm) close() {
	f.cancel()
	f.wg.Wait()
	f.s.Close()
}

var seq atomic.Int64

func request(pool, level int) scheduler.Request {
	return scheduler.Request{
		ActionDigest: digest.Compute(digest.SHA256, fmt.Append(nil, "action ", seq.Add(1))),
		Action:       &repb.Action{},
		Platform:     &repb.Platform{Properties: shapeProps(pool, level)},
		Priority:     int32(seq.Load() % 3),
	}
}

// BenchmarkFarm queues n actions over 50 shapes while all 1,000 executors
// are busy (enqueue), then lets the executors drain the queue, each finishing
// its action at once and being given the next (dispatch: the scheduler's
// work per action, plus two channel hops of the in-memory stream). The cpu-
// metrics are the process's CPU time (all goroutines, user + system), the
// steadier figure on a shared machine.
func BenchmarkFarm(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("queued=%d", n), func(b *testing.B) {
			var enqueue, dispatch, enqueueCPU, dispatchCPU time.Duration
			for range b.N {
				b.StopTimer()
				f := newFarm(b, executors, 1)
				// Make every executor busy: 100 actions of its pool's most
				// generic shape per pool.
				for p := range pools {
					for range executors / pools {
						if _, err := f.s.Submit(request(p, 0)); err != nil {
							b.Fatal(err)
						}
					}
				}
				for f.held.Load() < executors {
					time.Sleep(time.Millisecond)
				}
				reqs := make([]scheduler.Request, n)
				for i := range reqs {
					reqs[i] = request(i%pools, (i/pools)%cpuLevels)
				}
				b.StartTimer()
				start, cpu := time.Now(), cpuTime()
				for _, r := range reqs {
					if _, err := f.s.Submit(r); err != nil {
						b.Fatal(err)
					}
				}
				enqueue += time.Since(start)
				enqueueCPU += cpuTime() - cpu
				if q := f.s.Status().Queued; q != n {
					b.Fatalf("queued %d, want %d", q, n)
				}
				start, cpu = time.Now(), cpuTime()
				close(f.gate)
				for f.assigned.Load() < int64(n) {
					time.Sleep(50 * time.Microsecond)
				}
				dispatch += time.Since(start)
				dispatchCPU += cpuTime() - cpu
				b.StopTimer()
				f.close()
			}
			b.ReportMetric(float64(enqueue.Nanoseconds())/float64(b.N*n), "ns/enqueue")
			b.ReportMetric(float64(dispatch.Nanoseconds())/float64(b.N*n), "ns/dispatch")
			b.ReportMetric(float64(enqueueCPU.Nanoseconds())/float64(b.N*n), "cpu-ns/enqueue")
			b.ReportMetric(float64(dispatchCPU.Nanoseconds())/float64(b.N*n), "cpu-ns/dispatch")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkOneAction is the scheduler's share of one action when nothing
// queues: Submit on an idle executor, Assign, Finished (as under hearth
// serve's Execute benchmark, but without the RPCs and the run).
func BenchmarkOneAction(b *testing.B) {
	f := newFarm(b, 1, 8)
	defer f.close()
	close(f.gate)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		o, err := f.s.Submit(request(0, 0))
		if err != nil {
			b.Fatal(err)
		}
		for {
			st, ch := o.Watch()
			if st.Done() {
				break
			}
			<-ch
		}
		_ = i
	}
}
