package localcas

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"
)

// buildboxRun is the real buildbox runner that scripts/install-buildbox.sh
// installs (scripts/install-test-deps.sh runs it).
const buildboxRun = "/opt/hearth-buildbox/bin/buildbox-run-hosttools"

// TestBuildboxRunHosttools runs the real buildbox-run-hosttools against the
// LocalCAS socket: it stages the input root with StageTree, runs the
// command, captures the outputs with CaptureFiles/CaptureTree and writes the
// ActionResult, whose blobs must then be on the storage server.
func TestBuildboxRunHosttools(t *testing.T) {
	if _, err := os.Stat(buildboxRun); err != nil {
		t.Fatalf("%s is missing (run scripts/install-buildbox.sh, which scripts/install-test-deps.sh runs): %v", buildboxRun, err)
	}
	e := start(t)
	input := e.putProto(t, &repb.Directory{Files: []*repb.FileNode{{Name: "in.txt", Digest: e.put(t, []byte("input bytes\n"))}}})
	cmd := e.putProto(t, &repb.Command{
		Arguments:   []string{"/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; cp in.txt out.txt; mkdir -p d/e; printf deep > d/e/f; printf '#!/bin/sh\\n' > d/x; chmod +x d/x; exit 3"},
		OutputPaths: []string{"out.txt", "d"},
	})
	action, err := proto.Marshal(&repb.Action{CommandDigest: cmd, InputRootDigest: input})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	actionPath, resultPath := filepath.Join(dir, "action"), filepath.Join(dir, "result")
	if err := os.WriteFile(actionPath, action, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	run := exec.Command(buildboxRun, "--remote=unix:"+e.sock, "--action="+actionPath, "--action-result="+resultPath, "--workspace-path="+t.TempDir())
	run.Stdout, run.Stderr = &stderr, &stderr
	if err := run.Run(); err != nil {
		t.Fatalf("buildbox-run-hosttools: %v\n%s", err, stderr.String())
	}
	t.Logf("buildbox-run-hosttools:\n%s", stderr.String())
	data, err := os.ReadFile(resultPath)
	if err != nil {
		t.Fatalf("no ActionResult: %v\n%s", err, stderr.String())
	}
	res := &repb.ActionResult{}
	if err := proto.Unmarshal(data, res); err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 {
		t.Errorf("exit code %d, want 3\n%s", res.ExitCode, stderr.String())
	}
	if got := string(e.get(t, res.StdoutDigest)); got != "to-stdout\n" {
		t.Errorf("stdout %q", got)
	}
	if got := string(e.get(t, res.StderrDigest)); got != "to-stderr\n" {
		t.Errorf("stderr %q", got)
	}
	if len(res.OutputFiles) != 1 || res.OutputFiles[0].Path != "out.txt" || string(e.get(t, res.OutputFiles[0].Digest)) != "input bytes\n" {
		t.Fatalf("output files %v\n%s", res.OutputFiles, stderr.String())
	}
	if len(res.OutputDirectories) != 1 || res.OutputDirectories[0].Path != "d" {
		t.Fatalf("output directories %v\n%s", res.OutputDirectories, stderr.String())
	}
	tree := &repb.Tree{}
	if err := proto.Unmarshal(e.get(t, res.OutputDirectories[0].TreeDigest), tree); err != nil {
		t.Fatal(err)
	}
	if r := tree.Root; len(r.Files) != 1 || r.Files[0].Name != "x" || !r.Files[0].IsExecutable || len(r.Directories) != 1 {
		t.Fatalf("tree root %v", r)
	}
	if len(tree.Children) != 1 || string(e.get(t, tree.Children[0].Files[0].Digest)) != "deep" {
		t.Fatalf("tree children %v", tree.Children)
	}
}
