package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
)

// TestLocalCASHearthRun starts `hearth server` and `hearth worker
// --localcas-socket`, and runs one action twice: through Execute (the
// worker's own executor) and through `hearth run --remote=unix:SOCKET`,
// which stages with StageTree and captures with CaptureFiles/CaptureTree on
// the worker's socket. The two ActionResults must describe the same outputs.
func TestLocalCASHearthRun(t *testing.T) {
	srv := startServer(t, "server", t.TempDir(), nil)
	sockDir, err := os.MkdirTemp("", "lc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s")
	startWorker(t, srv, "lc-worker", 2, "--localcas-socket", sock)
	c := dial(t, srv.GRPCAddr)

	a := actionSpec{
		args: []string{"/bin/sh", "-c", `
echo "to stdout"; echo "to stderr" >&2
mkdir -p out/dir/sub && cat in/input.txt > out/result.txt
printf '#!/bin/sh\n' > out/dir/tool.sh && chmod 755 out/dir/tool.sh
echo deep > out/dir/sub/f; ln -s result.txt out/link; exit 7`},
		files:       map[string]string{"in/input.txt": "input line\n", "in/lib/x": "x"},
		symlinks:    map[string]string{"in/alias": "input.txt"},
		outputPaths: []string{"out/absent", "out/dir", "out/link", "out/result.txt"},
	}.build(t)
	c.upload(t, a)
	resp, err := c.execute(t.Context(), a.action.digest)
	if err != nil || resp.GetStatus().GetCode() != 0 {
		t.Fatalf("Execute: %v, %v", err, resp.GetStatus())
	}
	want := resp.GetResult()

	r := hearthRun(t, t.TempDir(), "", a, "--remote=unix:"+sock, "--workspace-path="+t.TempDir())
	if r.errorStatus != nil || r.result == nil {
		t.Fatalf("hearth run --remote=unix: exit %d, error status %v\n%s", r.exitCode, r.errorStatus, r.output)
	}
	got := r.result
	if got.GetExitCode() != 7 || want.GetExitCode() != 7 {
		t.Errorf("exit codes: hearth run %d, executor %d, want 7", got.GetExitCode(), want.GetExitCode())
	}
	for _, f := range []struct {
		name string
		g, w any
	}{
		{"output_files", &repb.ActionResult{OutputFiles: got.OutputFiles}, &repb.ActionResult{OutputFiles: want.OutputFiles}},
		{"output_directories", &repb.ActionResult{OutputDirectories: got.OutputDirectories}, &repb.ActionResult{OutputDirectories: want.OutputDirectories}},
		{"output_symlinks", &repb.ActionResult{OutputSymlinks: got.OutputSymlinks}, &repb.ActionResult{OutputSymlinks: want.OutputSymlinks}},
		{"stdout/stderr", &repb.ActionResult{StdoutDigest: got.StdoutDigest, StderrDigest: got.StderrDigest}, &repb.ActionResult{StdoutDigest: want.StdoutDigest, StderrDigest: want.StderrDigest}},
	} {
		if !proto.Equal(f.g.(proto.Message), f.w.(proto.Message)) {
			t.Errorf("%s differ:\nhearth run (LocalCAS): %v\nexecutor:              %v", f.name, f.g, f.w)
		}
	}
	if len(want.OutputFiles) != 1 || len(want.OutputDirectories) != 1 || len(want.OutputSymlinks) != 1 {
		t.Errorf("the executor's result is not the one the action should give: %v", want)
	}
	out, err := c.byteStreamRead(t.Context(), got.GetStdoutDigest())
	if err != nil || string(out) != "to stdout\n" {
		t.Errorf("stdout on the server: %q, %v", out, err)
	}
	if len(got.OutputFiles) == 1 {
		data, err := c.byteStreamRead(t.Context(), got.OutputFiles[0].GetDigest())
		if err != nil || string(data) != "input line\n" {
			t.Errorf("out/result.txt on the server: %q, %v", data, err)
		}
	}
}

