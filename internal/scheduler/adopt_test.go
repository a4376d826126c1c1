package scheduler

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/workerapi"
)

func killableReplica(t *testing.T, srv *redistest.Server, lease time.Duration) (*Scheduler, *grpc.ClientConn, func()) {
	t.Helper()
	st := redissched.New(srv.Client(t), redissched.Options{Lease: lease})
	return startKillableScheduler(t, Config{Shared: st, SharedPoll: 100 * time.Millisecond})
}

// reconnecting is linuxExecutor registering again with the attempts it
// still runs.
func reconnecting(name string, inflight int32, running ...string) *workerapi.Register {
	reg := linuxExecutor(name, inflight)
	reg.RunningTaskIds = running
	return reg
}

func (e *testExecutor) nextCancel() string {
	e.t.Helper()
	select {
	case id := <-e.cancels:
		return id
	case <-time.After(5 * time.Second):
		e.t.Fatal("no Cancel sent")
		return ""
	}
}

func (e *testExecutor) noCancel() {
	e.t.Helper()
	select {
	case id := <-e.cancels:
		e.t.Fatalf("unexpected Cancel of %s", id)
	case <-time.After(100 * time.Millisecond):
	}
}

// runningAt is how many attempts s counts on its executors' slots.
func runningAt(s *Scheduler) int {
	n := 0
	for _, e := range s.Status().Executors {
		n += e.Running
	}
	return n
}

func waitRunning(t *testing.T, s *Scheduler, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runningAt(s) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d attempts running, want %d: %+v", runningAt(s), want, s.Status().Executors)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTaskIDRoundTrip(t *testing.T) {
	o := &Operation{name: "op-1", attempts: 2}
	if name, n, token, ok := parseTaskID(taskIDOf(o)); !ok || name != "op-1" || n != 2 || token != "" {
		t.Errorf("in memory: %q → %q %d %q %v", taskIDOf(o), name, n, token, ok)
	}
	o.lease = &redissched.Lease{Name: "op-1", Token: "tok-3"}
	if name, n, token, ok := parseTaskID(taskIDOf(o)); !ok || name != "op-1" || n != 2 || token != "tok-3" {
		t.Errorf("shared: %q → %q %d %q %v", taskIDOf(o), name, n, token, ok)
	}
	for _, bad := range []string{"", "op", "/1", "op/x", "op/0", "op/1/"} {
		if _, _, _, ok := parseTaskID(bad); ok {
			t.Errorf("parsed %q", bad)
		}
	}
}

// Replica A assigns an action and is killed; its executor registers at B
// with the running attempt, B adopts it (and keeps its lease alive past
// A's deadline), and the result the executor then sends reaches a client
// waiting at B: one attempt, not re-run.
func TestHandoverToAnotherReplica(t *testing.T) {
	srv := redistest.Start(t)
	const lease = time.Second
	a, aconn, killA := killableReplica(t, srv, lease)
	b, bconn := sharedReplica(t, srv, lease)
	ea := connectExecutor(t, aconn, linuxExecutor("w", 2))
	op, err := a.Submit(request("handover", 0, "OSFamily", "linux"))
	if err != nil {
		t.Fatal(err)
	}
	asg := ea.nextAssign()
	atB, err := b.Get(op.Name()) // the client that waits at B
	if err != nil {
		t.Fatal(err)
	}
	killA()
	eb := connectExecutor(t, bconn, reconnecting("w", 2, asg.GetTaskId()))
	waitRunning(t, b, 1) // the adopted attempt holds a slot
	// Longer than A's lease: B renews what it adopted, so its reaper
	// does not re-queue it, and nobody runs it again.
	time.Sleep(lease + lease/2)
	eb.noCancel()
	eb.noAssign()
	if st, _ := atB.Watch(); st.Done() {
		t.Fatalf("done before the executor's result: %+v", st.Response)
	}
	eb.finish(asg, 9)
	if st := waitDone(t, atB); st.Response.GetResult().GetExitCode() != 9 {
		t.Errorf("client at B: exit %d, want the adopted attempt's 9", st.Response.GetResult().GetExitCode())
	}
	shared := redissched.New(srv.Client(t), redissched.Options{})
	if snap, err := shared.Get(t.Context(), op.Name()); err != nil || snap.Attempts != 1 || snap.Response.GetResult().GetExitCode() != 9 {
		t.Errorf("shared state: %+v %v, want exit 9 after 1 attempt", snap, err)
	}
	waitRunning(t, b, 0)
	if st := b.Status(); st.TasksAdopted != 1 || st.TasksRefused != 0 {
		t.Errorf("B counts %d adopted, %d refused; want 1, 0", st.TasksAdopted, st.TasksRefused)
	}
	// Reported again (the executor was unsure its result had been read),
	// at B, which knows the operation is done, and at C, which reads so
	// in the shared state: cancelled, counted as done, not refused.
	c, cconn := sharedReplica(t, srv, lease)
	for who, at := range map[string]struct {
		s    *Scheduler
		conn *grpc.ClientConn
	}{"B": {b, bconn}, "C": {c, cconn}} {
		again := connectExecutor(t, at.conn, reconnecting("again", 1, asg.GetTaskId()))
		if id := again.nextCancel(); id != asg.GetTaskId() {
			t.Errorf("%s cancelled %s, want %s", who, id, asg.GetTaskId())
		}
		again.finish(asg, 1)
		waitRunning(t, at.s, 0)
		if st := at.s.Status(); st.TasksDone != 1 || st.TasksRefused != 0 || st.TasksAdopted != map[string]int64{"B": 1, "C": 0}[who] {
			t.Errorf("%s counts %d adopted, %d done, %d refused after the repeated report", who, st.TasksAdopted, st.TasksDone, st.TasksRefused)
		}
	}
	if st := waitDone(t, atB); st.Response.GetResult().GetExitCode() != 9 {
		t.Errorf("a repeated result changed the operation: exit %d", st.Response.GetResult().GetExitCode())
	}
}

