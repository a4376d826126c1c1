package scheduler

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// testExecutor drives a real worker API stream the way an executor does, so
// the test decides when actions start and finish.
type testExecutor struct {
	t       *testing.T
	stream  workerapi.Scheduler_ConnectClient
	cancel  context.CancelFunc
	assigns chan *workerapi.Assign
	cancels chan string
}

func startScheduler(t *testing.T, cfg Config) (*Scheduler, *grpc.ClientConn) {
	t.Helper()
	s, conn, _ := startKillableScheduler(t, cfg)
	return s, conn
}

// startKillableScheduler is startScheduler that also returns kill, which
// stops the scheduler as a SIGKILL would: its background work (no renewal,
// no release reaches the shared state) and its server (every stream breaks).
func startKillableScheduler(t *testing.T, cfg Config) (*Scheduler, *grpc.ClientConn, func()) {
	t.Helper()
	s := New(cfg)
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	workerapi.RegisterSchedulerServer(gs, s)
	go gs.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); gs.Stop(); s.Close() })
	return s, conn, func() { s.Close(); gs.Stop() }
}

func connectExecutor(t *testing.T, conn *grpc.ClientConn, reg *workerapi.Register) *testExecutor {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := workerapi.NewSchedulerClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Register{Register: reg}}); err != nil {
		t.Fatal(err)
	}
	e := &testExecutor{t: t, stream: stream, cancel: cancel, assigns: make(chan *workerapi.Assign, 100), cancels: make(chan string, 100)}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if a := m.GetAssign(); a != nil {
				e.assigns <- a
			}
			if c := m.GetCancel(); c != nil {
				e.cancels <- c.GetTaskId()
			}
		}
	}()
	t.Cleanup(cancel)
	return e
}

func (e *testExecutor) nextAssign() *workerapi.Assign {
	e.t.Helper()
	select {
	case a := <-e.assigns:
		return a
	case <-time.After(5 * time.Second):
		e.t.Fatal("no action assigned")
		return nil
	}
}

func (e *testExecutor) noAssign() {
	e.t.Helper()
	select {
	case a := <-e.assigns:
		e.t.Fatalf("unexpected assignment of %s", a.GetActionDigest().GetHash())
	case <-time.After(100 * time.Millisecond):
	}
}

func (e *testExecutor) send(m *workerapi.ExecutorMessage) {
	e.t.Helper()
	if err := e.stream.Send(m); err != nil {
		e.t.Fatal(err)
	}
}

func (e *testExecutor) finish(a *workerapi.Assign, exitCode int32, warm ...string) {
	e.send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Finished{Finished: &workerapi.Finished{
		TaskId: a.GetTaskId(), WarmKeys: warm,
		Response: &repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: exitCode}},
	}}})
}

func linuxExecutor(name string, inflight int32) *workerapi.Register {
	return &workerapi.Register{Name: name, MaxInflight: inflight, Properties: []*workerapi.Property{{Name: "OSFamily", Value: "linux"}}}
}

func request(tag string, prio int32, kv ...string) Request {
	return Request{
		ActionDigest: digest.Compute(digest.SHA256, []byte(tag)),
		Action:       &repb.Action{},
		Platform:     &repb.Platform{Properties: props(kv...)},
		Priority:     prio,
	}
}

func waitDone(t *testing.T, o *Operation) State {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		st, ch := o.Watch()
		if st.Done() {
			return st
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("operation %s not done (stage %s)", o.Name(), st.Stage)
		}
	}
}

