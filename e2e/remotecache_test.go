package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestBazelRemoteCache builds the test workspace locally, then through
// hearth as a remote cache, and checks that the second remote build is served
// entirely from the cache with outputs identical to the local build.
func TestBazelRemoteCache(t *testing.T) {
	b := newBazel(t)
	local := localBaseline(t, b)

	p := startServe(t, t.TempDir())
	checkRemoteMatchesLocal(t, b, local, "--remote_cache=grpc://"+p.GRPCAddr)
}

// localBaseline runs the workspace's tests (which builds everything) without
// any remote, checks the outputs the workspace is meant to exercise, and
// returns a snapshot of bazel-bin to compare remote builds against.
func localBaseline(t *testing.T, b *bazelRunner) outputSnapshot {
	t.Helper()
	b.run("test", b.targets...)
	local := snapshotOutputs(t, b.info("bazel-bin"))
	checkExpectedOutputs(t, local)
	return local
}

// checkRemoteMatchesLocal is the procedure every remote mode (cache, or
// executor) must pass, given the Bazel flags that select it:
//  1. from a clean output tree, build and test with the flags (this
//     populates the cache, or executes remotely); outputs must equal local;
//     with an executor, every spawn must have run remotely;
//  2. clean again and repeat: every spawn must now be a remote cache hit,
//     the tests included, and the outputs must still equal local.
func checkRemoteMatchesLocal(t *testing.T, b *bazelRunner, local outputSnapshot, remoteFlags ...string) {
	t.Helper()
	bin := b.info("bazel-bin")

	// With remote execution even the first build's outputs are downloads.
	executesRemotely := slices.ContainsFunc(remoteFlags, func(f string) bool { return strings.HasPrefix(f, "--remote_executor") })

	b.run("clean")
	execLog := filepath.Join(b.root, "first-remote-build.exec.json")
	out := b.run("test", b.testArgs(remoteFlags, execLog)...)
	for _, p := range remoteProblems(out) {
		t.Errorf("first remote build: %s", p)
	}
	compareSnapshots(t, "first remote build", local, snapshotOutputs(t, bin), executesRemotely)
	if executesRemotely {
		spawns := mustReadExecutionLog(t, execLog)
		for _, s := range spawns {
			// A cache hit here would mean the fresh server answered
			// from a cache it cannot have, or Bazel ran something twice.
			if s.Runner != "remote" || !s.Remotable || s.RemoteCacheHit {
				t.Errorf("first remote build: not executed remotely: %s", s)
			}
			if s.Status != "" || s.ExitCode != 0 {
				t.Errorf("first remote build: failed remotely (status %q, exit code %d): %s", s.Status, s.ExitCode, s)
			}
		}
		checkMnemonics(t, "first remote build", spawns)
		t.Logf("first remote build: %d spawns, all executed remotely", len(spawns))
	}

	b.run("clean")
	execLog = filepath.Join(b.root, "second-remote-build.exec.json")
	out = b.run("test", b.testArgs(remoteFlags, execLog)...)
	for _, p := range remoteProblems(out) {
		t.Errorf("second remote build: %s", p)
	}
	compareSnapshots(t, "second remote build", local, snapshotOutputs(t, bin), true)
	for _, line := range testResultLines(out) {
		if !strings.Contains(line, "(cached) PASSED") {
			t.Errorf("the second remote build did not report a test result as cached: %s", line)
		}
	}
	spawns := mustReadExecutionLog(t, execLog)
	misses := 0
	for _, s := range spawns {
		if !s.RemoteCacheHit {
			misses++
			t.Errorf("not a remote cache hit: %s", s)
		}
	}
	checkMnemonics(t, "second remote build", spawns)
	t.Logf("second remote build: %d spawns, %d remote cache misses", len(spawns), misses)
}

// testArgs are the arguments of a `bazel test` of b.targets with flags,
// writing the execution log to execLog.
func (b *bazelRunner) testArgs(flags []string, execLog string) []string {
	args := append(slices.Clone(flags), "--execution_log_json_file="+execLog)
	return append(args, b.targets...)
}

// checkMnemonics fails the test unless spawns include every kind of action
// the workspace exists to exercise: genrules, C++ compile and link, the
// tree artifact rule and the tests.
func checkMnemonics(t *testing.T, what string, spawns []spawnRecord) {
	t.Helper()
	mnemonics := map[string]bool{}
	for _, s := range spawns {
		mnemonics[s.Mnemonic] = true
	}
	for _, m := range []string{"Genrule", "CppCompile", "CppLink", "FileTree", "TestRunner"} {
		if !mnemonics[m] {
			t.Errorf("%s: no %s spawn in the execution log", what, m)
		}
	}
}

// testResultLines returns the lines of Bazel's test summary ("//:t  PASSED
// in 0.1s"); failing unless there is at least one is left to the callers,
// which all pass tests.
func testResultLines(output string) []string {
	var lines []string
	for _, line := range strings.Split(output, "\n") {
		if strings.HasPrefix(line, "//") && (strings.Contains(line, "PASSED") || strings.Contains(line, "FAILED")) {
			lines = append(lines, line)
		}
	}
	return lines
}

