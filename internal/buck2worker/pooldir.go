package buck2worker

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/hearth-build/hearth/internal/fsutil"
)

// poolDirPattern names the pool directories of bridges under the temporary
// directory.
const poolDirPattern = "hearth-buck2-worker-*"

// PoolDir is a bridge's private directory for worker workspaces and logs. It
// holds an exclusive lock on a file inside for the bridge's life, so that a
// later bridge can tell the directory of one that was killed (Buck2 ends its
// workers with a signal that may be SIGKILL) and remove it.
type PoolDir struct {
	Path string
	lock *os.File
}

// NewPoolDir removes the pool directories of dead bridges under parent (""
// for the system's temporary directory) and creates a new one.
func NewPoolDir(parent string) (*PoolDir, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	stale, _ := filepath.Glob(filepath.Join(parent, poolDirPattern))
	for _, dir := range stale {
		f, err := os.Open(filepath.Join(dir, ".lock"))
		if err != nil {
			continue // not ours, or being created
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			_ = fsutil.RemoveAll(dir) // its bridge is gone
		}
		f.Close()
	}
	dir, err := os.MkdirTemp(parent, poolDirPattern)
	if err != nil {
		return nil, fmt.Errorf("buck2worker: %w", err)
	}
	// Locked before it gets the name others look for, so that nobody can
	// take an unlocked new directory for a dead one.
	lock, err := os.Create(filepath.Join(dir, ".lock.new"))
	if err == nil {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err == nil {
		err = os.Rename(lock.Name(), filepath.Join(dir, ".lock"))
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("buck2worker: locking %s: %w", dir, err)
	}
	return &PoolDir{Path: filepath.Join(dir, "pool"), lock: lock}, nil
}

// Remove deletes the directory and releases its lock.
func (d *PoolDir) Remove() {
	_ = fsutil.RemoveAll(filepath.Dir(d.Path))
	d.lock.Close()
}
