package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
)

const buildboxBin = "/opt/hearth-buildbox/bin/"

// TestBuildboxWorkerExecutes runs the real buildbox-worker (with the real
// buildbox-run-hosttools runner, talking to Hearth's CAS directly) against
// `hearth server`'s Bots service, and executes an action through Hearth.
func TestBuildboxWorkerExecutes(t *testing.T) {
	srv := startServer(t, "server", t.TempDir(), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	bbLog := startBot(t, srv, "e2e-bot")
	c := dial(t, srv.GRPCAddr)
	a := actionSpec{
		args:        []string{"/bin/sh", "-c", "echo from-buildbox > out; echo stdout-line"},
		outputPaths: []string{"out"},
	}.build(t)
	c.upload(t, a)
	// The bot registers asynchronously: until it has, Execute waits in the
	// queue (no executor is connected at all).
	resp, err := c.execute(ctx, a.action.digest)
	if err != nil {
		t.Fatalf("Execute: %v\nbuildbox-worker:\n%s\nserver:\n%s", err, bbLog.String(), srv.log.tail(40))
	}
	if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("response %v\nbuildbox-worker:\n%s", resp, bbLog.String())
	}
	if len(resp.GetResult().GetOutputFiles()) != 1 || resp.GetResult().GetOutputFiles()[0].GetPath() != "out" {
		t.Fatalf("output files %v, want out\nbuildbox-worker:\n%s", resp.GetResult().GetOutputFiles(), bbLog.String())
	}
	got, err := c.byteStreamRead(ctx, resp.GetResult().GetOutputFiles()[0].GetDigest())
	if err != nil || string(got) != "from-buildbox\n" {
		t.Fatalf("out = %q, %v", got, err)
	}
	stdout := string(resp.GetResult().GetStdoutRaw())
	if d := resp.GetResult().GetStdoutDigest(); stdout == "" && d != nil {
		b, err := c.byteStreamRead(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		stdout = string(b)
	}
	if !strings.Contains(stdout, "stdout-line") {
		t.Fatalf("stdout %q\nbuildbox-worker:\n%s", stdout, bbLog.String())
	}
	// The same action on Hearth's own executor (hearth serve, its own
	// store) gives the same result: exit code, outputs, stdout, stderr.
	want, oc := executeOnOwnExecutor(t, ctx, a)
	for _, d := range sameResult(t, ctx, resp.GetResult(), c, want, oc) {
		t.Errorf("buildbox-run-hosttools vs Hearth's executor: %s", d)
	}
	// The Bots service writes the accepted result to the action cache, as
	// Hearth's own executors do; the lookup passes the completeness check
	// Execute's own lookup uses.
	cached, err := repb.NewActionCacheClient(c.conn).GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest})
	if err != nil {
		t.Fatalf("GetActionResult after the bot's completion: %v\nserver:\n%s", err, srv.log.tail(30))
	}
	if len(cached.GetOutputFiles()) != 1 || !proto.Equal(cached.GetOutputFiles()[0].GetDigest(), resp.GetResult().GetOutputFiles()[0].GetDigest()) {
		t.Errorf("cached output %v, want %v", cached.GetOutputFiles(), resp.GetResult().GetOutputFiles())
	}
}

// syncBuffer is a bytes.Buffer safe to read while a child process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startBot starts the real buildbox-worker as bot id against srv, running
// actions with the real buildbox-run-hosttools on Hearth's CAS, in its own
// process group (killed, runner included, when the test ends). It returns
// the bot's output and a function that kills the group at once.
func startBotKillable(t *testing.T, srv *hearthProcess, id string) (*syncBuffer, func()) {
	t.Helper()
	if _, err := os.Stat(buildboxBin + "buildbox-run-hosttools"); err != nil {
		t.Fatalf("%sbuildbox-run-hosttools is missing (run scripts/install-buildbox.sh): %v", buildboxBin, err)
	}
	return startBotRunner(t, srv, id, buildboxBin+"buildbox-run-hosttools", "--runner-arg=--disable-localcas")
}

