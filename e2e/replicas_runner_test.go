package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
)

// TestReplicasRunnerFollowsWorker: a worker that lists two replicas and runs
// every action through a runner (runner_command: `hearth run`) gives each
// runner the replica it is connected to when the runner starts. After the
// first replica is killed and the worker has moved to the second, the next
// action's runner reads its inputs from and writes its outputs to the
// second; given the first's address it could do neither. And a runner
// that the kill cut off mid-action runs again at the second replica, which
// adopted the action: its client gets the result, not UNAVAILABLE.
func TestReplicasRunnerFollowsWorker(t *testing.T) {
	a, b, _ := startReplicaPair(t)
	w := startWorkerWith(t, []*hearthProcess{a, b}, "wr", 2, fmt.Sprintf(`runner_command: [%q, "run"],`, hearthBin))

	// Each action writes started.<input's first word> into the test's
	// directory when it starts (so the test can tell when its runner is
	// at work), then copies its input to its output after a pause.
	marks := t.TempDir()
	run := func(server *hearthProcess, input string, pause time.Duration, during func()) {
		t.Helper()
		c := dial(t, server.GRPCAddr)
		mark := filepath.Join(marks, "started."+strings.Fields(input)[0])
		act := actionSpec{
			args:        []string{"/bin/sh", "-c", fmt.Sprintf("touch %s; sleep %.1f; cat in.txt > out.txt", mark, pause.Seconds())},
			files:       map[string]string{"in.txt": input},
			outputPaths: []string{"out.txt"},
		}.build(t)
		c.upload(t, act)
		type outcomeOf struct {
			resp *repb.ExecuteResponse
			err  error
		}
		done := make(chan outcomeOf, 1)
		go func() {
			resp, err := c.execute(t.Context(), act.action.digest)
			done <- outcomeOf{resp, err}
		}()
		if during != nil {
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, err := os.Stat(mark); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the action did not start in 30 s\nworker:\n%s", w.log.tail(30))
				}
				time.Sleep(20 * time.Millisecond)
			}
			during()
		}
		o := <-done
		resp, err := o.resp, o.err
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("Execute at %s: %v (exit code %d)\nworker:\n%s", server.GRPCAddr, st, resp.GetResult().GetExitCode(), w.log.tail(30))
		}
		files := resp.GetResult().GetOutputFiles()
		if len(files) != 1 {
			t.Fatalf("outputs %v, want out.txt", files)
		}
		if data, err := c.byteStreamRead(t.Context(), files[0].GetDigest()); err != nil || string(data) != input {
			t.Fatalf("out.txt = %q (%v), want %q", data, err, input)
		}
	}

	run(a, "first through the first replica\n", 0, nil)
	// Submitted to B, run by the worker connected to A: its runner was
	// given A, and A dies while the action sleeps.
	run(b, "second: its runner lost the first replica mid-action\n", 2*time.Second, func() {
		a.kill()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if _, err := b.log.waitFor(ctx, w.done, `msg="executor connected" executor=wr `); err != nil {
			t.Fatalf("the worker did not move to the second replica: %v\nworker:\n%s", err, w.log.tail(30))
		}
	})
	if _, ok := w.log.find(`msg="runner lost its server; running the action again at the executor's new one"`); !ok {
		t.Errorf("the worker did not run the cut-off action again at B:\n%s", w.log.tail(30))
	}
	run(b, "third through the second replica, after the first died\n", 0, nil)
}
