package workerpool

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/sandbox"
)

// persistentWorkerFlag is appended to the startup args, as Bazel does.
const persistentWorkerFlag = "--persistent_worker"

// command builds the exec.Cmd of w: its startup args plus
// --persistent_worker, exactly its environment, its workspace as working
// directory, under bubblewrap when configured. The process leads its own
// process group, so that one signal reaches everything it starts, and gets
// SIGKILL if the executor dies.
func (p *Pool) command(w *worker) (*exec.Cmd, error) {
	spec := w.spec
	exe, err := runner.ResolveExecutable(spec.Argv[0], spec.Env, w.workspace)
	if err != nil {
		return nil, fmt.Errorf("%w: key %s: %w", ErrStartFailed, w.kp.key, err)
	}
	path, args := exe, append(slices.Clone(spec.Argv), persistentWorkerFlag)
	if p.bwrap != "" {
		if hidden := hiddenInSandbox(exe, w.workspace, p.dir); hidden != "" {
			return nil, fmt.Errorf("%w: key %s: %s (resolved to %s) is under %s, which the bwrap sandbox hides; stage it into the workspace",
				ErrStartFailed, w.kp.key, spec.Argv[0], exe, hidden)
		}
		path, args = p.bwrap, sandbox.Args(p.bwrap, p.dir, w.workspace, exe, args[1:])
	}
	return &exec.Cmd{
		Path: path,
		Args: args,
		// Non-nil even when empty: a nil Env would inherit the executor's.
		Env: append(make([]string, 0, len(spec.Env)), spec.Env...),
		Dir: w.workspace,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid: true,
			// Tied to the forking thread; Go retires only threads of
			// locked goroutines, which never start workers.
			Pdeathsig: syscall.SIGKILL,
		},
	}, nil
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
