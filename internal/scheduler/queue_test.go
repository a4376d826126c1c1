package scheduler

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/types/known/durationpb"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/workerapi"
)

func TestShapeKey(t *testing.T) {
	key := func(timeout time.Duration, kv ...string) string {
		return shapeKey(props(kv...), timeout)
	}
	same := [][2]string{
		{key(0, "OSFamily", "linux", "pool", "a"), key(0, "pool", "a", "OSFamily", "Linux")},
		{key(0, "OSFamily", "linux"), key(0, "OSFamily", "linux", "persistentWorkerKey", "k", "supports-workers", "1")},
	}
	for i, p := range same {
		if p[0] != p[1] {
			t.Errorf("%d: %q != %q", i, p[0], p[1])
		}
	}
	differ := [][2]string{
		{key(0, "pool", "a"), key(0, "pool", "A")}, // only OSFamily ignores case
		{key(0, "OSFamily", "linux"), key(time.Minute, "OSFamily", "linux")},
		{key(0, "a", "b,c"), key(0, "a", "b", "c", "")}, // values are quoted
	}
	for i, p := range differ {
		if p[0] == p[1] {
			t.Errorf("%d: both %q", i, p[0])
		}
	}
}

// A free executor takes the most urgent head among all the shapes it
// matches, and an action only a busy executor matches does not hold back
// the others.
func TestPriorityAcrossShapes(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	for _, r := range []Request{
		request("big-low", 5, "OSFamily", "linux", "cpu_count", "16"),
		request("small-urgent", 1, "OSFamily", "linux", "cpu_count", "2"),
		request("any", 3),
		request("small-low", 9, "OSFamily", "linux"),
	} {
		if _, err := s.Submit(r); err != nil {
			t.Fatal(err)
		}
	}
	small := connectExecutor(t, conn, &workerapi.Register{Name: "small", MaxInflight: 1, MinimumProperties: []string{"cpu_count"},
		Properties: []*workerapi.Property{{Name: "OSFamily", Value: "Linux"}, {Name: "cpu_count", Value: "4"}}})
	var order []string
	for range 3 {
		a := small.nextAssign()
		small.noAssign()
		order = append(order, a.GetActionDigest().GetHash())
		small.finish(a, 0)
	}
	want := []Request{request("small-urgent", 0), request("any", 0), request("small-low", 0)}
	for i, r := range want {
		if order[i] != r.ActionDigest.Hash {
			t.Fatalf("position %d: got another action", i)
		}
	}
	big := connectExecutor(t, conn, &workerapi.Register{Name: "big", MaxInflight: 1, MinimumProperties: []string{"cpu_count"},
		Properties: []*workerapi.Property{{Name: "OSFamily", Value: "linux"}, {Name: "cpu_count", Value: "32"}}})
	if a := big.nextAssign(); a.GetActionDigest().GetHash() != request("big-low", 0).ActionDigest.Hash {
		t.Fatal("big executor did not get the action only it matches")
	}
	if st := s.Status(); st.Queued != 0 {
		t.Fatalf("queued = %d", st.Queued)
	}
}

// When the only executor of a shape leaves, its queued actions fail with
// FAILED_PRECONDITION (or INVALID_ARGUMENT for a too-long timeout) while the
// other shapes keep waiting.
func TestExecutorLossFailsUnmatchableQueue(t *testing.T) {
	s, conn := startScheduler(t, Config{MaxAttempts: 1, ReattachGrace: 50 * time.Millisecond})
	reg := func(name, os string, timeout time.Duration) *workerapi.Register {
		return &workerapi.Register{Name: name, MaxInflight: 1, MaxActionTimeout: durationpb.New(timeout),
			Properties: []*workerapi.Property{{Name: "OSFamily", Value: os}}}
	}
	win := connectExecutor(t, conn, reg("win", "windows", time.Minute))
	long := connectExecutor(t, conn, reg("long", "linux", time.Hour))
	lin := connectExecutor(t, conn, reg("lin", "linux", time.Minute))
	waitExecutors(t, s, 3)
	longRequest := func(tag string) Request {
		r := request(tag, 0, "OSFamily", "linux")
		r.Action = &repb.Action{Timeout: durationpb.New(time.Hour)}
		return r
	}
	running, _ := s.Submit(request("w1", 0, "OSFamily", "windows"))
	queued, _ := s.Submit(request("w2", 0, "OSFamily", "windows"))
	longRunning, _ := s.Submit(longRequest("long1"))
	longQueued, _ := s.Submit(longRequest("long2")) // only "long" allows its timeout
	s.Submit(request("l1", 0, "OSFamily", "linux"))
	linQueued, _ := s.Submit(request("l2", 0, "OSFamily", "linux"))
	win.nextAssign()
	long.nextAssign()
	lin.nextAssign()
	win.cancel()
	long.cancel()
	for _, o := range []*Operation{running, longRunning} {
		if st := waitDone(t, o); st.Response.GetStatus().GetCode() != int32(code.Code_UNAVAILABLE) {
			t.Fatalf("running action: %v", st.Response.GetStatus())
		}
	}
	st := waitDone(t, queued)
	if st.Response.GetStatus().GetCode() != int32(code.Code_FAILED_PRECONDITION) || !strings.Contains(st.Response.GetStatus().GetMessage(), "OSFamily=windows") {
		t.Fatalf("queued action: %v", st.Response.GetStatus())
	}
	if st := waitDone(t, longQueued); st.Response.GetStatus().GetCode() != int32(code.Code_INVALID_ARGUMENT) {
		t.Fatalf("too-long action: %v", st.Response.GetStatus())
	}
	if st, _ := linQueued.Watch(); st.Done() {
		t.Fatal("an action a connected executor matches was failed")
	}
}