// When the executor reports the attempt only after its lease lapsed and B
// re-queued it (another executor runs it again), B cancels the reported
// attempt, keeps its slot busy until its Finished, and ignores its result.
func TestHandoverRefusedAfterLeaseLapsed(t *testing.T) {
	srv := redistest.Start(t)
	const lease = 300 * time.Millisecond
	a, aconn, killA := killableReplica(t, srv, lease)
	b, bconn := sharedReplica(t, srv, lease)
	ea := connectExecutor(t, aconn, linuxExecutor("late", 1))
	op, err := a.Submit(request("lapsed", 0, "OSFamily", "linux"))
	if err != nil {
		t.Fatal(err)
	}
	first := ea.nextAssign()
	killA()
	other := connectExecutor(t, bconn, linuxExecutor("other", 1))
	second := other.nextAssign() // after the lapse, B's reaper re-queued it
	if second.GetTaskId() == first.GetTaskId() || !strings.HasPrefix(second.GetTaskId(), op.Name()+"/") {
		t.Fatalf("re-run as %s after %s", second.GetTaskId(), first.GetTaskId())
	}
	late := connectExecutor(t, bconn, reconnecting("late", 1, first.GetTaskId()))
	if id := late.nextCancel(); id != first.GetTaskId() {
		t.Fatalf("Cancel of %s, want %s", id, first.GetTaskId())
	}
	waitRunning(t, b, 2) // the refused attempt still occupies "late"
	late.finish(first, 3)
	waitRunning(t, b, 1)
	other.finish(second, 7)
	atB, err := b.Get(op.Name())
	if err != nil {
		t.Fatal(err)
	}
	if st := waitDone(t, atB); st.Response.GetResult().GetExitCode() != 7 {
		t.Errorf("exit %d, want the second attempt's 7 (the late 3 ignored)", st.Response.GetResult().GetExitCode())
	}
	shared := redissched.New(srv.Client(t), redissched.Options{})
	if snap, err := shared.Get(t.Context(), op.Name()); err != nil || snap.Attempts != 2 || snap.Response.GetResult().GetExitCode() != 7 {
		t.Errorf("shared state: %+v %v, want exit 7 after 2 attempts", snap, err)
	}
	if st := b.Status(); st.TasksAdopted != 0 || st.TasksRefused != 1 {
		t.Errorf("B counts %d adopted, %d refused; want 0, 1", st.TasksAdopted, st.TasksRefused)
	}
}

