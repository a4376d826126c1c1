package executor_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// syncBuffer collects an executor's log lines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// configured is a cluster whose executor was built by executor.FromConfig
// from a worker configuration file, as `hearth worker` builds it.
type configured struct {
	*cluster
	srv  *server
	dir  string
	logs *syncBuffer
}

type configuredOptions struct {
	sched     scheduler.Config
	heartbeat time.Duration
}

// startConfigured writes a worker configuration file whose one local worker
// has the fields of local (JSON5 members) besides its endpoint and work
// directory, loads it with config.Load, builds the executor with FromConfig
// and runs it against a fresh server.
func startConfigured(t *testing.T, local string, o configuredOptions) *configured {
	t.Helper()
	dir := t.TempDir()
	if o.sched.OrphanGrace == 0 {
		o.sched.OrphanGrace = 200 * time.Millisecond
	}
	srv := startServer(t, dir, o.sched)
	path := filepath.Join(dir, "worker.json5")
	text := fmt.Sprintf(`// written by startConfigured
{
  workers: [{local: {
    name: "configured",
    // Unused: the test connects the executor to its server itself.
    worker_api_endpoint: {uri: "grpc://127.0.0.1:1"},
    work_directory: %q,
    max_inflight_tasks: 2,
    %s
  }}],
}`, filepath.Join(dir, "work"), local)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ex, err := executor.FromConfig(context.Background(), &f.Workers[0].Local, executor.Deps{
		CAS: srv.store, ActionCache: srv.ac.Relaxed(), FileSource: srv.disk,
		Logger:            slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HeartbeatInterval: o.heartbeat,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &configured{cluster: srv.run(t, ex), srv: srv, dir: dir, logs: logs}
}

// lines parses "NAME=value" lines.
func lines(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// A client before REAPI v2.2 (Bazel 4) puts the platform only in the
// Command: a property source must read it there too.
func TestConfigAdditionalEnvironmentFromCommandPlatform(t *testing.T) {
	c := startConfigured(t, `
    platform_properties: {pool: {values: ["gpu"]}},
    persistent_workers: {enabled: false},
    additional_environment: {P: {property: "pool"}},`, configuredOptions{})
	cmd := &repb.Command{
		Arguments:            []string{"/bin/sh", "-c", `echo P=${P-unset}`},
		EnvironmentVariables: env("PATH", "/usr/bin:/bin"),
		Platform:             &repb.Platform{Properties: []*repb.Platform_Property{{Name: "pool", Value: "gpu"}}},
	}
	ad := c.action(cmd, nil, func(a *repb.Action) { a.Platform = nil })
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("resp %v", resp)
	}
	if got := lines(c.read(resp.GetResult().GetStdoutDigest()))["P"]; got != "gpu" {
		t.Errorf("P = %q, want %q (the Command's platform property)", got, "gpu")
	}
}

func TestConfigAdditionalEnvironment(t *testing.T) {
	t.Setenv("HEARTH_TEST_FROM_ENV", "from-the-worker")
	t.Setenv("HEARTH_TEST_RENAMED_SOURCE", "renamed-value")
	c := startConfigured(t, `
    max_action_timeout: 90,
    platform_properties: {pool: {values: ["gpu"]}},
    // side_channel_file and action_directory exist only for one-shot runs.
    persistent_workers: {enabled: false},
    additional_environment: {
      V: {value: "fixed value"},
      P: {property: "pool"},
      HEARTH_TEST_FROM_ENV: "from_environment",
      R: {from_environment: "HEARTH_TEST_RENAMED_SOURCE"},
      T: "timeout_millis",
      SIDE: "side_channel_file",
      DIR: "action_directory",
    },`, configuredOptions{})
	script := `for v in V P HEARTH_TEST_FROM_ENV R T SIDE DIR CMD; do eval "echo $v=\${$v-unset}"; done
echo PWD=$(pwd)
test -d "$DIR" && echo DIR_EXISTS=yes
echo "$DIR" > "$OUT"`
	dirFile := filepath.Join(c.dir, "action-dir")
	cmd := &repb.Command{
		Arguments:            []string{"/bin/sh", "-c", script},
		EnvironmentVariables: env("CMD", "from-the-command", "OUT", dirFile, "PATH", "/usr/bin:/bin"),
	}
	ad := c.action(cmd, nil, func(a *repb.Action) {
		a.Timeout = durationpb.New(7 * time.Second)
		a.Platform = &repb.Platform{Properties: []*repb.Platform_Property{{Name: "pool", Value: "gpu"}}}
	})
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("resp %v", resp)
	}
	got := lines(c.read(resp.GetResult().GetStdoutDigest()))
	actionDir := got["DIR"]
	want := map[string]string{
		"V":                    "fixed value",
		"P":                    "gpu",
		"HEARTH_TEST_FROM_ENV": "from-the-worker",
		"R":                    "renamed-value",
		"T":                    "7000",
		"SIDE":                 filepath.Join(actionDir, "side_channel.json"),
		"DIR":                  actionDir,
		"CMD":                  "from-the-command", // the Command's own variables stay
		"PWD":                  filepath.Join(actionDir, "root"),
		"DIR_EXISTS":           "yes",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if !strings.HasPrefix(actionDir, filepath.Join(c.dir, "work", "actions")+"/") {
		t.Errorf("action_directory %q is not inside the work directory's actions", actionDir)
	}
	// The directory may be kept for the next action, but emptied: nothing
	// but its empty input root.
	if fileExists(actionDir) {
		top, _ := os.ReadDir(actionDir)
		root, _ := os.ReadDir(filepath.Join(actionDir, "root"))
		if len(top) != 1 || top[0].Name() != "root" || len(root) != 0 {
			t.Errorf("action directory %s outlived the action with contents %v, root %v", actionDir, top, root)
		}
	}

	// Without its own timeout an action gets max_action_timeout.
	ad = c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", `echo "T=$T"`}}, nil)
	if _, resp, err = c.execute(&repb.ExecuteRequest{ActionDigest: ad}); err != nil {
		t.Fatal(err)
	}
	if got := c.read(resp.GetResult().GetStdoutDigest()); got != "T=90000\n" {
		t.Errorf("timeout_millis without an action timeout: %q, want T=90000", got)
	}
}

// TestConfigPreconditionEnvironment: the precondition script sees exactly
// the static additional_environment entries, as in NativeLink.
func TestConfigPreconditionEnvironment(t *testing.T) {
	t.Setenv("HEARTH_TEST_FROM_ENV", "from-the-worker")
	t.Setenv("HEARTH_TEST_SECRET", "must-not-leak")
	out := filepath.Join(t.TempDir(), "env")
	startConfigured(t, fmt.Sprintf(`
    experimental_precondition_script: "/bin/sh -c '/usr/bin/env > %s.tmp; mv %s.tmp %s'",
    additional_environment: {V: {value: "static"}, HEARTH_TEST_FROM_ENV: "from_environment", T: "timeout_millis", DIR: "action_directory"},
    persistent_workers: {enabled: false},`, out, out, out),
		configuredOptions{heartbeat: 50 * time.Millisecond})
	for deadline := time.Now().Add(5 * time.Second); !fileExists(out); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the precondition script did not run")
		}
	}
	got := lines(readFile(t, out))
	delete(got, "PWD") // the shell's own
	want := map[string]string{"V": "static", "HEARTH_TEST_FROM_ENV": "from-the-worker"}
	if len(got) != len(want) || got["V"] != want["V"] || got["HEARTH_TEST_FROM_ENV"] != want["HEARTH_TEST_FROM_ENV"] {
		t.Errorf("precondition environment %q, want exactly %q", got, want)
	}
}

