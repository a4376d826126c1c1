package scheduler

import (
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/redistest"
)

// warmRequest is request with the platform in the Action too, as REAPI
// clients send it: the shared state carries the Action, and the replica
// that claims it routes by the Action's platform.
func warmRequest(tag string, kv ...string) Request {
	r := request(tag, 0, kv...)
	r.Action = &repb.Action{Platform: r.Platform}
	return r
}

// waitAdvertised waits until replica's warm advertisement for key is in
// Redis (or gone, with want false).
func waitAdvertised(t *testing.T, srv *redistest.Server, replica, key string, want bool) {
	t.Helper()
	rdb := srv.Client(t)
	for i := 0; i < 300; i++ {
		_, err := rdb.ZScore(t.Context(), "{hearth}:s:warm:"+key, replica).Result()
		if (err == nil) == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("advertisement of %s by %s: want present=%v", key, replica, want)
}

// An action of a routing key that replica B has an idle warm worker for is
// run at B, although it is submitted at A, whose idle cold executor is
// kicked first; actions of other keys, and of K once B's warm worker is
// busy, are A's at once.
func TestSharedWarmAffinityAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	replicaNamed := func(name string) (*Scheduler, *testExecutor) {
		st := redissched.New(srv.Client(t), redissched.Options{})
		s, conn := startScheduler(t, Config{Shared: st, SharedPoll: 100 * time.Millisecond, Replica: name, SharedWarmWait: 500 * time.Millisecond})
		var e *testExecutor
		if name == "b" {
			e = connectExecutor(t, conn, warmExecutor("warm-b", 1, map[string]int32{"K": 1}))
		} else {
			e = connectExecutor(t, conn, linuxExecutor("cold-a", 4))
		}
		waitExecutors(t, s, 1)
		return s, e
	}
	a, cold := replicaNamed("a")
	_, warm := replicaNamed("b")
	waitAdvertised(t, srv, "b", "K", true)

	start := time.Now()
	op, err := a.Submit(warmRequest("k1", "OSFamily", "linux", "persistentWorkerKey", "K"))
	if err != nil {
		t.Fatal(err)
	}
	asg := warm.nextAssign()
	took := time.Since(start)
	if !strings.HasPrefix(asg.GetTaskId(), op.Name()+"/") {
		t.Fatalf("warm executor at B got %s, want %s", asg.GetTaskId(), op.Name())
	}
	cold.noAssign()
	// B took it through pub/sub, well before A's wait (500 ms) ran out.
	if took > 300*time.Millisecond {
		t.Errorf("B's warm executor got the action after %s, want it within a few ms", took)
	}
	t.Logf("warm executor at B got A's action after %s", took.Round(time.Microsecond))

	// Not a persistent worker action: A's cold executor (B's one slot is
	// busy), no waiting.
	start = time.Now()
	other, err := a.Submit(request("plain", 0, "OSFamily", "linux"))
	if err != nil {
		t.Fatal(err)
	}
	if asg := cold.nextAssign(); !strings.HasPrefix(asg.GetTaskId(), other.Name()+"/") {
		t.Fatalf("cold executor got %s, want %s", asg.GetTaskId(), other.Name())
	} else if d := time.Since(start); d > 300*time.Millisecond {
		t.Errorf("an action without a routing key waited %s", d)
	}

	// B's only warm worker is now busy (its view says none idle): B
	// withdraws, and the next K action is A's, without the full wait.
	waitAdvertised(t, srv, "b", "K", false)
	start = time.Now()
	op2, err := a.Submit(warmRequest("k2", "OSFamily", "linux", "persistentWorkerKey", "K"))
	if err != nil {
		t.Fatal(err)
	}
	asg2 := cold.nextAssign()
	if !strings.HasPrefix(asg2.GetTaskId(), op2.Name()+"/") {
		t.Fatalf("cold executor got %s, want %s", asg2.GetTaskId(), op2.Name())
	}
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Errorf("with no warm worker anywhere the action waited %s", d)
	}
	warm.finish(asg, 0, "K") // idle warm again
	waitAdvertised(t, srv, "b", "K", true)
}

// A replica that advertises a warm worker but does not take the action
// (here: it is gone, its advertisement not yet lapsed) delays a cold start
// elsewhere by at most the wait.
func TestSharedWarmWaitIsBounded(t *testing.T) {
	srv := redistest.Start(t)
	st := redissched.New(srv.Client(t), redissched.Options{})
	// A replica "ghost" advertises K for 10 s, then says nothing more.
	if err := st.AdvertiseWarm(t.Context(), "ghost", []string{"K"}, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	a, conn := startScheduler(t, Config{Shared: st, SharedPoll: 100 * time.Millisecond, Replica: "a", SharedWarmWait: 300 * time.Millisecond})
	cold := connectExecutor(t, conn, linuxExecutor("cold-a", 1))
	waitExecutors(t, a, 1)
	start := time.Now()
	op, err := a.Submit(warmRequest("k", "OSFamily", "linux", "persistentWorkerKey", "K"))
	if err != nil {
		t.Fatal(err)
	}
	asg := cold.nextAssign()
	d := time.Since(start)
	if !strings.HasPrefix(asg.GetTaskId(), op.Name()+"/") {
		t.Fatalf("got %s, want %s", asg.GetTaskId(), op.Name())
	}
	if d < 250*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("cold start after %s, want about the 300 ms wait", d)
	}
	t.Logf("cold start after %s with a warm worker advertised elsewhere", d.Round(time.Millisecond))
}
