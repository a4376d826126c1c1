package workerpolicy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/wsclean"
)

// Linker puts a cached file at a path (filecache.Cache does).
type Linker interface {
	Link(ctx context.Context, d digest.Digest, executable bool, dst string) error
}

// PrepareWorkspace returns the pool's Prepare hook: it links the tool files
// of a new worker into its workspace, where they stay for the worker's life.
func PrepareWorkspace(files Linker) func(ctx context.Context, workspace string, spec *workerpool.Spec) error {
	return func(ctx context.Context, workspace string, spec *workerpool.Spec) error {
		for _, t := range spec.Tools {
			dst := filepath.Join(workspace, filepath.FromSlash(t.Path))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return fmt.Errorf("preparing worker workspace: %w", err)
			}
			if err := files.Link(ctx, t.Digest, t.Executable, dst); err != nil {
				return fmt.Errorf("preparing worker workspace: tool %s: %w", t.Path, err)
			}
		}
		return nil
	}
}

// CleanWorkspace removes everything but plan's tool files (and the
// directories leading to them) from a worker's workspace dir, so nothing of
// one action is visible to the next; the pool's sandbox directories are left
// to the pool. Directories an action made read-only are removed too, and
// those kept are made writable again for the next action's outputs.
func CleanWorkspace(dir string, plan *Plan) error {
	var fresh wsclean.Index
	return cleanWorkspace(&fresh, dir, plan, nil)
}

// CleanWorkspace is the package's CleanWorkspace for the workspaces of w's
// pool: it remembers their tool directories, so that one that provably did
// not change since the last request is checked with an lstat instead of
// being listed again (see package wsclean).
func (w *Workers) CleanWorkspace(dir string, plan *Plan) error {
	return cleanWorkspace(&w.cleaned, dir, plan, nil)
}

// CleanWorkspaceKeeping is CleanWorkspace that also keeps the files at the
// paths in inputs (slash-separated, relative), whatever they are: the caller
// has checked that they are the inputs it staged, untouched, and leaves them
// for the worker's next request.
func (w *Workers) CleanWorkspaceKeeping(dir string, plan *Plan, inputs map[string]bool) error {
	return cleanWorkspace(&w.cleaned, dir, plan, inputs)
}

func cleanWorkspace(x *wsclean.Index, dir string, plan *Plan, inputs map[string]bool) error {
	keepDirs := map[string]bool{}
	parents := func(p string) {
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			if keepDirs[d] {
				return
			}
			keepDirs[d] = true
		}
	}
	for p := range plan.tools {
		parents(p)
	}
	for p := range inputs {
		parents(p)
	}
	_, err := x.Clean(dir, wsclean.Keep{
		File: func(rel string) bool { return plan.tools[rel] || inputs[rel] },
		Dir:  func(rel string) bool { return keepDirs[rel] },
		Skip: workerpool.SandboxRoot,
	}, fsutil.RemoveAll)
	if err != nil {
		return fmt.Errorf("cleaning worker workspace %s: %w", dir, err)
	}
	return nil
}
