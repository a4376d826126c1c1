// Package wsclean empties a reused workspace (a persistent worker's) of
// everything but the files it keeps, after every request, without listing
// the directories that provably did not change since the last time.
//
// A worker's tool tree can be large (tsc_wrapped's node_modules: some 120
// directories) and it never changes between requests, yet the worker could
// write anywhere in it, so every directory has to be checked. Listing one
// costs open, getdents and close; an lstat is enough to know that it has not
// changed: any entry added, removed or renamed, and any change of its mode or
// owner, sets the directory's ctime to the current time, and nothing a
// process does can set a ctime back. A directory is trusted only once its
// ctime is older than the moment it was recorded by more than the kernel's
// coarse clock granularity, so a change in the same clock tick as the
// recording cannot hide behind an equal timestamp.
package wsclean

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// settle is how much older than its recording a directory's ctime must be
// for the directory to be trusted. The kernel stamps inode times from a
// coarse clock that lags the fine one by at most a tick (1–10 ms).
const settle = 50 * time.Millisecond

// Keep says what stays in a workspace: files by their path relative to the
// root ("a/b.js"), and directories (the parents of kept files).
type Keep struct {
	File func(rel string) bool
	Dir  func(rel string) bool
	// Skip is a directory (relative) that is left alone entirely, e.g. the
	// multiplex sandboxes, which are removed by their own lease.
	Skip string
}

// Index remembers the directories of workspaces seen unchanged. The zero
// value is ready to use; it is safe for concurrent use on different
// workspaces.
type Index struct {
	mu   sync.Mutex
	dirs map[string]dirState // absolute path → state when last listed clean
}

// dirState is a directory as last listed: its identity and times, and the
// subdirectories it held (all kept ones: anything else was removed).
type dirState struct {
	ino, dev     uint64
	mode         uint32
	mtime, ctime unix.Timespec
	subdirs      []string
}

// Stats count what one Clean did.
type Stats struct {
	Listed, Trusted, Removed int
}

// Clean removes everything below root that keep does not keep, making every
// kept directory 0755 again (a worker may have made one read-only). It never
// follows a symlink: one in place of a directory is removed like a file (one
// at a kept file's path stays, as the file would). A kept directory that
// cannot be listed is removed too. remove deletes a path (a whole subtree for
// a directory); its first error, or root's being unreadable, ends Clean with
// that error.
func (x *Index) Clean(root string, keep Keep, remove func(path string) error) (Stats, error) {
	var st Stats
	if _, err := os.ReadDir(root); err != nil {
		return st, err
	}
	err := x.clean(root, "", keep, remove, &st)
	return st, err
}

func (x *Index) clean(abs, rel string, keep Keep, remove func(string) error, st *Stats) error {
	if rel != "" {
		if s, ok := x.trusted(abs); ok {
			st.Trusted++
			for _, name := range s.subdirs {
				if err := x.clean(filepath.Join(abs, name), join(rel, name), keep, remove, st); err != nil {
					return err
				}
			}
			return nil
		}
	}
	st.Listed++
	if rel != "" {
		// A worker may have made it read-only, and its entries could not be
		// removed. (chmod stamps the ctime even when the mode stays, which
		// would keep the directory from ever being trusted: only repair a
		// changed mode.)
		if s, err := lstat(abs); err == nil && s.mode&0o7777 != 0o755 {
			os.Chmod(abs, 0o755)
		}
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		x.forget(abs)
		if rel == "" {
			return err
		}
		st.Removed++
		return remove(abs) // unreadable: it goes
	}
	var subdirs []string
	for _, e := range entries {
		childRel := join(rel, e.Name())
		if childRel == keep.Skip {
			continue
		}
		child := filepath.Join(abs, e.Name())
		if e.IsDir() {
			if keep.Dir(childRel) {
				subdirs = append(subdirs, e.Name())
				continue
			}
		} else if keep.File(childRel) {
			continue
		}
		if err := remove(child); err != nil {
			x.forget(abs)
			return err
		}
		st.Removed++
	}
	if rel != "" {
		x.record(abs, subdirs)
	}
	for _, name := range subdirs {
		if err := x.clean(filepath.Join(abs, name), join(rel, name), keep, remove, st); err != nil {
			return err
		}
	}
	return nil
}

// join is rel/name with slashes, rel "" being the root.
func join(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

// trusted returns the recorded state of abs if the directory is still
// exactly that.
func (x *Index) trusted(abs string) (dirState, bool) {
	x.mu.Lock()
	s, ok := x.dirs[abs]
	x.mu.Unlock()
	if !ok {
		return s, false
	}
	now, err := lstat(abs)
	if err != nil || now.ino != s.ino || now.dev != s.dev || now.mode != s.mode || now.mtime != s.mtime || now.ctime != s.ctime {
		x.forget(abs)
		return s, false
	}
	return s, true
}

// record remembers abs, just listed and cleaned, if its last change is old
// enough to be told apart from any later one.
func (x *Index) record(abs string, subdirs []string) {
	s, err := lstat(abs)
	if err != nil || s.mode&unix.S_IFMT != unix.S_IFDIR || s.mode&0o7777 != 0o755 ||
		time.Since(time.Unix(s.ctime.Unix())) < settle {
		x.forget(abs)
		return
	}
	s.subdirs = subdirs
	x.mu.Lock()
	if x.dirs == nil {
		x.dirs = map[string]dirState{}
	}
	x.dirs[abs] = s
	x.mu.Unlock()
}

func (x *Index) forget(abs string) {
	x.mu.Lock()
	delete(x.dirs, abs)
	x.mu.Unlock()
}

// Forget drops everything recorded below root (a workspace given up).
func (x *Index) Forget(root string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for p := range x.dirs {
		if p == root || (len(p) > len(root) && p[:len(root)] == root && p[len(root)] == filepath.Separator) {
			delete(x.dirs, p)
		}
	}
}

func lstat(path string) (dirState, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return dirState{}, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return dirState{}, errors.New("not a directory")
	}
	return dirState{ino: st.Ino, dev: st.Dev, mode: st.Mode, mtime: st.Mtim, ctime: st.Ctim}, nil
}
