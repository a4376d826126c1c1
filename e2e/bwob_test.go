package e2e

import (
	"path/filepath"
	"slices"
	"testing"
)

// TestBazelBuildWithoutTheBytes: with --remote_download_minimal Bazel keeps
// every intermediate output on the server and passes digests from one
// action to the next; the build and the tests must pass with every spawn
// executed remotely. A normal build afterwards takes those actions from the
// action cache and downloads outputs equal to the local build's. (Bazel 4.2.3
// refuses symlinks in outputs with --remote_download_minimal, so that build
// leaves out //:tree, whose tree artifact holds one, and //:smoke_test,
// which depends on it.)
func TestBazelBuildWithoutTheBytes(t *testing.T) {
	b := newBazel(t)
	local := localBaseline(t, b)
	p := startServe(t, t.TempDir())
	flags := remoteExecutionFlags(p.GRPCAddr)

	b.run("clean")
	execLog := filepath.Join(b.root, "minimal.exec.json")
	minimal := append(slices.Clone(flags), "--remote_download_minimal", "--execution_log_json_file="+execLog,
		"//:greet_test", "//:hello", "//:multi", "//:empty", "//:big", "//:accents", "//:spaces", "//:tool_use")
	out := b.run("test", minimal...)
	for _, problem := range remoteProblems(out) {
		t.Errorf("build without the bytes: %s", problem)
	}
	spawns := mustReadExecutionLog(t, execLog)
	for _, s := range spawns {
		if s.Runner != "remote" || s.Status != "" || s.ExitCode != 0 {
			t.Errorf("build without the bytes: not executed remotely, or failed: %s", s)
		}
	}
	mnemonics := map[string]bool{}
	for _, s := range spawns {
		mnemonics[s.Mnemonic] = true
	}
	for _, m := range []string{"Genrule", "CppCompile", "CppLink", "TestRunner"} {
		if !mnemonics[m] {
			t.Errorf("build without the bytes: no %s spawn (got %v)", m, mnemonics)
		}
	}

	b.run("clean")
	execLog = filepath.Join(b.root, "after.exec.json")
	out = b.run("test", b.testArgs(flags, execLog)...)
	for _, problem := range remoteProblems(out) {
		t.Errorf("build after: %s", problem)
	}
	hits := 0
	for _, s := range mustReadExecutionLog(t, execLog) {
		if s.RemoteCacheHit {
			hits++
		}
	}
	if hits < len(spawns) {
		t.Errorf("build after: %d remote cache hits, want at least the %d spawns of the build without the bytes", hits, len(spawns))
	}
	compareSnapshots(t, "build after", local, snapshotOutputs(t, b.info("bazel-bin")), true)
}