func waitExecutors(t *testing.T, s *Scheduler, n int) {
	t.Helper()
	for i := 0; i < 500; i++ {
		s.mu.Lock()
		got := len(s.executors)
		s.mu.Unlock()
		if got == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("want %d executors connected", n)
}

func TestPriorityThenArrival(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	ops := map[string]*Operation{}
	for _, r := range []struct {
		tag  string
		prio int32
	}{{"a", 0}, {"b", 5}, {"c", -1}, {"d", 0}} {
		o, err := s.Submit(request(r.tag, r.prio))
		if err != nil {
			t.Fatal(err)
		}
		ops[digest.Compute(digest.SHA256, []byte(r.tag)).Hash] = o
	}
	e := connectExecutor(t, conn, linuxExecutor("e1", 1))
	var order []*Operation
	for range 4 {
		a := e.nextAssign()
		e.noAssign() // capacity 1: nothing more until this one finishes
		order = append(order, ops[a.GetActionDigest().GetHash()])
		e.finish(a, 0)
	}
	want := []string{"c", "a", "d", "b"}
	for i, tag := range want {
		if order[i] != ops[digest.Compute(digest.SHA256, []byte(tag)).Hash] {
			t.Fatalf("position %d is not %s", i, tag)
		}
	}
}

func TestMergeIdenticalActions(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	e := connectExecutor(t, conn, linuxExecutor("e1", 4))
	waitExecutors(t, s, 1)
	o1, _ := s.Submit(request("same", 0))
	o2, _ := s.Submit(request("same", 0))
	if o1 != o2 {
		t.Fatal("identical in-flight actions were not merged")
	}
	nc := request("same", 0)
	nc.DoNotCache = true
	o3, _ := s.Submit(nc)
	if o3 == o1 {
		t.Fatal("do_not_cache action was merged")
	}
	a := e.nextAssign()
	b := e.nextAssign()
	e.noAssign()
	e.finish(a, 0)
	e.finish(b, 0)
	waitDone(t, o1)
	waitDone(t, o3)
	// After completion a new submission runs again.
	o4, _ := s.Submit(request("same", 0))
	if o4 == o1 {
		t.Fatal("finished operation reused")
	}
}

func TestUnschedulable(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	connectExecutor(t, conn, &workerapi.Register{Name: "e1", MaxInflight: 1, MaxActionTimeout: durationpb.New(time.Minute),
		Properties: []*workerapi.Property{{Name: "OSFamily", Value: "linux"}}})
	waitExecutors(t, s, 1)
	_, err := s.Submit(request("x", 0, "OSFamily", "windows", "gpu", "h100"))
	if !errors.Is(err, ErrUnschedulable) || !strings.Contains(err.Error(), "OSFamily=windows") || !strings.Contains(err.Error(), "gpu=h100") {
		t.Fatalf("err = %v", err)
	}
	r := request("y", 0, "OSFamily", "LINUX", "persistentWorkerKey", "k")
	r.Action = &repb.Action{Timeout: durationpb.New(2 * time.Minute)}
	if _, err := s.Submit(r); !errors.Is(err, ErrTimeoutTooLong) {
		t.Fatalf("timeout err = %v", err)
	}
	r.Action = &repb.Action{Timeout: durationpb.New(time.Minute)}
	if _, err := s.Submit(r); err != nil {
		t.Fatalf("hints must not prevent scheduling: %v", err)
	}
}

func TestExecutorLossRequeues(t *testing.T) {
	s, conn := startScheduler(t, Config{MaxAttempts: 2, ReattachGrace: 50 * time.Millisecond})
	e1 := connectExecutor(t, conn, linuxExecutor("e1", 1))
	waitExecutors(t, s, 1)
	o, _ := s.Submit(request("x", 0))
	a1 := e1.nextAssign()
	e2 := connectExecutor(t, conn, linuxExecutor("e2", 1))
	waitExecutors(t, s, 2)
	e1.cancel() // executor e1 dies mid-action
	a2 := e2.nextAssign()
	if a2.GetTaskId() == a1.GetTaskId() {
		t.Fatal("re-queued attempt reuses the task id")
	}
	if st, _ := o.Watch(); st.Done() {
		t.Fatal("operation finished after first loss")
	}
	e2.cancel() // second loss: MaxAttempts reached
	st := waitDone(t, o)
	if st.Response.GetStatus().GetCode() != int32(code.Code_UNAVAILABLE) {
		t.Fatalf("status = %v", st.Response.GetStatus())
	}
}

func TestLateResultOfAbandonedAttemptIgnored(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	e1 := connectExecutor(t, conn, linuxExecutor("e1", 1))
	waitExecutors(t, s, 1)
	o, _ := s.Submit(request("x", 0))
	a := e1.nextAssign()
	if err := s.Cancel(o.Name()); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-e1.cancels:
		if id != a.GetTaskId() {
			t.Fatalf("cancel for %s, want %s", id, a.GetTaskId())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("executor was not told to cancel")
	}
	st := waitDone(t, o)
	if st.Response.GetStatus().GetCode() != int32(code.Code_CANCELLED) {
		t.Fatalf("status = %v", st.Response.GetStatus())
	}
	e1.finish(a, 7) // late: must not overwrite the CANCELLED result
	o2, _ := s.Submit(request("y", 0))
	e1.finish(e1.nextAssign(), 0) // the slot was freed by the late Finished
	waitDone(t, o2)
	if st, _ := o.Watch(); st.Response.GetResult() != nil {
		t.Fatal("late result replaced the final one")
	}
}

func TestOrphanCancelled(t *testing.T) {
	s, conn := startScheduler(t, Config{OrphanGrace: 50 * time.Millisecond})
	e := connectExecutor(t, conn, linuxExecutor("e1", 1))
	waitExecutors(t, s, 1)
	o, _ := s.Submit(request("x", 0))
	o.AddWaiter()
	first := e.nextAssign()
	o.RemoveWaiter()
	st := waitDone(t, o)
	if st.Response.GetStatus().GetCode() != int32(code.Code_CANCELLED) {
		t.Fatalf("status = %v", st.Response.GetStatus())
	}
	<-e.cancels
	e.finish(first, 0) // the executor confirms; its slot frees
	// Reattaching within the grace keeps the action.
	o2, _ := s.Submit(request("y", 0))
	o2.AddWaiter()
	o2.RemoveWaiter()
	o2.AddWaiter()
	a := e.nextAssign()
	time.Sleep(150 * time.Millisecond)
	if st, _ := o2.Watch(); st.Done() {
		t.Fatal("reattached operation was cancelled")
	}
	e.finish(a, 0)
	waitDone(t, o2)
}

func TestWarmAffinityWithoutHotSpots(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	cold := connectExecutor(t, conn, linuxExecutor("cold", 1))
	warm := connectExecutor(t, conn, &workerapi.Register{Name: "warm", MaxInflight: 1, WarmKeys: []string{"K"},
		Properties: []*workerapi.Property{{Name: "OSFamily", Value: "linux"}}})
	waitExecutors(t, s, 2)
	s.Submit(request("1", 0, "persistentWorkerKey", "K"))
	a := warm.nextAssign()
	cold.noAssign()
	// The warm executor is busy: the next action goes to the idle one.
	s.Submit(request("2", 0, "persistentWorkerKey", "K"))
	cold.nextAssign()
	warm.finish(a, 0, "K")
	s.Submit(request("3", 0, "persistentWorkerKey", "K"))
	warm.nextAssign()
}

func TestExpiry(t *testing.T) {
	s, _ := startScheduler(t, Config{OperationTTL: time.Minute})
	o := s.Completed("", digest.Compute(digest.SHA256, []byte("x")), &repb.ExecuteResponse{CachedResult: true})
	if _, err := s.Get(o.Name()); err != nil {
		t.Fatal(err)
	}
	s.expire(time.Now().Add(2 * time.Minute))
	if _, err := s.Get(o.Name()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired operation still found: %v", err)
	}
}

func TestQueuedActionsFailWhenNoExecutorComes(t *testing.T) {
	s, _ := startScheduler(t, Config{NoExecutorTimeout: time.Minute})
	o, err := s.Submit(request("x", 0))
	if err != nil {
		t.Fatal(err)
	}
	s.expire(time.Now().Add(30 * time.Second))
	if st, _ := o.Watch(); st.Done() {
		t.Fatal("failed before the timeout")
	}
	s.expire(time.Now().Add(2 * time.Minute))
	st := waitDone(t, o)
	if st.Response.GetStatus().GetCode() != int32(code.Code_UNAVAILABLE) {
		t.Fatalf("status = %v", st.Response.GetStatus())
	}
}

// An executor whose stream broke and that comes back within the reattach
// grace, reporting the attempt it kept running, keeps it: the action is not
// re-queued, and the result it then sends is the operation's, first attempt.
func TestReattachWithinGrace(t *testing.T) {
	s, conn := startScheduler(t, Config{ReattachGrace: time.Minute})
	e1 := connectExecutor(t, conn, linuxExecutor("e1", 1))
	waitExecutors(t, s, 1)
	o, _ := s.Submit(request("x", 0))
	a := e1.nextAssign()
	e1.cancel() // the stream breaks; the executor keeps running a
	waitExecutors(t, s, 0)
	other := connectExecutor(t, conn, linuxExecutor("other", 1))
	waitExecutors(t, s, 1)
	other.noAssign() // not re-queued meanwhile
	if st, _ := o.Watch(); st.Stage != repb.ExecutionStage_EXECUTING {
		t.Fatalf("stage while its executor reconnects = %s", st.Stage)
	}
	reg := linuxExecutor("e1", 1)
	reg.RunningTaskIds = []string{a.GetTaskId()}
	back := connectExecutor(t, conn, reg)
	waitExecutors(t, s, 2)
	back.finish(a, 7)
	st := waitDone(t, o)
	if st.Response.GetResult().GetExitCode() != 7 || st.Response.GetStatus().GetCode() != 0 {
		t.Fatalf("response = %+v", st.Response)
	}
	other.noAssign()
	if s.Status().TasksAdopted != 1 {
		t.Fatalf("adopted = %d, want 1", s.Status().TasksAdopted)
	}
}