// startBotRunner starts the real buildbox-worker as bot id against srv with
// --buildbox-run=runner and extra worker flags, as startBotKillable does.
func startBotRunner(t *testing.T, srv *hearthProcess, id, runner string, extra ...string) (*syncBuffer, func()) {
	t.Helper()
	if _, err := os.Stat(buildboxBin + "buildbox-worker"); err != nil {
		t.Fatalf("%sbuildbox-worker is missing (run scripts/install-buildbox.sh): %v", buildboxBin, err)
	}
	log := &syncBuffer{}
	args := append([]string{"--bots-remote=grpc://" + srv.GRPCAddr, "--cas-remote=grpc://" + srv.GRPCAddr,
		"--buildbox-run=" + runner, "--platform", "OSFamily=linux"}, extra...)
	bb := exec.Command(buildboxBin+"buildbox-worker", append(args, id)...)
	bb.Stdout, bb.Stderr = log, log
	bb.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := bb.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill := func() {
		once.Do(func() {
			syscall.Kill(-bb.Process.Pid, syscall.SIGKILL)
			bb.Wait()
		})
	}
	t.Cleanup(kill)
	return log, kill
}

func startBot(t *testing.T, srv *hearthProcess, id string) *syncBuffer {
	t.Helper()
	log, _ := startBotKillable(t, srv, id)
	return log
}

// TestBuildboxWorkerKilledMidLease: a real buildbox-worker killed (with its
// runner) while it runs an action loses its session after --bot-session-ttl;
// the action is re-queued and a second bot runs it to completion.
func TestBuildboxWorkerKilledMidLease(t *testing.T) {
	srv := startServer(t, "server", t.TempDir(), nil, "--bot-session-ttl", "3s")
	marks := filepath.Join(t.TempDir(), "runs")
	bot1Log, killBot1 := startBotKillable(t, srv, "bot-1")
	c := dial(t, srv.GRPCAddr)
	a := actionSpec{
		// Each run appends to marks (outside the action's directory: the
		// hosttools runner does not sandbox), so the test sees both attempts.
		args:        []string{"/bin/sh", "-c", "echo run >> " + marks + "; sleep 4; echo finished > out"},
		outputPaths: []string{"out"},
	}.build(t)
	c.upload(t, a)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	type result struct {
		resp *repb.ExecuteResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.execute(ctx, a.action.digest)
		done <- result{resp, err}
	}()
	for {
		if data, _ := os.ReadFile(marks); len(data) > 0 {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("Execute ended before bot-1 ran the action: %v %v\nbot-1:\n%s", r.resp, r.err, bot1Log.String())
		case <-ctx.Done():
			t.Fatalf("bot-1 never ran the action\nbot-1:\n%s\nserver:\n%s", bot1Log.String(), srv.log.tail(30))
		case <-time.After(50 * time.Millisecond):
		}
	}
	killBot1()
	bot2Log := startBot(t, srv, "bot-2")
	r := <-done
	if r.err != nil || r.resp.GetStatus().GetCode() != 0 || r.resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("Execute after bot-1 died: %v, %v\nbot-2:\n%s\nserver:\n%s", r.resp, r.err, bot2Log.String(), srv.log.tail(40))
	}
	if w := r.resp.GetResult().GetExecutionMetadata().GetWorker(); w != "bot-2" {
		t.Errorf("result from worker %q, want bot-2", w)
	}
	outs := r.resp.GetResult().GetOutputFiles()
	if len(outs) != 1 {
		t.Fatalf("output files %v", outs)
	}
	if got, err := c.byteStreamRead(ctx, outs[0].GetDigest()); err != nil || string(got) != "finished\n" {
		t.Errorf("out = %q, %v", got, err)
	}
	if data, _ := os.ReadFile(marks); strings.Count(string(data), "run") != 2 {
		t.Errorf("the action ran %d times, want 2 (bot-1's attempt, then bot-2's)", strings.Count(string(data), "run"))
	}
}
