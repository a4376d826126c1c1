package e2e

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
)

// TestWarmBurstSpreadsOverWorkers runs `hearth server` with three `hearth
// worker` processes of max_inflight 4 and sends one persistent-worker action
// (which leaves one idle warm worker on the executor that ran it), then a
// burst of six long actions of the same key at once. Executors report how
// many idle warm workers they hold and the scheduler uses them up as it
// assigns, so the burst uses the one warm worker and then spreads by load,
// two per executor, instead of piling four onto the warm executor (cold
// starts there) while the others idle.
func TestWarmBurstSpreadsOverWorkers(t *testing.T) {
	tool := buildScriptedWorker(t, t.TempDir())
	toolData, err := os.ReadFile(tool)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, "server", t.TempDir(), nil)
	for _, name := range []string{"wa", "wb", "wc"} {
		startWorker(t, srv, name, 4)
	}
	c := dial(t, srv.GRPCAddr)
	c.uploadLarge(t, newTestBlob(toolData))
	action := func(content, sleep string) builtAction {
		request := []string{"--out=out/result.txt", "--content=" + content, "--sleep=" + sleep}
		a := workerAction{
			args:    []string{"tools/testworker", "@args/request.txt"},
			outputs: []string{"out/result.txt"},
			files: map[string]workerInputFile{
				"tools/testworker": {data: toolData, executable: true},
				"args/request.txt": {data: []byte(strings.Join(request, "\n") + "\n")},
			},
			platform: map[string]string{"persistentWorkerKey": "e2e-burst"},
		}.build(t)
		c.upload(t, a, newTestBlob(toolData))
		return a
	}
	run := func(a builtAction) (worker string, warm bool) {
		resp, err := c.execute(t.Context(), a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Errorf("status %v, exit code %d, stderr %q", st, resp.GetResult().GetExitCode(), c.stderrOf(t, resp))
			return "", false
		}
		info := workerInfoOf(t, resp)
		if info.GetFellBack() {
			t.Errorf("fell back to one-shot: %v", info)
		}
		return resp.GetResult().GetExecutionMetadata().GetWorker(), info.GetWarm()
	}

	warmExecutor, _ := run(action("warm-up", "0s"))
	// Prepare and upload the whole burst first, so that all six arrive
	// within milliseconds; each sleeps long enough that none finishes
	// before the last is assigned.
	burst := make([]builtAction, 6)
	for i := range burst {
		burst[i] = action(fmt.Sprint("burst ", i), "3s")
	}
	var mu sync.Mutex
	perWorker := map[string]int{}
	warmRuns := map[string]int{}
	var wg sync.WaitGroup
	for _, a := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, warm := run(a)
			mu.Lock()
			defer mu.Unlock()
			perWorker[w]++
			if warm {
				warmRuns[w]++
			}
		}()
	}
	wg.Wait()
	t.Logf("warm-up ran on %s; burst per executor %v, warm runs %v", warmExecutor, perWorker, warmRuns)
	for _, name := range []string{"wa", "wb", "wc"} {
		if perWorker[name] != 2 {
			t.Errorf("executor %s ran %d of the burst, want 2 each: %v", name, perWorker[name], perWorker)
		}
	}
	if warmRuns[warmExecutor] != 1 {
		t.Errorf("the warm executor %s served %d burst actions warm, want 1 (its idle worker): %v", warmExecutor, warmRuns[warmExecutor], warmRuns)
	}
}
