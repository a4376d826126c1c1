package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
)

// hearthRunWrapper writes a one-line script that execs `hearth run` with its
// arguments (buildbox-worker's --buildbox-run takes one executable path),
// logging each argv to the returned file for failure messages.
func hearthRunWrapper(t *testing.T) (script, argvLog string) {
	t.Helper()
	dir := t.TempDir()
	script, argvLog = filepath.Join(dir, "hearth-run"), filepath.Join(dir, "argv.log")
	body := fmt.Sprintf("#!/bin/sh\necho \"$@\" >> %q\nexec %q run \"$@\"\n", argvLog, hearthBin)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, argvLog
}

// executeOnOwnExecutor runs a on a fresh `hearth serve` (Hearth's own
// executor, its own store) and returns its result.
func executeOnOwnExecutor(t *testing.T, ctx context.Context, a builtAction) (*repb.ActionResult, *reapiClient) {
	t.Helper()
	own := startServe(t, t.TempDir())
	oc := dial(t, own.GRPCAddr)
	oc.upload(t, a)
	resp, err := oc.execute(ctx, a.action.digest)
	if err != nil || resp.GetStatus().GetCode() != 0 {
		t.Fatalf("Execute on hearth serve: %v %v", resp, err)
	}
	return resp.GetResult(), oc
}

// sameResult reports how got differs from want in what the action did:
// exit code, output files, directories and symlinks, stdout and stderr
// (by digest; an inlined or absent stream is compared as its bytes).
func sameResult(t *testing.T, ctx context.Context, got *repb.ActionResult, gc *reapiClient, want *repb.ActionResult, wc *reapiClient) []string {
	t.Helper()
	var diffs []string
	if got.GetExitCode() != want.GetExitCode() {
		diffs = append(diffs, fmt.Sprintf("exit code %d, want %d", got.GetExitCode(), want.GetExitCode()))
	}
	for _, f := range []struct {
		name string
		g, w proto.Message
	}{
		{"output_files", &repb.ActionResult{OutputFiles: got.OutputFiles}, &repb.ActionResult{OutputFiles: want.OutputFiles}},
		{"output_directories", &repb.ActionResult{OutputDirectories: got.OutputDirectories}, &repb.ActionResult{OutputDirectories: want.OutputDirectories}},
		{"output_symlinks", &repb.ActionResult{OutputSymlinks: got.OutputSymlinks}, &repb.ActionResult{OutputSymlinks: want.OutputSymlinks}},
	} {
		if !proto.Equal(f.g, f.w) {
			diffs = append(diffs, fmt.Sprintf("%s: %v, want %v", f.name, f.g, f.w))
		}
	}
	stream := func(c *reapiClient, raw []byte, d *repb.Digest) string {
		if len(raw) > 0 || d == nil || d.GetSizeBytes() == 0 {
			return string(raw)
		}
		b, err := c.byteStreamRead(ctx, d)
		if err != nil {
			return fmt.Sprintf("<%v>", err)
		}
		return string(b)
	}
	if g, w := stream(gc, got.GetStdoutRaw(), got.GetStdoutDigest()), stream(wc, want.GetStdoutRaw(), want.GetStdoutDigest()); g != w {
		diffs = append(diffs, fmt.Sprintf("stdout %q, want %q", g, w))
	}
	if g, w := stream(gc, got.GetStderrRaw(), got.GetStderrDigest()), stream(wc, want.GetStderrRaw(), want.GetStderrDigest()); g != w {
		diffs = append(diffs, fmt.Sprintf("stderr %q, want %q", g, w))
	}
	return diffs
}

