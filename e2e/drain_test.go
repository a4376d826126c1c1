package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// countCompletions reads the completions log of splitWorkspaceLogging: for
// each action name, how many times it finished under dir, and elsewhere.
func countCompletions(t *testing.T, path, dir string) (under, elsewhere map[string]int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	under, elsewhere = map[string]int{}, map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		name, pwd, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if strings.HasPrefix(pwd, dir+string(filepath.Separator)) {
			under[name]++
		} else {
			elsewhere[name]++
		}
	}
	return under, elsewhere
}

// TestSplitWorkerDrain runs a remote build on `hearth server` with two
// `hearth worker` processes and sends SIGTERM to one of them while it runs
// actions. The worker must finish what it runs, take nothing new, exit 0,
// and the build must succeed with every action run to completion exactly
// once: none lost, none run twice.
func TestSplitWorkerDrain(t *testing.T) {
	completions := filepath.Join(t.TempDir(), "completions.log")
	files, want := splitWorkspaceLogging(completions)
	b := newGeneratedBazel(t, files)
	buildStarted, buildFinished := false, make(chan struct{})
	t.Cleanup(func() {
		if buildStarted {
			<-buildFinished
		}
	})
	srv := startServer(t, "server", t.TempDir(), nil)
	victim := startWorker(t, srv, "w1", 2)
	survivorHTTP := freeLoopbackAddr(t)
	survivor := startWorker(t, srv, "w2", 2, "--http", survivorHTTP)

	args := append(remoteExecutionFlags(srv.GRPCAddr), "--jobs=16", "//:all")
	type buildResult struct {
		out string
		err error
	}
	done := make(chan buildResult, 1)
	buildStarted = true
	go func() {
		defer close(buildFinished)
		out, err := b.runErr("build", args...)
		done <- buildResult{out, err}
	}()

	// Signal once each worker has started drainAfter actions, right after
	// the victim started one (which then has at least 100 ms left).
	const drainAfter = 20
	victimWatch, survivorWatch := newChildWatch(victim.cmd.Process.Pid), newChildWatch(survivor.cmd.Process.Pid)
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case r := <-done:
			t.Fatalf("the build ended (%v) before the workers had started %d actions each\n%s", r.err, drainAfter, tailLines(r.out, 40))
		case <-deadline:
			t.Fatalf("after 2 minutes the workers had started %d and %d actions, want %d each", victimWatch.started(), survivorWatch.started(), drainAfter)
		case <-time.After(10 * time.Millisecond):
		}
		fresh := victimWatch.poll()
		survivorWatch.poll()
		if fresh > 0 && victimWatch.started() >= drainAfter && survivorWatch.started() >= drainAfter {
			break
		}
	}
	victimDir := victim.cmd.Dir
	atSignal, _ := countCompletions(t, completions, victimDir)
	victim.signal(syscall.SIGTERM)
	victim.waitExit(0)
	afterExit, _ := countCompletions(t, completions, victimDir)
	t.Logf("w1 had finished %d actions at SIGTERM and %d when it exited", len(atSignal), len(afterExit))
	if len(afterExit) <= len(atSignal) {
		t.Errorf("w1 finished no action between SIGTERM and its exit (%d before, %d after): it should have finished the ones it ran", len(atSignal), len(afterExit))
	}
	if _, ok := victim.log.find(`msg="drained: every running action reported`); !ok {
		t.Errorf("w1 did not log that it drained:\n%s", victim.log.tail(30))
	}

	r := <-done
	if r.err != nil {
		t.Fatalf("the build failed after a worker was drained: %v\n%s", r.err, tailLines(r.out, 60))
	}
	for _, p := range remoteProblems(r.out) {
		t.Errorf("build: %s", p)
	}
	bin := b.info("bazel-bin")
	for path, content := range want {
		got, err := os.ReadFile(filepath.Join(bin, path))
		if err != nil || string(got) != content {
			t.Errorf("%s: %q (%v), want %q", path, got, err, content)
		}
	}

	onVictim, elsewhere := countCompletions(t, completions, victimDir)
	for i := range splitActions {
		name := fmt.Sprintf("g%03d", i)
		n, m := onVictim[name], elsewhere[name]
		if n > 1 {
			t.Errorf("%s ran to completion %d times on the drained worker", name, n)
		}
		if n+m != 1 {
			t.Errorf("%s ran to completion %d times on w1 and %d times elsewhere, want once in all", name, n, m)
		}
	}
	if _, ok := srv.log.find(`msg="executor disconnected" executor=w1 `); !ok {
		t.Errorf("the server never logged w1's disconnection")
	}

	// The surviving worker's own metrics: its actions and its calls to the
	// server.
	m := scrape(t, survivorHTTP)
	if n, _ := metricSum(m, "hearth_executor_actions_total", "outcome=success"); n < float64(len(elsewhere)) {
		t.Errorf("w2's hearth_executor_actions_total{outcome=success} = %v, want ≥ %d", n, len(elsewhere))
	}
	if n, _ := metricSum(m, "hearth_grpc_client_handled_total", "grpc_code=OK"); n < 1 {
		t.Errorf("w2's hearth_grpc_client_handled_total{grpc_code=OK} = %v, want > 0", n)
	}
	if n, _ := metricSum(m, "hearth_cas_blobs_written_total"); n < float64(len(elsewhere)) {
		t.Errorf("w2's hearth_cas_blobs_written_total = %v, want ≥ %d", n, len(elsewhere))
	}
	resp, err := http.Get("http://" + survivorHTTP + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), "Hearth worker w2") {
		t.Errorf("w2's status page: %s\n%.300s", resp.Status, page)
	}
}

