package e2e

import (
	"bytes"
	"context"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

const buildboxBin = "/opt/hearth-buildbox/bin/"

// TestBuildboxWorkerExecutes runs the real buildbox-worker (with the real
// buildbox-run-hosttools runner, talking to Hearth's CAS directly) against
// `hearth server`'s Bots service, and executes an action through Hearth.
func TestBuildboxWorkerExecutes(t *testing.T) {
	for _, bin := range []string{"buildbox-worker", "buildbox-run-hosttools"} {
		if _, err := os.Stat(buildboxBin + bin); err != nil {
			t.Fatalf("%s%s is missing (run scripts/install-buildbox.sh): %v", buildboxBin, bin, err)
		}
	}
	srv := startServer(t, "server", t.TempDir(), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	var bbLog bytes.Buffer
	bb := exec.Command(buildboxBin+"buildbox-worker",
		"--bots-remote=grpc://"+srv.GRPCAddr, "--cas-remote=grpc://"+srv.GRPCAddr,
		"--buildbox-run="+buildboxBin+"buildbox-run-hosttools", "--runner-arg=--disable-localcas",
		"--platform", "OSFamily=linux", "e2e-bot")
	bb.Stdout, bb.Stderr = &bbLog, &bbLog
	if err := bb.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bb.Process.Kill(); bb.Wait() })

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