// TestConfigSideChannelTimeout: an entrypoint that enforces the timeout
// itself reports it through the side channel file, and the client gets
// DEADLINE_EXCEEDED with the output kept.
func TestConfigSideChannelTimeout(t *testing.T) {
	c := startConfigured(t, `
    timeout_handled_externally: true,
    additional_environment: {SIDE: "side_channel_file", T: "timeout_millis"},
    persistent_workers: {enabled: false},`, configuredOptions{})
	for _, tc := range []struct {
		name   string
		script string
		want   codes.Code
	}{
		{"reports a timeout", `echo "budget $T"; echo '{"failure": "timeout"}' > "$SIDE"`, codes.DeadlineExceeded},
		{"reports nothing", `echo "budget $T"`, codes.OK},
		{"reports another failure", `echo "budget $T"; echo '{"failure": "oom"}' > "$SIDE"`, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", tc.script}}, nil,
				func(a *repb.Action) { a.Timeout = durationpb.New(1500 * time.Millisecond); a.DoNotCache = true })
			_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
			if err != nil {
				t.Fatal(err)
			}
			if got := codes.Code(resp.GetStatus().GetCode()); got != tc.want {
				t.Fatalf("status %v, want %v", resp.GetStatus(), tc.want)
			}
			if out := c.read(resp.GetResult().GetStdoutDigest()); out != "budget 1500\n" {
				t.Errorf("stdout %q", out)
			}
		})
	}
}

