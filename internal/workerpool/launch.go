package workerpool

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/sandbox"
)

// persistentWorkerFlag is appended to the startup args, as Bazel does.
const persistentWorkerFlag = "--persistent_worker"

// command describes the process of w for runner.Start: its startup args
// plus --persistent_worker, exactly its environment, its workspace (or
// Spec.WorkDir) as working directory, under bubblewrap when configured.
// runner.Start gives it its own process group, so that one signal reaches
// everything it starts, and SIGKILL if the executor dies.
func (p *Pool) command(w *worker) (runner.StartRequest, error) {
	spec := w.spec
	dir := w.workspace
	if spec.WorkDir != "" {
		dir = spec.WorkDir
	}
	if p.bwrap != "" && spec.WorkDir != "" {
		return runner.StartRequest{}, fmt.Errorf("%w: key %s: a work dir of its own is not available under the bwrap sandbox", ErrStartFailed, w.kp.key)
	}
	args := append(slices.Clone(spec.Argv), persistentWorkerFlag)
	if p.bwrap != "" {
		// Resolved here, with the worker's PATH, because inside the
		// sandbox argv[0] is bwrap's to run.
		exe, err := runner.ResolveExecutable(spec.Argv[0], spec.Env, w.workspace)
		if err != nil {
			return runner.StartRequest{}, fmt.Errorf("%w: key %s: %w", ErrStartFailed, w.kp.key, err)
		}
		if hidden := hiddenInSandbox(exe, w.workspace, p.dir); hidden != "" {
			return runner.StartRequest{}, fmt.Errorf("%w: key %s: %s (resolved to %s) is under %s, which the bwrap sandbox hides; stage it into the workspace",
				ErrStartFailed, w.kp.key, spec.Argv[0], exe, hidden)
		}
		args = sandbox.Args(p.bwrap, p.dir, w.workspace, exe, args[1:])
	}
	return runner.StartRequest{Args: args, Env: spec.Env, Dir: dir}, nil
}

// removeContents empties dir but keeps it (it may be a mount point).
func removeContents(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := fsutil.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// hiddenInSandbox returns the directory that hides exe from a bwrap-sandboxed
// worker (its private /tmp, or the pool directory outside its own
// workspace), or "" when exe is visible.
func hiddenInSandbox(exe, workspace, poolDir string) string {
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	if within(exe, workspace) {
		return ""
	}
	for _, dir := range []string{"/tmp", poolDir} {
		if within(exe, dir) {
			return dir
		}
	}
	return ""
}

func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
