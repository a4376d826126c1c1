package builder_test

import (
	"context"
	"fmt"
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

// oneShotIn runs `sh -c script` one-shot with the input root root and
// returns its stdout.
func (r *rig) oneShotIn(root *repb.Digest, script string) string {
	r.t.Helper()
	cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", script}}
	action := &repb.Action{CommandDigest: r.putProto(cmd), InputRootDigest: root, DoNotCache: true}
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
	for _, tc := range []struct {
		name  string
		files int
	}{
		{"small input root, emptied at once", 0},
		// Big enough to be emptied after the result is returned.
		{"big input root, emptied in the background", 70},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, workerpool.Options{})
			in := &repb.Directory{}
			for i := range tc.files {
				in.Files = append(in.Files, &repb.FileNode{Name: fmt.Sprintf("f%03d", i), Digest: r.put([]byte(fmt.Sprint(i)))})
			}
			root := r.putProto(&repb.Directory{Directories: []*repb.DirectoryNode{{Name: "in", Digest: r.putProto(in)}}})
			run := func(script string) string {
				out := r.oneShotIn(root, script)
				builder.SettleActionDirs(r.b) // the next action may reuse the directory
				return out
			}
			const probe = `pwd; ls -A . .. in; stat -c %a . ..`
			first := run(probe)
			dir := strings.SplitN(first, "\n", 2)[0]
			run(`echo x > stray; mkdir -p ro/d; echo y > ro/d/f; chmod 555 ro/d ro; echo z > ../side; chmod 700 ..; chmod 500 .`)
			second := run(probe)
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
			run(`cd .. && mv root old && ln -s ` + target + ` root`)
			if _, err := os.Stat(filepath.Join(target, "keep")); err != nil {
				t.Errorf("cleaning followed the symlinked root into %s: %v", target, err)
			}
			third := run(probe)
			if got := strings.SplitN(third, "\n", 2)[0]; got == dir {
				t.Errorf("a directory whose root was replaced by a symlink was reused")
			}
			if strings.SplitN(third, "\n", 2)[1] != strings.SplitN(first, "\n", 2)[1] {
				t.Errorf("after a replaced root the next action saw\n%s\nwant\n%s", third, first)
			}
			if _, err := os.Lstat(dir); !os.IsNotExist(err) {
				t.Errorf("the directory with the replaced root still exists: %v", err)
			}

			// An action whose directory is still being emptied when the
			// next one starts: that one gets another, clean directory.
			r.oneShotIn(root, `echo x > stray`)
			if next := r.oneShotIn(root, probe); strings.SplitN(next, "\n", 2)[1] != strings.SplitN(first, "\n", 2)[1] {
				t.Errorf("right after a messy action the next one saw\n%s\nwant\n%s", next, first)
			}
			// Close leaves the work directory empty, waiting for the rest.
			if err := r.b.Close(); err != nil {
				t.Fatal(err)
			}
			if names, err := os.ReadDir(r.b.WorkDir); err != nil || len(names) != 0 {
				t.Errorf("after Close the work directory holds %v (%v)", names, err)
			}
		})
	}
}
