package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/hearth-build/hearth/internal/metadatapb"
)

// An executor configured with runner_command spawns `hearth run` for every
// action (buildbox-worker style) instead of running it in-process; the client
// sees the same results, including failures and timeouts.
func TestRunnerCommand(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "serve.json5")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`{
  // The embedded executor hands each action to a separate runner process.
  workers: [{ local: {
    name: "runner-exec",
    work_directory: %q,
    max_inflight_tasks: 2,
    runner_command: [%q, "run"],
  } }],
}`, filepath.Join(dir, "work"), hearthBin)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, filepath.Join(dir, "data"), "--config", config)
	c := dial(t, p.GRPCAddr)
	ctx := t.Context()

	a := actionSpec{
		args:        []string{"/bin/sh", "-c", "cat in.txt > out.txt; echo via-runner; echo $$ > pid.txt"},
		files:       map[string]string{"in.txt": "runner input\n"},
		outputPaths: []string{"out.txt", "pid.txt"},
	}.build(t)
	c.upload(t, a)
	resp, err := c.execute(ctx, a.action.digest)
	if st := outcome(resp, err); st.Code() != codes.OK {
		t.Fatalf("Execute: %v\n%s", st, p.log.tail(30))
	}
	res := resp.GetResult()
	if md := res.GetExecutionMetadata(); md.GetWorker() != "runner-exec" || md.GetExecutionStartTimestamp() == nil {
		t.Fatalf("metadata = %v", md)
	}
	got := map[string]string{}
	for _, f := range res.GetOutputFiles() {
		data, err := c.byteStreamRead(ctx, f.GetDigest())
		if err != nil {
			t.Fatal(err)
		}
		got[f.GetPath()] = string(data)
	}
	if got["out.txt"] != "runner input\n" {
		t.Fatalf("outputs = %q", got)
	}
	stdout, err := c.byteStreamRead(ctx, res.GetStdoutDigest())
	if err != nil || string(stdout) != "via-runner\n" {
		t.Fatalf("stdout = %q, %v", stdout, err)
	}
	// The action did not run inside the server process.
	if strings.TrimSpace(got["pid.txt"]) == fmt.Sprint(p.cmd.Process.Pid) {
		t.Fatal("the action ran in the server's process")
	}

	// A timeout travels back through the runner's error status, with the
	// output produced so far.
	slow := actionSpec{args: []string{"/bin/sh", "-c", "echo partial; sleep 30"}, timeout: 300 * time.Millisecond}.build(t)
	c.upload(t, slow)
	resp, err = c.execute(ctx, slow.action.digest)
	if st := outcome(resp, err); st.Code() != codes.DeadlineExceeded {
		t.Fatalf("timeout through the runner: %v", st)
	}
	if out, err := c.byteStreamRead(ctx, resp.GetResult().GetStdoutDigest()); err != nil || string(out) != "partial\n" {
		t.Fatalf("timed-out stdout = %q, %v", out, err)
	}

	// An output of the wrong type gets the code the in-process builder and
	// the Execution service give it (REAPI: FAILED_PRECONDITION).
	//lint:ignore SA1019 output_files is what names a file, so that a directory is the wrong type.
	wrongCmd := &repb.Command{Arguments: []string{"/bin/mkdir", "-p", "o/sub"}, OutputFiles: []string{"o"}}
	wrong := buildWithCommand(t, wrongCmd)
	c.upload(t, wrong)
	if st := outcome(c.execute(ctx, wrong.action.digest)); st.Code() != codes.FailedPrecondition {
		t.Fatalf("output file that is a directory, through the runner: %v, want FAILED_PRECONDITION", st)
	}
}

// With runner_command and persistent workers (on by default), warm workers in
// the executor serve the actions that opt in, and the runner runs the rest,
// including the one-shot run of an action whose worker failed.
func TestRunnerCommandWithPersistentWorkers(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "serve.json5")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`{
  workers: [{ local: {
    name: "runner-workers",
    work_directory: %q,
    max_inflight_tasks: 2,
    runner_command: [%q, "run"],
  } }],
}`, filepath.Join(dir, "work"), hearthBin)), 0o644); err != nil {
		t.Fatal(err)
	}
	tool := buildScriptedWorker(t, t.TempDir())
	toolData, err := os.ReadFile(tool)
	if err != nil {
		t.Fatal(err)
	}
	p := startServe(t, filepath.Join(dir, "data"), "--config", config)
	c := dial(t, p.GRPCAddr)
	c.uploadLarge(t, newTestBlob(toolData))
	runWorkerCase(t, c, toolData, workerCase{name: "warm", clientKey: "runner-warm"})
	runWorkerCase(t, c, toolData, workerCase{name: "garbage", clientKey: "runner-garbage", garbage: true})

	// The fallback ran in the runner: `hearth run` drops the rusage
	// statistics it was not asked to upload, which an in-process run
	// reports in auxiliary_metadata.
	a := workerAction{
		args:     []string{"tools/testworker", "@args/request.txt"},
		outputs:  []string{"out.txt"},
		files:    map[string]workerInputFile{"tools/testworker": {data: toolData, executable: true}, "args/request.txt": {data: []byte("--garbage\n--out=out.txt\n--content=ok\n")}},
		platform: map[string]string{"persistentWorkerKey": "runner-garbage"},
	}.build(t)
	c.upload(t, a, newTestBlob(toolData))
	resp, err := c.execute(t.Context(), a.action.digest)
	if st := outcome(resp, err); st.Code() != codes.OK {
		t.Fatalf("Execute: %v\n%s", st, p.log.tail(30))
	}
	if info := workerInfoOf(t, resp); !info.GetFellBack() {
		t.Fatalf("worker metadata %v, want a fallback", info)
	}
	for _, aux := range resp.GetResult().GetExecutionMetadata().GetAuxiliaryMetadata() {
		if aux.MessageIs(&metadatapb.ExecutionStatistics{}) {
			t.Fatal("the fallback ran in-process, not through runner_command")
		}
	}
	if got := c.outputFiles(t, resp.GetResult())["out.txt"]; got != "ok" {
		t.Fatalf("out.txt = %q", got)
	}
}
