package builder_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// oneShot runs `sh -c script` one-shot with an empty input root and
// returns its stdout.
func (r *rig) oneShot(script string) string {
	r.t.Helper()
	cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", script}}
	action := &repb.Action{CommandDigest: r.putProto(cmd), InputRootDigest: r.putProto(&repb.Directory{}), DoNotCache: true}
	ad, _ := digest.FromProto(digest.SHA256, r.putProto(action))
	resp := r.b.Build(context.Background(), builder.Task{ActionDigest: ad, Action: action, Command: cmd, QueuedAt: time.Now()})
	if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
		r.t.Fatalf("%q: status %v, exit %d, stderr %q", script, resp.GetStatus(), resp.GetResult().GetExitCode(), r.stderr(resp))
	}
	out := resp.GetResult().GetStdoutRaw()
	if d := resp.GetResult().GetStdoutDigest(); len(out) == 0 && d != nil && d.GetSizeBytes() > 0 {
		dd, _ := digest.FromProto(digest.SHA256, d)
		var err error
		if out, err = cas.Get(context.Background(), r.store, dd); err != nil {
			r.t.Fatal(err)
		}
	}
	return string(out)
}

// A reused one-shot action directory must look like a fresh one: whatever
// the previous action left (files, read-only trees, a file beside the input
// root, changed modes) is gone. A root replaced by a symlink is not
// followed: the directory is removed, not reused, and the target survives.
func TestOneShotActionDirectoryIsCleanWhenReused(t *testing.T) {
	r := newRig(t, workerpool.Options{})
	const probe = `pwd; ls -A . ..; stat -c %a . ..`
	first := r.oneShot(probe)
	dir := strings.SplitN(first, "\n", 2)[0]
	r.oneShot(`echo x > stray; mkdir -p ro/d; echo y > ro/d/f; chmod 555 ro/d ro; echo z > ../side; chmod 700 ..; chmod 500 .`)
	second := r.oneShot(probe)
	if second != first {
		t.Errorf("after a messy action the next one saw\n%s\nwant, as in a fresh directory,\n%s", second, first)
	}
	if got := strings.SplitN(second, "\n", 2)[0]; got != dir {
		t.Fatalf("action directory not reused (%s, then %s): the test checks nothing", dir, got)
	}

	target := t.TempDir()
	if err := os.WriteFile(filepath.Join(target, "keep"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.oneShot(`cd .. && mv root old && ln -s ` + target + ` root`)
	if _, err := os.Stat(filepath.Join(target, "keep")); err != nil {
		t.Errorf("cleaning followed the symlinked root into %s: %v", target, err)
	}
	third := r.oneShot(probe)
	if got := strings.SplitN(third, "\n", 2)[0]; got == dir {
		t.Errorf("a directory whose root was replaced by a symlink was reused")
	}
	if strings.SplitN(third, "\n", 2)[1] != strings.SplitN(first, "\n", 2)[1] {
		t.Errorf("after a replaced root the next action saw\n%s\nwant\n%s", third, first)
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Errorf("the directory with the replaced root still exists: %v", err)
	}
}