// Without shared state, the scheduler re-queues at the end of a session as
// before, so what an executor reports afterwards is cancelled; a reported
// attempt it still runs on the executor's older session (not ended here
// yet) moves to the new session, which the old one's end then leaves alone.
func TestHandoverInMemory(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	e1 := connectExecutor(t, conn, linuxExecutor("e", 2))
	waitExecutors(t, s, 1)
	moved, _ := s.Submit(request("moved", 0))
	gone, _ := s.Submit(request("gone", 0))
	a1, a2 := e1.nextAssign(), e1.nextAssign()
	if a1.GetActionDigest().GetHash() != moved.action.Hash {
		a1, a2 = a2, a1
	}
	e2 := connectExecutor(t, conn, reconnecting("e", 2, a1.GetTaskId(), "not/a-task", "unknown-op/1"))
	for range 2 {
		if id := e2.nextCancel(); id != "not/a-task" && id != "unknown-op/1" {
			t.Fatalf("Cancel of %s", id)
		}
	}
	e2.noCancel()
	waitExecutors(t, s, 2)
	waitRunning(t, s, 4) // e1: a2; e2: a1 and the two refused ones
	e1.cancel()          // the old session ends here: it re-queues a2 only
	waitExecutors(t, s, 1)
	// The refused attempts held e2's slots until they finished.
	e2.noAssign()
	for _, id := range []string{"not/a-task", "unknown-op/1"} {
		e2.send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Finished{Finished: &workerapi.Finished{TaskId: id}}})
	}
	a2again := e2.nextAssign()
	if a2again.GetActionDigest().GetHash() != gone.action.Hash || a2again.GetTaskId() == a2.GetTaskId() {
		t.Fatalf("re-queued %s (%s), want a new attempt of the action left on the old session", a2again.GetTaskId(), a2again.GetActionDigest().GetHash())
	}
	e2.finish(a1, 5)
	e2.finish(a2again, 6)
	if st := waitDone(t, moved); st.Response.GetResult().GetExitCode() != 5 {
		t.Errorf("moved attempt: exit %d, want 5", st.Response.GetResult().GetExitCode())
	}
	if st := waitDone(t, gone); st.Response.GetResult().GetExitCode() != 6 {
		t.Errorf("re-queued attempt: exit %d, want 6", st.Response.GetResult().GetExitCode())
	}
	s.mu.Lock()
	attempts := moved.attempts
	s.mu.Unlock()
	if attempts != 1 {
		t.Errorf("the moved action ran %d times, want 1", attempts)
	}
	waitRunning(t, s, 0)
	if st := s.Status(); st.TasksAdopted != 1 || st.TasksRefused != 2 || st.TasksDone != 0 {
		t.Errorf("%d adopted, %d done, %d refused; want 1, 0, 2", st.TasksAdopted, st.TasksDone, st.TasksRefused)
	}
	e3 := connectExecutor(t, conn, reconnecting("e", 2, a1.GetTaskId()))
	if id := e3.nextCancel(); id != a1.GetTaskId() {
		t.Fatalf("Cancel of %s, want the finished %s", id, a1.GetTaskId())
	}
	if st := s.Status(); st.TasksDone != 1 {
		t.Errorf("a finished attempt reported again: %d done, want 1", st.TasksDone)
	}
}

// A partition rather than a death: the executor reaches B while A still
// has its session, B adopts the attempt, and A's release when it notices
// the session gone leaves it with B (before, it re-queued the action under
// B's feet). One attempt, B's result.
func TestHandoverWhileTheClaimerLives(t *testing.T) {
	srv := redistest.Start(t)
	const lease = time.Second
	a, aconn := sharedReplica(t, srv, lease)
	b, bconn := sharedReplica(t, srv, lease)
	ea := connectExecutor(t, aconn, linuxExecutor("w", 1))
	op, err := a.Submit(request("partition", 0, "OSFamily", "linux"))
	if err != nil {
		t.Fatal(err)
	}
	asg := ea.nextAssign()
	eb := connectExecutor(t, bconn, reconnecting("w", 1, asg.GetTaskId()))
	waitRunning(t, b, 1)
	ea.cancel() // A notices now, and releases what it had leased
	waitExecutors(t, a, 0)
	time.Sleep(lease + lease/2)
	eb.noCancel()
	eb.noAssign()
	eb.finish(asg, 6)
	atB, err := b.Get(op.Name())
	if err != nil {
		t.Fatal(err)
	}
	if st := waitDone(t, atB); st.Response.GetResult().GetExitCode() != 6 {
		t.Errorf("exit %d, want the adopted attempt's 6", st.Response.GetResult().GetExitCode())
	}
	shared := redissched.New(srv.Client(t), redissched.Options{})
	if snap, err := shared.Get(t.Context(), op.Name()); err != nil || snap.Attempts != 1 {
		t.Errorf("shared state: %+v %v, want 1 attempt", snap, err)
	}
}