// TestServeDrainOnSigterm sends SIGTERM to `hearth serve` while an Execute
// stream waits for a running action: the server must refuse new clients at
// once, let that stream finish with the result, exit 0, and keep every
// write it acknowledged (a client's UpdateActionResult and the executed
// action's cached result) across the restart.
func TestServeDrainOnSigterm(t *testing.T) {
	dataDir := t.TempDir()
	srv := startServe(t, dataDir)
	c := dial(t, srv.GRPCAddr)
	a := actionSpec{args: []string{"/bin/sh", "-c", "sleep 2; echo drained > out"}, outputPaths: []string{"out"}}.build(t)
	c.upload(t, a)
	type result struct {
		resp *repb.ExecuteResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.execute(t.Context(), a.action.digest)
		done <- result{resp, err}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for len(getStatus(t, srv.HTTPAddr).InFlight) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the action never started")
		}
		time.Sleep(20 * time.Millisecond)
	}

	ac := repb.NewActionCacheClient(c.conn)
	written := newTestBlob([]byte("an action digest the client made up"))
	stdout := newTestBlob([]byte("cached stdout"))
	if err := c.batchUpload(t.Context(), []testBlob{stdout, written}); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.UpdateActionResult(t.Context(), &repb.UpdateActionResultRequest{
		ActionDigest: written.digest, ActionResult: &repb.ActionResult{ExitCode: 0, StdoutDigest: stdout.digest},
		DigestFunction: repb.DigestFunction_SHA256,
	}); err != nil {
		t.Fatalf("UpdateActionResult: %v", err)
	}

	srv.signal(syscall.SIGTERM)
	time.Sleep(300 * time.Millisecond)
	late := dial(t, srv.GRPCAddr)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	_, err := late.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	cancel()
	if err == nil {
		t.Errorf("a new client was served while the server drained")
	}

	r := <-done
	if r.err != nil || r.resp.GetStatus().GetCode() != 0 || r.resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("the Execute stream in flight at SIGTERM did not finish with its result: %v %v", r.err, r.resp)
	}
	srv.waitExit(0)
	if _, ok := srv.log.find(`msg="shut down"`); !ok {
		t.Errorf("the server did not log its clean shutdown:\n%s", srv.log.tail(20))
	}

	again := startServe(t, dataDir)
	c2 := dial(t, again.GRPCAddr)
	ac2 := repb.NewActionCacheClient(c2.conn)
	for what, d := range map[string]*repb.Digest{"the client's UpdateActionResult": written.digest, "the executed action's result": a.action.digest} {
		if _, err := ac2.GetActionResult(t.Context(), &repb.GetActionResultRequest{ActionDigest: d, DigestFunction: repb.DigestFunction_SHA256}); err != nil {
			t.Errorf("after the restart, %s is gone: %v", what, err)
		}
	}
}
