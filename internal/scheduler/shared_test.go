package scheduler

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// sharedReplica is one scheduler replica on srv's Redis, with its own client.
func sharedReplica(t *testing.T, srv *redistest.Server, lease time.Duration) (*Scheduler, *grpc.ClientConn) {
	t.Helper()
	st := redissched.New(srv.Client(t), redissched.Options{Lease: lease})
	s, conn := startScheduler(t, Config{Shared: st, SharedPoll: 100 * time.Millisecond})
	return s, conn
}

// backends lists the state backends the scheduler runs on: memory and a
// real Redis shared by nobody else.
func backends(t *testing.T) map[string]func(t *testing.T) Config {
	return map[string]func(t *testing.T) Config{
		"memory": func(t *testing.T) Config { return Config{} },
		"redis": func(t *testing.T) Config {
			return Config{Shared: redissched.New(redistest.Start(t).Client(t), redissched.Options{}), SharedPoll: 100 * time.Millisecond}
		},
	}
}

func TestRunsOnEveryBackend(t *testing.T) {
	for name, cfg := range backends(t) {
		t.Run(name, func(t *testing.T) {
			s, conn := startScheduler(t, cfg(t))
			e := connectExecutor(t, conn, linuxExecutor("e1", 1))
			a, err := s.Submit(request("a", 0, "OSFamily", "linux"))
			if err != nil {
				t.Fatal(err)
			}
			b, err := s.Submit(request("a", 0, "OSFamily", "linux"))
			if err != nil {
				t.Fatal(err)
			}
			if a.Name() != b.Name() {
				t.Errorf("identical in-flight actions were not merged: %s, %s", a.Name(), b.Name())
			}
			c, err := s.Submit(request("c", 0, "OSFamily", "linux"))
			if err != nil {
				t.Fatal(err)
			}
			first := e.nextAssign()
			e.noAssign() // one slot: the second waits
			e.finish(first, 3)
			second := e.nextAssign()
			e.finish(second, 4)
			codes := map[string]int32{}
			for _, o := range []*Operation{a, c} {
				st := waitDone(t, o)
				codes[o.Name()] = st.Response.GetResult().GetExitCode()
			}
			if codes[a.Name()] != 3 || codes[c.Name()] != 4 {
				t.Errorf("results %v, want a=3 (first, arrival order) c=4", codes)
			}
			got, err := s.Get(c.Name())
			if err != nil {
				t.Fatal(err)
			}
			if st, _ := got.Watch(); st.Response.GetResult().GetExitCode() != 4 {
				t.Errorf("Get: exit %d, want 4", st.Response.GetResult().GetExitCode())
			}
		})
	}
}

func TestSharedSubmitAtAExecuteAtB(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := sharedReplica(t, srv, 30*time.Second)
	b, bconn := sharedReplica(t, srv, 30*time.Second)
	e := connectExecutor(t, bconn, linuxExecutor("at-b", 2))

	op, err := a.Submit(request("x", 0, "OSFamily", "linux"))
	if err != nil {
		t.Fatal(err)
	}
	joined, err := b.Submit(request("x", 0, "OSFamily", "linux"))
	if err != nil {
		t.Fatal(err)
	}
	if joined.Name() != op.Name() {
		t.Errorf("identical action at B got %s, want A's %s (merge across replicas)", joined.Name(), op.Name())
	}
	asg := e.nextAssign()
	if !strings.HasPrefix(asg.GetTaskId(), op.Name()+"/") {
		t.Fatalf("executor at B got task %s, want one of %s", asg.GetTaskId(), op.Name())
	}
	atB, err := b.Get(op.Name())
	if err != nil {
		t.Fatal(err)
	}
	e.finish(asg, 5)
	for who, o := range map[string]*Operation{"A": op, "B": atB} {
		if st := waitDone(t, o); st.Response.GetResult().GetExitCode() != 5 {
			t.Errorf("%s sees exit %d, want 5", who, st.Response.GetResult().GetExitCode())
		}
	}
	e.noAssign()
}

// A replica that dies mid-run stops renewing; the lease lapses, B's reaper
// re-queues the action and B's executor runs it; the operation completes
// once, with B's result.
func TestSharedReplicaDiesMidRun(t *testing.T) {
	srv := redistest.Start(t)
	a, aconn := sharedReplica(t, srv, time.Second)
	b, bconn := sharedReplica(t, srv, time.Second)
	ea := connectExecutor(t, aconn, linuxExecutor("at-a", 1))
	op, err := a.Submit(request("y", 0, "OSFamily", "linux"))
	if err != nil {
		t.Fatal(err)
	}
	first := ea.nextAssign()
	a.Close() // as if killed: no renewal, no release
	eb := connectExecutor(t, bconn, linuxExecutor("at-b", 1))
	second := eb.nextAssign()
	if second.GetTaskId() == first.GetTaskId() || !strings.HasPrefix(second.GetTaskId(), op.Name()+"/") {
		t.Fatalf("B's executor got task %s after A's %s", second.GetTaskId(), first.GetTaskId())
	}
	atB, err := b.Get(op.Name())
	if err != nil {
		t.Fatal(err)
	}
	eb.finish(second, 7)
	if st := waitDone(t, atB); st.Response.GetResult().GetExitCode() != 7 {
		t.Errorf("exit %d, want B's 7", st.Response.GetResult().GetExitCode())
	}
	eb.noAssign()
	// The abandoned attempt's late result changes nothing.
	st := redissched.New(srv.Client(t), redissched.Options{})
	if ok, err := st.Complete(t.Context(), op.Name(), "stale-token", &repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: 3}}); err != nil || ok {
		t.Errorf("late completion accepted=%v err=%v", ok, err)
	}
	if snap, err := st.Get(t.Context(), op.Name()); err != nil || snap.Response.GetResult().GetExitCode() != 7 || snap.Attempts != 2 {
		t.Errorf("shared state: %+v %v, want exit 7 after 2 attempts", snap, err)
	}
}