func TestConfigMessageTemplates(t *testing.T) {
	c := startConfigured(t, `
    upload_action_result: {
      success_message_template: "ok {action_digest_hash}",
      failure_message_template: "failed: {digest_function}/{action_digest_hash}/{action_digest_size} {{see logs}} {historical_results_hash}.",
    },`, configuredOptions{})
	for _, tc := range []struct {
		name   string
		script string
		mutate func(*repb.Action)
		want   func(hash string, size int64) string
	}{
		{"success", "exit 0", nil, func(h string, _ int64) string { return "ok " + h }},
		{"non-zero exit", "exit 3", nil, func(h string, n int64) string { return fmt.Sprintf("failed: sha256/%s/%d {see logs} .", h, n) }},
		{"timeout", "sleep 30", func(a *repb.Action) { a.Timeout = durationpb.New(200 * time.Millisecond) },
			func(h string, n int64) string { return fmt.Sprintf("failed: sha256/%s/%d {see logs} .", h, n) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mutate []func(*repb.Action)
			if tc.mutate != nil {
				mutate = append(mutate, tc.mutate)
			}
			ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", tc.script}}, nil, mutate...)
			_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.want(ad.GetHash(), ad.GetSizeBytes()); resp.GetMessage() != want {
				t.Errorf("message %q, want %q", resp.GetMessage(), want)
			}
		})
	}
}

// TestConfigUploadStrategies checks what each upload_ac_results_strategy
// leaves in the action cache after one succeeding and one failing action.
func TestConfigUploadStrategies(t *testing.T) {
	for _, tc := range []struct {
		strategy                 string
		wantSuccess, wantFailure bool
	}{
		{"success_only", true, false},
		{"never", false, false},
		{"everything", true, true},
		{"failures_only", false, true},
	} {
		t.Run(tc.strategy, func(t *testing.T) {
			c := startConfigured(t, fmt.Sprintf(`upload_action_result: {upload_ac_results_strategy: %q},`, tc.strategy), configuredOptions{})
			ac := repb.NewActionCacheClient(c.conn)
			for _, run := range []struct {
				name   string
				script string
				exit   int32
				want   bool
			}{{"succeeding", "echo fine", 0, tc.wantSuccess}, {"failing", "echo broken; exit 4", 4, tc.wantFailure}} {
				ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", run.script}}, nil)
				_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
				if err != nil || resp.GetResult().GetExitCode() != run.exit {
					t.Fatalf("%s action: resp %v err %v", run.name, resp, err)
				}
				got, err := ac.GetActionResult(context.Background(), &repb.GetActionResultRequest{ActionDigest: ad})
				switch {
				case run.want && err != nil:
					t.Errorf("%s action: not in the action cache: %v", run.name, err)
				case run.want && got.GetExitCode() != run.exit:
					t.Errorf("%s action: cached exit code %d, want %d", run.name, got.GetExitCode(), run.exit)
				case !run.want && status.Code(err) != codes.NotFound:
					t.Errorf("%s action: GetActionResult = %v, %v; want NotFound", run.name, got, err)
				}
			}
		})
	}
}

// executorStatus returns the scheduler's view of the configured executor.
func (c *configured) executorStatus() (scheduler.ExecutorStatus, bool) {
	for _, e := range c.sched.Status().Executors {
		if e.Name == "configured" {
			return e, true
		}
	}
	return scheduler.ExecutorStatus{}, false
}

