package e2e

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestBazelRemoteInstanceName: Bazel with --remote_instance_name executes
// through hearth serve under that instance, and the action cache is kept per
// instance name: the same build under another name executes again, while
// the first name's results stay cached.
func TestBazelRemoteInstanceName(t *testing.T) {
	b := newBazel(t)
	local := localBaseline(t, b)
	p := startServe(t, t.TempDir())
	build := func(instance string) (hits, spawns int) {
		t.Helper()
		b.run("clean")
		execLog := filepath.Join(b.root, strings.ReplaceAll(instance, "/", "_")+".exec.json")
		flags := append(slices.Clone(remoteExecutionFlags(p.GRPCAddr)), "--remote_instance_name="+instance)
		out := b.run("test", b.testArgs(flags, execLog)...)
		for _, problem := range remoteProblems(out) {
			t.Errorf("instance %s: %s", instance, problem)
		}
		compareSnapshots(t, "instance "+instance, local, snapshotOutputs(t, b.info("bazel-bin")), true)
		for _, s := range mustReadExecutionLog(t, execLog) {
			spawns++
			if s.RemoteCacheHit {
				hits++
			} else if s.Runner != "remote" {
				t.Errorf("instance %s: not executed remotely: %s", instance, s)
			}
		}
		return hits, spawns
	}
	if hits, n := build("team/a"); hits != 0 {
		t.Errorf("first build under team/a: %d of %d spawns were cache hits, want none", hits, n)
	}
	if hits, n := build("team/b"); hits != 0 {
		t.Errorf("the same build under team/b: %d of %d spawns were cache hits; the action cache must be per instance", hits, n)
	}
	if hits, n := build("team/a"); hits != n {
		t.Errorf("team/a again: %d of %d spawns were cache hits, want all", hits, n)
	}
}