// An executor freed at B takes work queued at A while B had no free slot.
func TestSharedExecutorPullsQueuedWork(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := sharedReplica(t, srv, 30*time.Second)
	_, bconn := sharedReplica(t, srv, 30*time.Second)
	var ops []*Operation
	for _, tag := range []string{"p1", "p2", "p3"} {
		o, err := a.Submit(request(tag, 0, "OSFamily", "linux"))
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, o)
	}
	e := connectExecutor(t, bconn, &workerapi.Register{Name: "late", MaxInflight: 1, Properties: []*workerapi.Property{{Name: "OSFamily", Value: "linux"}}})
	for i := range ops {
		asg := e.nextAssign()
		if !strings.HasPrefix(asg.GetTaskId(), ops[i].Name()+"/") {
			t.Errorf("assignment %d is %s, want %s (arrival order)", i, asg.GetTaskId(), ops[i].Name())
		}
		e.finish(asg, int32(i))
	}
	for i, o := range ops {
		if st := waitDone(t, o); st.Response.GetResult().GetExitCode() != int32(i) {
			t.Errorf("op %d exit %d", i, st.Response.GetResult().GetExitCode())
		}
	}
}

func TestParseShapeKey(t *testing.T) {
	props := props("OSFamily", "Linux", "container-image", "docker://x,y=\"z\"")
	key := shapeKey(props, 90*time.Second)
	got, timeout, ok := parseShapeKey(key)
	if !ok || timeout != 90*time.Second || shapeKey(got, timeout) != key {
		t.Errorf("parse(%q) = %v %v %v", key, got, timeout, ok)
	}
	if _, _, ok := parseShapeKey(`"a"="b"x5`); ok {
		t.Error("malformed key parsed")
	}
}

// An operation answered from the action cache at A (Completed) is found at
// B, completed with the cached result; an unknown name stays NOT_FOUND.
func TestSharedCachedOperationFoundAtB(t *testing.T) {
	srv := redistest.Start(t)
	a, _ := sharedReplica(t, srv, 30*time.Second)
	b, _ := sharedReplica(t, srv, 30*time.Second)
	r := request("cached", 0, "OSFamily", "linux")
	op := a.Completed(r.Instance, r.ActionDigest, &repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: 0, StdoutRaw: []byte("from cache")}, CachedResult: true})
	atB, err := b.Get(op.Name())
	if err != nil {
		t.Fatalf("B does not know A's cache-hit operation: %v", err)
	}
	st := waitDone(t, atB)
	if !st.Response.GetCachedResult() || string(st.Response.GetResult().GetStdoutRaw()) != "from cache" || st.ActionDigest != r.ActionDigest {
		t.Errorf("at B: %+v", st)
	}
	if _, err := b.Get("no-such-operation"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown name at B: %v, want ErrNotFound", err)
	}
}

// Each replica's status names it, lists its own executors, and reads the
// shared queues and leases of every replica.
func TestSharedStatusAtEachReplica(t *testing.T) {
	srv := redistest.Start(t)
	replicaNamed := func(name string) (*Scheduler, *grpc.ClientConn) {
		st := redissched.New(srv.Client(t), redissched.Options{})
		return startScheduler(t, Config{Shared: st, SharedPoll: 100 * time.Millisecond, Replica: name})
	}
	a, _ := replicaNamed("replica-a")
	b, bconn := replicaNamed("replica-b")
	for _, tag := range []string{"s1", "s2", "s3"} {
		if _, err := a.Submit(request(tag, 0, "OSFamily", "linux")); err != nil {
			t.Fatal(err)
		}
	}
	st := b.StatusWithShared(t.Context())
	if st.Replica != "replica-b" || st.Shared == nil || st.Shared.Queued != 3 || st.Shared.Leased != 0 || len(st.Executors) != 0 {
		t.Fatalf("B before any executor: %+v shared %+v", st, st.Shared)
	}
	if q := st.Shared.Queues; len(q) != 1 || q[0].Platform != "OSFamily=linux" || q[0].Queued != 3 {
		t.Errorf("B's view of the queues: %+v", q)
	}
	e := connectExecutor(t, bconn, linuxExecutor("at-b", 1))
	asg := e.nextAssign()
	st = a.StatusWithShared(t.Context())
	if st.Replica != "replica-a" || st.Shared.Queued != 2 || st.Shared.Leased != 1 || len(st.Executors) != 0 {
		t.Errorf("A with B's executor running one: %+v shared %+v", st, st.Shared)
	}
	if st := b.StatusWithShared(t.Context()); len(st.Executors) != 1 || st.Executors[0].Running != 1 {
		t.Errorf("B's own executors: %+v", st.Executors)
	}
	e.finish(asg, 0)
	if plain := a.Status(); plain.Shared != nil || plain.Replica != "replica-a" {
		t.Errorf("Status (no Redis read): %+v", plain)
	}
	// Unreachable shared state: reported, not hung.
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	if st := a.StatusWithShared(ctx); st.Shared == nil || st.Shared.Error == "" {
		t.Errorf("with Redis stopped: %+v", st.Shared)
	}
}