// waitAccepting waits until the scheduler sees the executor accepting work
// (or not), failing after limit.
func (c *configured) waitAccepting(want bool, limit time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if e, ok := c.executorStatus(); ok && e.Accepting == want {
			return
		}
		if time.Now().After(deadline) {
			e, _ := c.executorStatus()
			c.t.Fatalf("executor accepting = %v after %v, want %v", e.Accepting, limit, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestConfigPreconditionPausesAndResumes: a failing precondition script
// stops the executor taking work (an action stays queued), a passing one
// resumes it (the queued action runs), and failing again pauses it again.
func TestConfigPreconditionPausesAndResumes(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "healthy")
	c := startConfigured(t, fmt.Sprintf(`experimental_precondition_script: "/bin/sh -c 'test -e %s'",`, flag),
		configuredOptions{heartbeat: 50 * time.Millisecond})
	c.waitAccepting(false, 5*time.Second)

	queuedBefore := c.sched.Status().Queued // the harness's registration probes
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "echo ran"}}, nil)
	done := make(chan *repb.ExecuteResponse, 1)
	go func() {
		_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
		if err != nil {
			t.Error(err)
		}
		done <- resp
	}()
	select {
	case resp := <-done:
		t.Fatalf("a paused executor ran the action: %v", resp)
	case <-time.After(time.Second):
	}
	if q := c.sched.Status().Queued - queuedBefore; q != 1 {
		t.Errorf("%d more actions queued, want the one", q)
	}

	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-done:
		if resp.GetResult().GetExitCode() != 0 || c.read(resp.GetResult().GetStdoutDigest()) != "ran\n" {
			t.Fatalf("resp %v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the executor did not resume when the precondition passed")
	}

	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	c.waitAccepting(false, 5*time.Second)
}

// TestConfigPreconditionBackgroundChildDoesNotStallHeartbeats is issue 8's
// hang: a script that leaves a background child holding its stdout used to
// block the heartbeat until the child ended (60s here), so the executor
// never reported its state and the scheduler dropped it. Now the script's
// verdict arrives within a heartbeat, the session survives, and the
// children die with the scripts.
func TestConfigPreconditionBackgroundChildDoesNotStallHeartbeats(t *testing.T) {
	dir := t.TempDir()
	flag, pids := filepath.Join(dir, "healthy"), filepath.Join(dir, "pids")
	c := startConfigured(t, fmt.Sprintf(`experimental_precondition_script: "/bin/sh -c 'sleep 60 & echo $! >> %s; test -e %s'",`, pids, flag),
		configuredOptions{heartbeat: 100 * time.Millisecond, sched: scheduler.Config{HeartbeatTimeout: time.Second}})
	c.waitAccepting(false, 3*time.Second)
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitAccepting(true, 3*time.Second)
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "echo ran"}}, nil)
	if _, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad}); err != nil || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("resp %v err %v", resp, err)
	}
	// Outlast the scheduler's heartbeat timeout a few times over.
	time.Sleep(2500 * time.Millisecond)
	if n := c.logs.count("scheduler session ended"); n != 0 {
		t.Errorf("the session broke %d times: heartbeats stalled", n)
	}
	for _, pid := range readPIDs(t, pids) {
		waitDead(t, pid)
	}
}

// TestConfigPreconditionNoLeakAcrossReconnects: sessions that end while the
// precondition script's background child holds its stdout leave no
// heartbeat goroutine (and no script process) behind. The scheduler drops
// the executor after 200ms without a heartbeat and the executor heartbeats
// only at session start, so it reconnects again and again.
func TestConfigPreconditionNoLeakAcrossReconnects(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	c := startConfigured(t, fmt.Sprintf(`experimental_precondition_script: "/bin/sh -c 'sleep 60 & echo $! >> %s'",`, pids),
		configuredOptions{heartbeat: time.Hour, sched: scheduler.Config{HeartbeatTimeout: 200 * time.Millisecond}})
	deadline := time.Now().Add(15 * time.Second)
	for c.logs.count("scheduler session ended") < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d reconnects", c.logs.count("scheduler session ended"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Let the latest session's heartbeat settle, then count.
	time.Sleep(1500 * time.Millisecond)
	if n := goroutinesIn("executor.(*Executor).heartbeat"); n > 1 {
		t.Errorf("%d heartbeat goroutines after %d sessions, want at most the current one", n, c.logs.count("connected to scheduler"))
	}
	if n := goroutinesIn("executor.(*precondition).run"); n > 1 {
		t.Errorf("%d precondition runs in flight, want at most one", n)
	}
	for _, pid := range readPIDs(t, pids) {
		waitDead(t, pid)
	}
}
