package builder

import (
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hearth-build/hearth/internal/inputtree"
)

// Inputs are hardlinks of the executor's file cache (and, under `hearth
// serve`, of the CAS itself), read-only. A process running as the executor's
// user can still chmod one and write through it, which would hand the
// damaged bytes to every later action. A persistent worker lives long and
// runs arbitrary tool code, so after each request its inputs are checked;
// damaged ones are dropped from the cache (and the CAS), and the worker's
// key is quarantined.

// inputStat is what a write or chmod through a hardlink changes. The inode's
// ctime is not used: it also changes when another action links the same
// cache file.
type inputStat struct {
	ino   uint64
	mode  os.FileMode
	size  int64
	mtime time.Time
}

func statOf(fi os.FileInfo) inputStat {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	return inputStat{ino, fi.Mode(), fi.Size(), fi.ModTime()}
}

// snapshotInputs records the staged files of t under dir (those skip leaves
// out are not there).
func snapshotInputs(dir string, t *inputtree.Tree, skip func(*inputtree.File) bool) map[int]inputStat {
	snap := make(map[int]inputStat, len(t.Files))
	for i := range t.Files {
		f := &t.Files[i]
		if skip(f) {
			continue
		}
		if fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(f.Path))); err == nil {
			snap[i] = statOf(fi)
		}
	}
	return snap
}

// damagedInputs returns the files of snap whose inode changed since.
func damagedInputs(dir string, t *inputtree.Tree, snap map[int]inputStat) []inputtree.File {
	var damaged []inputtree.File
	for i, before := range snap {
		f := t.Files[i]
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			continue // removed: the cache's own link is intact
		}
		now := statOf(fi)
		if now.ino != before.ino {
			continue // replaced by another file: the cache's inode is untouched
		}
		if now != before {
			damaged = append(damaged, f)
		}
	}
	return damaged
}
