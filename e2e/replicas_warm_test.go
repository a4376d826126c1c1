package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

// TestReplicasWarmAffinity: two replicas on shared state, one worker at
// each. A persistent-worker action leaves an idle warm worker on whichever
// executor ran it; the next actions of that key, sent to the *other*
// replica (whose own executor is idle and cold), run warm on that executor:
// the other replica leaves them to the one advertising the warm worker
// instead of starting a second worker cold.
func TestReplicasWarmAffinity(t *testing.T) {
	tool := buildScriptedWorker(t, t.TempDir())
	toolData, err := os.ReadFile(tool)
	if err != nil {
		t.Fatal(err)
	}
	a, b, _, _, _, _ := startReplicas(t)
	replicaOf := map[string]*hearthProcess{"w1": a, "w2": b} // each worker's first server
	clients := map[*hearthProcess]*reapiClient{a: dial(t, a.GRPCAddr), b: dial(t, b.GRPCAddr)}
	clients[a].uploadLarge(t, newTestBlob(toolData))
	action := func(c *reapiClient, content string) builtAction {
		request := []string{"--out=out/result.txt", "--content=" + content}
		act := workerAction{
			args:    []string{"tools/testworker", "@args/request.txt"},
			outputs: []string{"out/result.txt"},
			files: map[string]workerInputFile{
				"tools/testworker": {data: toolData, executable: true},
				"args/request.txt": {data: []byte(strings.Join(request, "\n") + "\n")},
			},
			platform: map[string]string{"persistentWorkerKey": "e2e-replicas"},
		}.build(t)
		c.upload(t, act, newTestBlob(toolData))
		return act
	}
	run := func(c *reapiClient, act builtAction) (worker string, warm bool) {
		t.Helper()
		resp, err := c.execute(t.Context(), act.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("status %v, exit code %d, stderr %q", st, resp.GetResult().GetExitCode(), c.stderrOf(t, resp))
		}
		return resp.GetResult().GetExecutionMetadata().GetWorker(), workerInfoOf(t, resp).GetWarm()
	}

	first, _ := run(clients[a], action(clients[a], "warm-up"))
	home := replicaOf[first]
	if home == nil {
		t.Fatalf("the warm-up ran on %q, not w1 or w2", first)
	}
	other := a
	if home == a {
		other = b
	}
	for i := range 5 {
		w, warm := run(clients[other], action(clients[other], fmt.Sprint("follow-up ", i)))
		if w != first || !warm {
			t.Errorf("follow-up %d sent to the other replica ran on %s (warm %v), want warm on %s", i, w, warm, first)
		}
	}
	t.Logf("warm-up on %s; follow-ups sent to the replica without it ran there warm", first)
}
