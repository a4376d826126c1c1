package executor_test

import (
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// TestDrainFinishesRunningActions: after Drain, the executor finishes the
// actions it runs and reports them, starts nothing new (what it was given
// stays with the scheduler), and Run returns.
func TestDrainFinishesRunningActions(t *testing.T) {
	c := startCluster(t, time.Minute)
	slow := func(i int) *repb.Digest {
		return c.action(&repb.Command{
			Arguments:   []string{"sh", "-c", "sleep 1; echo " + itoa(i) + " > out"},
			OutputPaths: []string{"out"},
		}, &repb.Directory{})
	}
	type result struct {
		resp *repb.ExecuteResponse
		err  error
	}
	results := make(chan result, 2)
	for i := range 2 {
		ad := slow(i)
		go func() {
			_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad, SkipCacheLookup: true})
			results <- result{resp, err}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for running(c) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the actions did not start: %+v", c.sched.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.executor.Drain()
	// Give the scheduler the "not accepting" heartbeat, then queue one more.
	time.Sleep(100 * time.Millisecond)
	late, err := c.sched.Submit(scheduler.Request{
		ActionDigest: digest.Compute(digest.SHA256, []byte("late")), Action: &repb.Action{},
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		r := <-results
		if r.err != nil || r.resp.GetStatus().GetCode() != 0 || r.resp.GetResult().GetExitCode() != 0 {
			t.Errorf("a running action did not finish cleanly across the drain: %v %v", r.err, r.resp)
		}
	}
	select {
	case <-c.runDone:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	if st, _ := late.Watch(); st.Stage != repb.ExecutionStage_QUEUED {
		t.Errorf("the action queued after the drain is %v, want still QUEUED for another executor", st.Stage)
	}
}

func running(c *cluster) int {
	n := 0
	for _, e := range c.sched.Status().Executors {
		n += e.Running
	}
	return n
}
