package workerpolicy

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/workerpool"
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
	keepDirs := map[string]bool{}
	for p := range plan.tools {
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			keepDirs[d] = true
		}
	}
	var remove []string
	walkErr := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return err
			}
			remove = append(remove, p) // unreadable: it goes
			return nil
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == workerpool.SandboxRoot {
			return filepath.SkipDir
		}
		if d.IsDir() {
			if keepDirs[rel] {
				return os.Chmod(p, 0o755)
			}
			remove = append(remove, p)
			return filepath.SkipDir
		}
		if !plan.tools[rel] {
			remove = append(remove, p)
		}
		return nil
	})
	if walkErr != nil {
		return fmt.Errorf("cleaning worker workspace %s: %w", dir, walkErr)
	}
	for _, p := range remove {
		if err := fsutil.RemoveAll(p); err != nil {
			return fmt.Errorf("cleaning worker workspace: %w", err)
		}
	}
	return nil
}
