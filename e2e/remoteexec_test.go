package e2e

import "testing"

// remoteExecutionFlags make Bazel 4.2.3 run every spawn on the executor at
// addr and never fall back to running one locally. --spawn_strategy covers
// every mnemonic; --genrule_strategy is set as well because Bazel 4 still
// lets it override the former for genrules. --remote_retries=0: a server
// that needs Bazel's retries to get through a build on loopback is broken,
// and retries would hide that.
func remoteExecutionFlags(addr string) []string {
	return []string{
		"--remote_executor=grpc://" + addr,
		"--spawn_strategy=remote",
		"--genrule_strategy=remote",
		"--remote_local_fallback=false",
		"--remote_retries=0",
	}
}

// TestBazelRemoteExecution builds and tests the workspace locally, then with
// every spawn executed by `hearth serve`: the outputs must equal the local
// build's, the tests must pass remotely, and after a clean the whole build
// must come from hearth's action cache.
func TestBazelRemoteExecution(t *testing.T) {
	b := newBazel(t)
	// A symlink output made by an action; see symlinks/BUILD for why only
	// this test builds it.
	b.targets = append(b.targets, "//symlinks:dangling")
	local := localBaseline(t, b)
	if got := local["symlinks/dangling"]; got.kind != "symlink" || got.target != "some/unresolved target" {
		t.Errorf("the local build's symlinks/dangling is %v, want a symlink to %q", got, "some/unresolved target")
	}

	p := startServe(t, t.TempDir())
	checkRemoteMatchesLocal(t, b, local, remoteExecutionFlags(p.GRPCAddr)...)
}
