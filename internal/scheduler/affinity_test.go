package scheduler

import (
	"slices"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// drain collects the assignments an executor received until none arrives
// for a short while.
func (e *testExecutor) drain() []*workerapi.Assign {
	var out []*workerapi.Assign
	for {
		select {
		case a := <-e.assigns:
			out = append(out, a)
		case <-time.After(200 * time.Millisecond):
			return out
		}
	}
}

func warmExecutor(name string, inflight int32, warm map[string]int32) *workerapi.Register {
	reg := linuxExecutor(name, inflight)
	for k, n := range warm {
		reg.WarmWorkers = append(reg.WarmWorkers, &workerapi.WarmWorkers{Key: k, Idle: n})
	}
	return reg
}

func TestWarmBurstSpreads(t *testing.T) {
	tests := []struct {
		name string
		// idle warm workers of key K on executor "warm"; the others have none
		warmIdle int32
		burst    int
		// how many actions each executor gets
		want map[string]int
	}{
		// One warm worker: the first action uses it, the rest spread by
		// load instead of piling onto the warm executor (which the old
		// boolean affinity did until its 4 slots were full).
		{"one warm worker", 1, 6, map[string]int{"warm": 2, "a": 2, "b": 2}},
		// Two warm workers are used before anything else is considered.
		{"two warm workers", 2, 3, map[string]int{"warm": 2, "a": 1, "b": 0}},
		{"no warm worker", 0, 6, map[string]int{"warm": 2, "a": 2, "b": 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, conn := startScheduler(t, Config{})
			execs := map[string]*testExecutor{
				"warm": connectExecutor(t, conn, warmExecutor("warm", 4, map[string]int32{"K": tt.warmIdle})),
			}
			waitExecutors(t, s, 1)
			execs["a"] = connectExecutor(t, conn, linuxExecutor("a", 4))
			waitExecutors(t, s, 2)
			execs["b"] = connectExecutor(t, conn, linuxExecutor("b", 4))
			waitExecutors(t, s, 3)
			for i := range tt.burst {
				if _, err := s.Submit(request(string(rune('a'+i)), 0, "persistentWorkerKey", "K")); err != nil {
					t.Fatal(err)
				}
			}
			got := map[string]int{}
			for name, e := range execs {
				got[name] = len(e.drain())
			}
			// Cold executors of equal load are interchangeable: compare the
			// warm executor's share exactly and the cold ones as a multiset.
			coldGot := []int{got["a"], got["b"]}
			coldWant := []int{tt.want["a"], tt.want["b"]}
			slices.Sort(coldGot)
			slices.Sort(coldWant)
			if got["warm"] != tt.want["warm"] || !slices.Equal(coldGot, coldWant) {
				t.Fatalf("assignments = %v, want %v (cold executors in any order)", got, tt.want)
			}
		})
	}
}

func TestWarmFirstActionGoesToWarmExecutor(t *testing.T) {
	s, conn := startScheduler(t, Config{})
	cold := connectExecutor(t, conn, linuxExecutor("cold", 4))
	warm := connectExecutor(t, conn, warmExecutor("warm", 4, map[string]int32{"K": 1}))
	waitExecutors(t, s, 2)
	// Make the warm executor the more loaded one: affinity still wins while
	// it has an idle warm worker.
	s.Submit(request("other", 0))
	if len(cold.drain())+len(warm.drain()) != 1 {
		t.Fatal("the first action was not assigned once")
	}
	s.Submit(request("k1", 0, "persistentWorkerKey", "K"))
	if got := warm.drain(); len(got) != 1 {
		t.Fatalf("warm executor got %d actions of its key", len(got))
	}
	// Its only warm worker is in use now: the next goes by load.
	s.Submit(request("k2", 0, "persistentWorkerKey", "K"))
	if len(cold.drain()) != 1 {
		t.Fatal("second action of the key did not go to the less loaded executor")
	}
	// A fresh report restores the view.
	warm.send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Heartbeat{Heartbeat: &workerapi.Heartbeat{
		Accepting: true, WarmWorkers: []*workerapi.WarmWorkers{{Key: "K", Idle: 1}},
	}}})
	time.Sleep(100 * time.Millisecond)
	if st := s.Status(); st.Executors[1].Name != "warm" || st.Executors[1].WarmWorkers["K"] != 1 {
		t.Fatalf("status = %+v", st.Executors)
	}
	s.Submit(request("k3", 0, "persistentWorkerKey", "K"))
	if len(warm.drain()) != 1 {
		t.Fatal("reported warm worker not used")
	}
}

// An opt-in without persistentWorkerKey is routed by the key the executor
// derives from the Command.
func TestWarmRoutingWithoutClientKey(t *testing.T) {
	cmd := &repb.Command{
		Arguments:            []string{"javac-worker", "--flag", "@args.txt"},
		EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "PATH", Value: "/bin"}},
	}
	plat := props("supports-workers", "1")
	key := workeraction.RoutingKeyOf(plat, cmd)
	if key == "" {
		t.Fatal("no routing key for an opt-in action")
	}
	other := &repb.Command{Arguments: []string{"other-tool", "@args.txt"}}
	if k := workeraction.RoutingKeyOf(plat, other); k == key || k == "" {
		t.Fatalf("another tool gets routing key %q", k)
	}
	if k := workeraction.RoutingKeyOf(nil, cmd); k != "" {
		t.Fatalf("an action without worker hints gets routing key %q", k)
	}

	s, conn := startScheduler(t, Config{})
	cold := connectExecutor(t, conn, linuxExecutor("cold", 4))
	warm := connectExecutor(t, conn, warmExecutor("warm", 4, map[string]int32{key: 1}))
	waitExecutors(t, s, 2)
	s.Submit(request("busy", 0)) // one of them gets loaded
	cold.drain()
	warm.drain()
	r := request("x", 0, "supports-workers", "1")
	r.Command = cmd
	s.Submit(r)
	if len(warm.drain()) != 1 {
		t.Fatal("opt-in action without persistentWorkerKey not routed to its warm worker")
	}
}
