package scheduler

import (
	"context"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// nopRunner "runs" an action at once: what is left is the dispatch path.
type nopRunner struct{}

func (nopRunner) Build(context.Context, builder.Task) *repb.ExecuteResponse {
	return &repb.ExecuteResponse{Result: &repb.ActionResult{}}
}

// nopCache is never written: the actions are do_not_cache.
type nopCache struct{}

func (nopCache) Get(context.Context, string, digest.Digest) (*repb.ActionResult, error) {
	return nil, nil
}
func (nopCache) Put(context.Context, string, digest.Digest, *repb.ActionResult) error { return nil }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDispatchPath is the scheduler/dispatch share of one trivial
// action as `hearth serve` pays it: Submit, the real executor's session over
// gRPC on an in-process listener (as the embedded executor's), a runner that
// returns at once, the result back to the operation. 8 actions are in
// flight, like the Execute benchmark's 8 clients. cpu-ns/op is the whole
// process's CPU (user + system) per action, steadier than wall time on a
// shared machine.
func BenchmarkDispatchPath(b *testing.B) {
	logger := slog.New(slog.DiscardHandler)
	s := scheduler.New(scheduler.Config{Logger: logger})
	defer s.Close()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	workerapi.RegisterSchedulerServer(gs, s)
	go gs.Serve(lis)
	defer gs.Stop()
	conn, err := grpc.NewClient("passthrough:///embedded",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ex, err := executor.New(executor.Options{Name: "bench", MaxInflight: 8, Properties: map[string][]string{"OSFamily": {"linux"}}, Runner: nopRunner{}, ActionCache: nopCache{}, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ex.Run(ctx, conn); close(done) }()
	defer func() { cancel(); <-done }()
	for len(s.Status().Executors) == 0 {
		time.Sleep(time.Millisecond)
	}
	reqs := make([]scheduler.Request, b.N)
	for i := range reqs {
		reqs[i] = request(0, 0)
		reqs[i].Platform = &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}}}
		reqs[i].DoNotCache = true
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	sem := make(chan struct{}, 8)
	finished := make(chan struct{}, b.N)
	for _, r := range reqs {
		sem <- struct{}{}
		o, err := s.Submit(r)
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				st, ch := o.Watch()
				if st.Done() {
					break
				}
				<-ch
			}
			<-sem
			finished <- struct{}{}
		}()
	}
	for range b.N {
		<-finished
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}