// TestBuildboxWorkerHearthRun: the real buildbox-worker 1.4.30 runs actions
// with `hearth run` as its --buildbox-run (no wrapper that drops flags: the
// script only execs it), so hearth run takes buildbox's whole runner
// command line — --validate-parameters at start, --digest-function=SHA256,
// the connection flags, --partial-execution-metadata-file, --log-level. The
// worker's connection flags are set to non-defaults, which hearth run must
// accept and honour. Its results equal Hearth's own executor's.
func TestBuildboxWorkerHearthRun(t *testing.T) {
	srv := startServer(t, "server", t.TempDir(), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	script, argvLog := hearthRunWrapper(t)
	bbLog, _ := startBotRunner(t, srv, "hearth-run-bot", script,
		"--cas-retry-limit=3", "--cas-retry-delay=200", "--cas-request-timeout=60", "--cas-keepalive-time=30")
	c := dial(t, srv.GRPCAddr)
	failure := func() string {
		argv, _ := os.ReadFile(argvLog)
		return fmt.Sprintf("\nrunner argv:\n%s\nbuildbox-worker:\n%s\nserver:\n%s", argv, bbLog.String(), srv.log.tail(30))
	}
	for _, tc := range []struct {
		name string
		spec actionSpec
	}{
		{"outputs", actionSpec{
			args: []string{"/bin/sh", "-c", `
echo "to stdout"; echo "to stderr" >&2
mkdir -p out/dir/sub && cat in/input.txt > out/result.txt
printf '#!/bin/sh\n' > out/dir/tool.sh && chmod 755 out/dir/tool.sh
echo deep > out/dir/sub/f; ln -s result.txt out/link`},
			files:       map[string]string{"in/input.txt": "input line\n"},
			outputPaths: []string{"out/absent", "out/dir", "out/link", "out/result.txt"},
		}},
		{"failing", actionSpec{
			args:        []string{"/bin/sh", "-c", "echo partial > half.txt; echo oops >&2; exit 7"},
			outputPaths: []string{"half.txt"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.spec.build(t)
			c.upload(t, a)
			start := time.Now()
			resp, err := c.execute(ctx, a.action.digest)
			t.Logf("Execute through buildbox-worker + hearth run took %v", time.Since(start))
			if err != nil || resp.GetStatus().GetCode() != 0 {
				t.Fatalf("Execute through buildbox-worker + hearth run: %v, %v%s", resp, err, failure())
			}
			if w := resp.GetResult().GetExecutionMetadata().GetWorker(); w != "hearth-run-bot" {
				t.Errorf("result from worker %q, want the buildbox bot", w)
			}
			want, oc := executeOnOwnExecutor(t, ctx, a)
			for _, d := range sameResult(t, ctx, resp.GetResult(), c, want, oc) {
				t.Errorf("buildbox-worker + hearth run vs Hearth's executor: %s", d)
			}
			if t.Failed() {
				t.Log(failure())
			}
		})
	}
	argv, err := os.ReadFile(argvLog)
	if err != nil {
		t.Fatal(err)
	}
	// The flags the test relies on reached hearth run (so a change in
	// buildbox-worker shows here rather than as a vacuous pass).
	for _, want := range []string{"--validate-parameters", "--digest-function=SHA256", "--retry-limit=3", "--retry-delay=200", "--request-timeout=60", "--keepalive-time=30", "--partial-execution-metadata-file=", "--log-level=info"} {
		if !strings.Contains(string(argv), want) {
			t.Errorf("buildbox-worker did not pass %s to hearth run:\n%s", want, argv)
		}
	}
}

// TestHearthRunConnectionFlags drives the built `hearth run` with buildbox's
// connection and logging flags against a CAS address nobody listens on, and
// then against `hearth serve`: --retry-limit retries (with --retry-delay's
// 1.6× backoff) and logs each retry unless --log-level hides warnings, and
// --partial-execution-metadata-file gets the stage timestamps.
func TestHearthRunConnectionFlags(t *testing.T) {
	a := actionSpec{args: []string{"/bin/sh", "-c", "echo ok > out"}, outputPaths: []string{"out"}}.build(t)
	dead := freeLoopbackAddr(t)
	for _, tc := range []struct {
		name        string
		flags       []string
		minTook     time.Duration
		wantRetries int // "retrying" log lines
	}{
		{"no retries", []string{"--retry-limit=0"}, 0, 0},
		{"two retries", []string{"--retry-limit=2", "--retry-delay=300"}, 300*time.Millisecond + 480*time.Millisecond, 2},
		{"retries not logged at error level", []string{"--retry-limit=2", "--retry-delay=300", "--log-level=ERROR"}, 780 * time.Millisecond, 0},
		{"retries logged to --log-directory", []string{"--retry-limit=2", "--retry-delay=300", "--log-directory=LOGDIR"}, 780 * time.Millisecond, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			partial := filepath.Join(dir, "partial.bin")
			logDir := t.TempDir()
			flags := append([]string{"--digest-function=SHA256", "--partial-execution-metadata-file=" + partial}, tc.flags...)
			for i := range flags {
				flags[i] = strings.ReplaceAll(flags[i], "LOGDIR", logDir)
			}
			r := hearthRun(t, dir, dead, a, flags...)
			if r.exitCode == 0 || r.errorStatus.GetCode() != 14 {
				t.Fatalf("hearth run against nothing: exit %d, status %v, want UNAVAILABLE\n%s", r.exitCode, r.errorStatus, r.output)
			}
			if got := strings.Count(r.output, "retrying"); got != tc.wantRetries {
				t.Errorf("%d retry warnings, want %d\n%s", got, tc.wantRetries, r.output)
			}
			if r.took < tc.minTook || r.took > tc.minTook+10*time.Second {
				t.Errorf("took %v, want about %v (the retry delays)", r.took, tc.minTook)
			}
			if _, err := os.Stat(partial); err != nil {
				t.Errorf("no partial execution metadata after a failed run: %v", err)
			}
			logs, _ := filepath.Glob(filepath.Join(logDir, "hearth-run.*.log.*"))
			if strings.Contains(strings.Join(tc.flags, " "), "--log-directory") {
				if len(logs) != 1 {
					t.Fatalf("log files in --log-directory: %v, want one", logs)
				}
				if data, _ := os.ReadFile(logs[0]); strings.Count(string(data), "retrying") != 2 {
					t.Errorf("log file %s:\n%s\nwant 2 retry warnings", logs[0], data)
				}
			} else if len(logs) != 0 {
				t.Errorf("log files without --log-directory: %v", logs)
			}
		})
	}
	t.Run("partial metadata", func(t *testing.T) {
		p := startServe(t, t.TempDir())
		dial(t, p.GRPCAddr).upload(t, a)
		dir := t.TempDir()
		partial := filepath.Join(dir, "partial.bin")
		r := hearthRun(t, dir, p.GRPCAddr, a, "--digest-function=SHA256", "--retry-limit=4", "--retry-delay=1000", "--request-timeout=30",
			"--keepalive-time=0", "--ra-retry-limit=4", "--partial-execution-metadata-file="+partial, "--log-level=trace")
		if r.exitCode != 0 || r.result == nil {
			t.Fatalf("hearth run: exit %d, status %v\n%s", r.exitCode, r.errorStatus, r.output)
		}
		data, err := os.ReadFile(partial)
		if err != nil {
			t.Fatal(err)
		}
		md := &repb.ExecutedActionMetadata{}
		if err := proto.Unmarshal(data, md); err != nil {
			t.Fatal(err)
		}
		full := r.result.GetExecutionMetadata()
		if full.GetQueuedTimestamp() != nil {
			t.Errorf("hearth run's result says it was queued at %v; a runner has no queue", full.GetQueuedTimestamp().AsTime())
		}
		if md.GetExecutionStartTimestamp() == nil || !proto.Equal(md.GetExecutionStartTimestamp(), full.GetExecutionStartTimestamp()) ||
			!proto.Equal(md.GetOutputUploadCompletedTimestamp(), full.GetOutputUploadCompletedTimestamp()) || md.GetWorker() != "" {
			t.Errorf("partial metadata %v, want the stage timestamps of %v", md, full)
		}
	})
}

// TestBuildboxWorkerRefusesUnhonouredFlag: a buildbox-worker connection
// flag hearth run cannot honour (--cas-min-throughput) is refused at the
// worker's --validate-parameters call, naming the flag, so the worker stops
// at start instead of failing every lease.
func TestBuildboxWorkerRefusesUnhonouredFlag(t *testing.T) {
	script, _ := hearthRunWrapper(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, buildboxBin+"buildbox-worker", "--bots-remote=grpc://127.0.0.1:1", "--cas-remote=grpc://127.0.0.1:1",
		"--cas-min-throughput=1K", "--buildbox-run="+script, "refusing-bot").CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "--min-throughput") || !strings.Contains(string(out), "validation") {
		t.Fatalf("buildbox-worker with --cas-min-throughput: %v\n%s", err, out)
	}
}