func mustReadExecutionLog(t *testing.T, path string) []spawnRecord {
	t.Helper()
	spawns, err := readExecutionLog(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(spawns) == 0 {
		t.Fatalf("execution log %s lists no spawn", path)
	}
	return spawns
}

// outputEntry describes one path under bazel-bin.
type outputEntry struct {
	kind   string // "file", "dir" or "symlink"
	exec   bool   // owner-executable (files only)
	size   int64
	sha256 string // files only
	target string // symlinks only
}

func (e outputEntry) String() string {
	switch e.kind {
	case "file":
		return fmt.Sprintf("file size=%d exec=%v sha256=%.12s", e.size, e.exec, e.sha256)
	case "symlink":
		return "symlink -> " + e.target
	}
	return e.kind
}

// outputSnapshot maps paths relative to bazel-bin to what is there.
type outputSnapshot map[string]outputEntry

// snapshotOutputs records every file, directory and symlink under root
// without following symlinks. Runfiles trees are symlinks into the output
// base, which the runner keeps the same across builds, so their targets are
// comparable too.
func snapshotOutputs(t *testing.T, root string) outputSnapshot {
	t.Helper()
	snap := outputSnapshot{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			snap[rel] = outputEntry{kind: "symlink", target: target}
		case d.IsDir():
			snap[rel] = outputEntry{kind: "dir"}
		case d.Type().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			snap[rel] = outputEntry{kind: "file", exec: info.Mode()&0o100 != 0, size: info.Size(), sha256: hex.EncodeToString(sum[:])}
		default:
			snap[rel] = outputEntry{kind: info.Mode().Type().String()}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading outputs under %s: %v", root, err)
	}
	return snap
}

// bazelDropsOnDownload are local outputs that Bazel 4 itself does not
// recreate when it downloads an action's outputs from any cache: empty
// directories inside a tree artifact (bazelbuild/bazel#15789, also with
// --disk_cache). Only their absence is tolerated, and only after a download.
var bazelDropsOnDownload = map[string]bool{"tree/emptydir": true}

// compareSnapshots fails the test for every path that differs. downloaded
// says the outputs came from the cache rather than from local actions.
func compareSnapshots(t *testing.T, what string, want, got outputSnapshot, downloaded bool) {
	t.Helper()
	var diffs []string
	for path, w := range want {
		g, ok := got[path]
		switch {
		case !ok && downloaded && bazelDropsOnDownload[path]:
			t.Logf("%s: %q is missing, as Bazel 4 drops empty directories of downloaded tree artifacts", what, path)
		case !ok:
			diffs = append(diffs, fmt.Sprintf("missing %q (local: %v)", path, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%q differs: local %v, %s %v", path, w, what, g))
		}
	}
	for path, g := range got {
		if _, ok := want[path]; !ok {
			diffs = append(diffs, fmt.Sprintf("extra %q: %v", path, g))
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s: %d of %d outputs differ from the local build:\n  %s", what, len(diffs), len(want), strings.Join(diffs, "\n  "))
	}
}

// checkExpectedOutputs checks that the local build produced the outputs the
// workspace exists to exercise, so a comparison against it means something.
func checkExpectedOutputs(t *testing.T, snap outputSnapshot) {
	t.Helper()
	// Bazel 4 makes every output it creates or downloads 0555, so exec is
	// only checked where it must be set.
	want := []struct {
		path    string
		kind    string
		exec    bool
		minSize int64
	}{
		{path: "multi/a.txt", kind: "file"},
		{path: "multi/b.txt", kind: "file"},
		{path: "multi/sub/c.txt", kind: "file"},
		{path: "empty.out", kind: "file"},
		{path: "big.txt", kind: "file", minSize: 4 << 20},
		{path: "tree", kind: "dir"},
		{path: "tree/nested/deeper/leaf.txt", kind: "file"},
		{path: "tree/empty.txt", kind: "file"},
		{path: "tree/emptydir", kind: "dir"},
		{path: "tree/ünïcödé.txt", kind: "file"},
		{path: "tree/name with space.txt", kind: "file"},
		{path: "tree/run.sh", kind: "file", exec: true},
		{path: "tree/link_to_top.txt", kind: "symlink"},
		{path: "tree/nested/deeper/up_link.txt", kind: "symlink"},
		{path: "résumé.txt", kind: "file"},
		{path: "out with space.txt", kind: "file"},
		{path: "tools/greet.sh", kind: "file", exec: true},
		{path: "tool_use.txt", kind: "file"},
		{path: "hello", kind: "file", exec: true},
		{path: "greet_test", kind: "file", exec: true},
	}
	for _, w := range want {
		got, ok := snap[w.path]
		switch {
		case !ok:
			t.Errorf("the local build has no %q", w.path)
		case got.kind != w.kind || w.exec && !got.exec:
			t.Errorf("%q: got %v, want a %s with exec=%v", w.path, got, w.kind, w.exec)
		case got.size < w.minSize:
			t.Errorf("%q: %d bytes, want at least %d", w.path, got.size, w.minSize)
		}
	}
	for path, target := range map[string]string{
		"tree/link_to_top.txt":           "top.txt",
		"tree/nested/deeper/up_link.txt": "../../top.txt",
	} {
		if got := snap[path]; got.kind == "symlink" && got.target != target {
			t.Errorf("%q: %v, want a symlink to %q", path, got, target)
		}
	}
	if got := snap["empty.out"]; got.size != 0 {
		t.Errorf("empty.out: %v, want an empty file", got)
	}
}