// Shapes nobody used for a while are forgotten; an action re-queued after
// that finds (recreates) its shape.
func TestForgottenShapeRequeue(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	e1 := connectExecutor(t, conn, linuxExecutor("e1", 1))
	waitExecutors(t, s, 1)
	o, _ := s.Submit(request("x", 0, "OSFamily", "linux"))
	e1.nextAssign()
	s.expire(time.Now().Add(2 * shapeIdleTTL))
	s.mu.Lock()
	n := len(s.shapes)
	s.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d shapes remembered", n)
	}
	e2 := connectExecutor(t, conn, linuxExecutor("e2", 1))
	waitExecutors(t, s, 2)
	e1.cancel()
	a := e2.nextAssign()
	e2.finish(a, 0)
	if st := waitDone(t, o); st.Response.GetStatus().GetCode() != 0 {
		t.Fatalf("status %v", st.Response.GetStatus())
	}
}

// Cancelling a queued action and bumping its priority keep the heap sound.
func TestCancelAndPriorityBumpInQueue(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	var ops []*Operation
	for i := range 6 {
		o, _ := s.Submit(request(string(rune('a'+i)), 5))
		ops = append(ops, o)
	}
	s.Cancel(ops[1].Name())
	s.Cancel(ops[4].Name())
	s.Submit(request("f", 0)) // merges with ops[5] and makes it urgent
	e := connectExecutor(t, conn, linuxExecutor("e", 1))
	var got []string
	for range 4 {
		a := e.nextAssign()
		got = append(got, a.GetActionDigest().GetHash())
		e.finish(a, 0)
	}
	e.noAssign()
	for i, tag := range []string{"f", "a", "c", "d"} {
		if got[i] != request(tag, 0).ActionDigest.Hash {
			t.Fatalf("position %d is not %s", i, tag)
		}
	}
}

// Joining an identical queued action still checks that some executor can
// run it.
func TestMergeChecksSchedulable(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	r := request("x", 0, "gpu", "h100")
	if _, err := s.Submit(r); err != nil {
		t.Fatal(err) // no executor yet: it waits
	}
	connectExecutor(t, conn, linuxExecutor("e1", 1))
	waitExecutors(t, s, 1)
	if _, err := s.Submit(r); !errors.Is(err, ErrUnschedulable) {
		t.Fatalf("err = %v", err)
	}
}

// An action is EXECUTING from its assignment, and QUEUED again when its
// executor goes away (at once, without a reattach grace).
func TestStageFollowsAssignment(t *testing.T) {
	s, conn := startScheduler(t, Config{ReattachGrace: -1})
	e1 := connectExecutor(t, conn, linuxExecutor("e1", 1))
	waitExecutors(t, s, 1)
	o, _ := s.Submit(request("x", 0))
	e1.nextAssign()
	if st, _ := o.Watch(); st.Stage != repb.ExecutionStage_EXECUTING {
		t.Fatalf("stage after assignment = %s", st.Stage)
	}
	e1.cancel()
	waitExecutors(t, s, 0)
	if st, _ := o.Watch(); st.Stage != repb.ExecutionStage_QUEUED {
		t.Fatalf("stage after executor loss = %s", st.Stage)
	}
}

// A silent executor is dropped after the heartbeat timeout, and one that
// keeps talking is not.
func TestHeartbeatTimeout(t *testing.T) {
	s, conn := startScheduler(t, Config{HeartbeatTimeout: 300 * time.Millisecond})
	silent := connectExecutor(t, conn, linuxExecutor("silent", 1))
	talker := connectExecutor(t, conn, linuxExecutor("talker", 1))
	_ = silent
	waitExecutors(t, s, 2)
	for range 8 {
		time.Sleep(100 * time.Millisecond)
		talker.send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Heartbeat{Heartbeat: &workerapi.Heartbeat{Accepting: true}}})
	}
	st := s.Status()
	if len(st.Executors) != 1 || st.Executors[0].Name != "talker" {
		t.Fatalf("executors = %+v", st.Executors)
	}
}