// TestLocalCASBuildbox runs the real buildbox-run-hosttools (installed by
// scripts/install-buildbox.sh, which scripts/install-test-deps.sh runs)
// against `hearth worker --localcas-socket`, and checks its ActionResult
// against the blobs on the server.
func TestLocalCASBuildbox(t *testing.T) {
	const runner = "/opt/hearth-buildbox/bin/buildbox-run-hosttools"
	if _, err := os.Stat(runner); err != nil {
		t.Fatalf("%s is missing: run scripts/install-buildbox.sh (scripts/install-test-deps.sh does): %v", runner, err)
	}
	srv := startServer(t, "server", t.TempDir(), nil)
	sockDir, err := os.MkdirTemp("", "lc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s")
	startWorker(t, srv, "bb-worker", 1, "--localcas-socket", sock)
	c := dial(t, srv.GRPCAddr)
	a := actionSpec{
		args:        []string{"/bin/sh", "-c", `echo hello; mkdir -p out; tr a-z A-Z < in.txt > out/up.txt; exit 5`},
		files:       map[string]string{"in.txt": "shout\n"},
		outputPaths: []string{"out/up.txt"},
	}.build(t)
	c.upload(t, a)
	dir := t.TempDir()
	actionFile, resultFile := filepath.Join(dir, "action"), filepath.Join(dir, "result")
	if err := os.WriteFile(actionFile, a.action.data, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), runner, "--remote=unix:"+sock, "--action="+actionFile, "--action-result="+resultFile, "--workspace-path="+t.TempDir())
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("buildbox-run-hosttools: %v\n%s", err, stderr.String())
	}
	data, err := os.ReadFile(resultFile)
	if err != nil {
		t.Fatalf("no ActionResult: %v\n%s", err, stderr.String())
	}
	res := &repb.ActionResult{}
	if err := proto.Unmarshal(data, res); err != nil {
		t.Fatal(err)
	}
	if res.GetExitCode() != 5 {
		t.Errorf("exit code %d, want 5\n%s", res.GetExitCode(), stderr.String())
	}
	if out, err := c.byteStreamRead(t.Context(), res.GetStdoutDigest()); err != nil || string(out) != "hello\n" {
		t.Errorf("stdout on the server: %q, %v\n%s", out, err, stderr.String())
	}
	if len(res.GetOutputFiles()) != 1 || res.GetOutputFiles()[0].GetPath() != "out/up.txt" {
		t.Fatalf("output files %v\n%s", res.GetOutputFiles(), stderr.String())
	}
	if up, err := c.byteStreamRead(t.Context(), res.GetOutputFiles()[0].GetDigest()); err != nil || string(up) != "SHOUT\n" {
		t.Errorf("out/up.txt on the server: %q, %v", up, err)
	}
}

// TestLocalCASServe: `hearth serve`'s embedded executor honours
// localcas_socket from its --config, and `hearth run` works through it.
func TestLocalCASServe(t *testing.T) {
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "lc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s")
	config := filepath.Join(dir, "serve.json5")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`{ workers: [{ local: { name: "lc-embedded", work_directory: %q, localcas_socket: %q } }] }`,
		filepath.Join(dir, "work"), sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, filepath.Join(dir, "data"), "--config", config)
	c := dial(t, p.GRPCAddr)
	a := actionSpec{
		args:        []string{"/bin/sh", "-c", "cat in.txt in.txt > out.txt"},
		files:       map[string]string{"in.txt": "twice\n"},
		outputPaths: []string{"out.txt"},
	}.build(t)
	c.upload(t, a)
	r := hearthRun(t, t.TempDir(), "", a, "--remote=unix:"+sock)
	if r.errorStatus != nil || r.result == nil || r.result.GetExitCode() != 0 || len(r.result.GetOutputFiles()) != 1 {
		t.Fatalf("hearth run through serve's LocalCAS: exit %d, status %v, result %v\n%s", r.exitCode, r.errorStatus, r.result, r.output)
	}
	data, err := c.byteStreamRead(t.Context(), r.result.GetOutputFiles()[0].GetDigest())
	if err != nil || string(data) != "twice\ntwice\n" {
		t.Errorf("out.txt on the server: %q, %v", data, err)
	}
}

// A --localcas-socket too long for a Unix socket is refused at start, naming
// the flag, rather than failing later or being cut short.
func TestLocalCASSocketTooLong(t *testing.T) {
	long := "/tmp/" + strings.Repeat("x", 103)
	out, err := exec.CommandContext(t.Context(), hearthBin, "worker", "--config", "/nonexistent.json5", "--localcas-socket", long).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--localcas-socket") || !strings.Contains(string(out), "107") {
		t.Fatalf("hearth worker with a %d-byte socket path: %v\n%s", len(long), err, out)
	}
}
