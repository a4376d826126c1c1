package builder

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
)

// A singleplex worker's consecutive requests mostly share their inputs (a
// compiler's sources and libraries), so after a request its inputs stay
// staged, and the next request stages only the difference: inputs it lacks
// are removed, new or changed ones linked, identical ones left alone.
// Outputs and anything else the worker made are still removed after every
// request (CleanWorkspaceKeeping keeps only the kept inputs' paths).
//
// A kept input is a hardlink of the file cache: the cache evicting its entry
// only unlinks the cache's name, so the workspace's link keeps the inode and
// its bytes (the disk it holds is bounded by one request's inputs per
// worker, as it is while a request runs). Its stat (inode, mode, size,
// mtime) is recorded when it passes the tamper check after the response and
// checked again before the next request reuses it, so an input the worker
// removed, replaced or chmodded meanwhile is staged afresh, and one it wrote
// through is handled as a damaged input (tamper.go).

// diffStaging turns the keeping of inputs on; off only in the benchmark
// that compares with staging everything.
var diffStaging = true

// keptInput is an input left staged in a worker's workspace.
type keptInput struct {
	digest     digest.Digest
	executable bool
	stat       inputStat
}

// keptInputs is the memo of a worker's workspace (workerpool.Lease.Memo):
// the inputs left staged, by slash-separated path.
type keptInputs map[string]keptInput

// reconcile prepares dir, which holds kept, for tree: it removes the kept
// inputs that tree lacks or has with other contents (and the directories
// that held only them), and returns the paths of tree's files already in
// place, which staging skips. A kept input written through since it was
// recorded (same inode, other stat) is returned in damaged, and nothing is
// removed. Nothing outside dir is touched: removals go through an os.Root,
// so a symlink the worker planted is not followed out.
func reconcile(dir string, tree *inputtree.Tree, kept keptInputs, isTool func(string) bool) (reused map[string]bool, damaged []inputtree.File, err error) {
	if len(kept) == 0 {
		return nil, nil, nil
	}
	reused = make(map[string]bool, len(kept))
	for i := range tree.Files {
		f := &tree.Files[i]
		k, ok := kept[f.Path]
		if !ok || isTool(f.Path) || k.digest != f.Digest || k.executable != f.Executable {
			continue
		}
		if fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(f.Path))); err == nil && statOf(fi) == k.stat {
			reused[f.Path] = true
		}
	}
	var stale []string
	for p, k := range kept {
		if reused[p] {
			continue
		}
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(p)))
		if err == nil {
			if now := statOf(fi); now.ino == k.stat.ino && now != k.stat {
				damaged = append(damaged, inputtree.File{Path: p, Digest: k.digest, Executable: k.executable})
				continue
			}
		}
		stale = append(stale, p)
	}
	if len(damaged) > 0 {
		return nil, damaged, nil
	}
	if len(stale) == 0 {
		return reused, nil, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, nil, err
	}
	defer root.Close()
	treeDirs := make(map[string]bool, len(tree.Dirs))
	for i := range tree.Dirs {
		treeDirs[tree.Dirs[i].Path] = true
	}
	for _, p := range stale {
		if err := root.RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		// Directories of the previous tree that this one lacks go too
		// (one that still holds something is not empty and stays).
		for d := path.Dir(p); d != "." && !treeDirs[d]; d = path.Dir(d) {
			if root.Remove(d) != nil {
				break
			}
		}
	}
	return reused, nil, nil
}

// checkInputs is damagedInputs (tamper.go) and, when keep is set, the
// inputs whose stat is still the one recorded after staging, which a next
// request may reuse, in one pass (one lstat per input). One replaced or
// removed is neither.
func checkInputs(dir string, t *inputtree.Tree, snap map[int]inputStat, keep bool) ([]inputtree.File, keptInputs) {
	var damaged []inputtree.File
	var kept keptInputs
	if keep {
		kept = make(keptInputs, len(snap))
	}
	for i, before := range snap {
		f := &t.Files[i]
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			continue // removed: the cache's own link is intact, nothing to keep
		}
		switch now := statOf(fi); {
		case now == before:
			if keep && fi.Mode().IsRegular() {
				kept[f.Path] = keptInput{digest: f.Digest, executable: f.Executable, stat: before}
			}
		case now.ino == before.ino:
			damaged = append(damaged, *f)
		}
		// Another inode: replaced, the cache's is untouched; not kept.
	}
	return damaged, kept
}
