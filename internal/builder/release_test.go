package builder_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// Back-to-back actions of one key with one worker allowed: each is served
// by the same warm process even though the previous action's workspace is
// still being cleaned when the next one arrives (the pool waits for that
// release), and each still sees only its own inputs.
func TestBackToBackActionsWaitForTheRelease(t *testing.T) {
	r := newRig(t, workerpool.Options{MaxWorkersPerKey: 1, MemoryLimitBytes: 1 << 30})
	const n = 10
	var tasks []builder.Task
	var inputs []map[string]input
	for i := range n {
		// The previous action's 300 stray files take milliseconds to
		// remove, longer than this action takes to reach Acquire.
		request := []string{"--ls"}
		for j := range 300 {
			request = append(request, fmt.Sprintf("--out=stray%d/f%d", i, j))
		}
		files := map[string]input{fmt.Sprintf("src/in%d.txt", i): {content: fmt.Sprint(i)}}
		tasks, inputs = append(tasks, r.inputsTask(files, request)), append(inputs, files)
	}
	for i, task := range tasks {
		files := inputs[i]
		resp := r.b.Build(context.Background(), task)
		if resp.GetStatus().GetCode() != 0 {
			t.Fatalf("action %d: %v", i, resp.GetStatus())
		}
		in := info(t, resp)
		if in.GetFellBack() || in.GetInvocation() != int32(i+1) || in.GetWarm() != (i > 0) {
			t.Fatalf("action %d: %+v, want invocation %d on the one process", i, in, i+1)
		}
		if got, want := r.stderr(resp), listing(files); got != want {
			t.Fatalf("action %d saw\n%s\nwant\n%s", i, got, want)
		}
	}
	r.b.Workers.Settle()
	st := r.b.Workers.Status().Total
	if st.ColdStarts != 1 || st.WarmHits != n-1 || st.NoCapacity != 0 || st.InFlight != 0 {
		t.Fatalf("pool stats %+v: want 1 cold start, %d warm hits, nothing in flight", st, n-1)
	}
	if st.ReleaseWaits == 0 {
		t.Fatalf("no action waited for a release in %d back-to-back actions: the test checks nothing", n)
	}
}
