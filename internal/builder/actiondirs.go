package builder

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/google/uuid"

	"github.com/hearth-build/hearth/internal/fsutil"
)

// maxSpareDirs bounds the emptied action directories kept for reuse: more
// than the executor runs at once is never needed.
const maxSpareDirs = 64

// actionDirs hands out one-shot action directories (each with its empty
// input root "root") and takes them back emptied. Creating a directory on
// ext4 allocates an inode and a block and removing it frees them again:
// mkdir, mkdir and RemoveAll cost ~180 µs per action on the build machine's
// disk, against ~5 µs to list the two directories of a reused one, and they
// were the largest part of the server's CPU per trivial action. A directory
// is reused only once it is provably as a fresh one would be: both levels
// still real directories with mode 0755 and nothing in them; anything else
// (a failed removal, a root replaced by a symlink) removes it whole.
type actionDirs struct {
	mu    sync.Mutex
	spare []string
	// emptying counts the directories being emptied in the background
	// (putLater); removeSpare waits for them.
	emptying sync.WaitGroup
}

// bigActionDir is the number of staged inputs (files, directories and
// symlinks) from which an action directory is emptied in the background
// after the action, rather than before its result is returned: unlinking a
// toolchain of hundreds of hardlinks takes milliseconds, while emptying a
// small directory costs less than handing it to a goroutine, and doing it at
// once keeps it available for the very next action.
const bigActionDir = 64

// get returns an empty action directory under workDir and its input root.
func (a *actionDirs) get(workDir string) (actionDir, inputRoot string, err error) {
	a.mu.Lock()
	if n := len(a.spare); n > 0 {
		actionDir = a.spare[n-1]
		a.spare = a.spare[:n-1]
	}
	a.mu.Unlock()
	if actionDir != "" {
		return actionDir, filepath.Join(actionDir, "root"), nil
	}
	actionDir = filepath.Join(workDir, uuid.NewString())
	inputRoot = filepath.Join(actionDir, "root")
	// Two plain mkdirs: MkdirAll would first stat every level.
	if err := os.Mkdir(actionDir, 0o755); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return "", "", err
		}
		// The work directory itself is gone (removed behind our back).
		if err := os.MkdirAll(actionDir, 0o755); err != nil {
			return "", "", err
		}
	}
	if err := os.Mkdir(inputRoot, 0o755); err != nil {
		_ = fsutil.RemoveAll(actionDir)
		return "", "", err
	}
	return actionDir, inputRoot, nil
}

// put empties actionDir and keeps it for reuse, or removes it if it cannot
// be shown empty. Nothing of one action survives into the next either way.
func (a *actionDirs) put(actionDir string) error {
	if err := emptyActionDir(actionDir); err != nil {
		return fsutil.RemoveAll(actionDir)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.spare) >= maxSpareDirs {
		return fsutil.RemoveAll(actionDir)
	}
	a.spare = append(a.spare, actionDir)
	return nil
}

// putLater is put on its own goroutine; log reports its error.
func (a *actionDirs) putLater(actionDir string, log func(error)) {
	a.emptying.Add(1)
	go func() {
		defer a.emptying.Done()
		if err := a.put(actionDir); err != nil {
			log(err)
		}
	}()
}

// removeSpare removes the directories kept for reuse (after waiting for
// those being emptied), so that a work directory the builder is done with
// is left as it was found.
func (a *actionDirs) removeSpare() error {
	a.emptying.Wait()
	a.mu.Lock()
	spare := a.spare
	a.spare = nil
	a.mu.Unlock()
	var errs []error
	for _, d := range spare {
		errs = append(errs, fsutil.RemoveAll(d))
	}
	return errors.Join(errs...)
}

// emptyActionDir removes everything in actionDir but its input root and
// everything in the root, and checks that both are then empty directories
// of mode 0755 (an action may chmod its own directories).
func emptyActionDir(actionDir string) error {
	inputRoot := filepath.Join(actionDir, "root")
	for _, dir := range []string{actionDir, inputRoot} {
		fi, err := os.Lstat(dir)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return errors.New("not a directory: " + dir)
		}
		if fi.Mode().Perm() != 0o755 {
			if err := os.Chmod(dir, 0o755); err != nil {
				return err
			}
		}
	}
	if err := removeEntries(actionDir, "root"); err != nil {
		return err
	}
	if err := removeEntries(inputRoot, ""); err != nil {
		return err
	}
	for _, dir := range []string{actionDir, inputRoot} {
		names, err := readNames(dir)
		if err != nil {
			return err
		}
		if len(names) > 1 || (len(names) == 1 && !(dir == actionDir && names[0] == "root")) {
			return errors.New("not empty after cleaning: " + dir)
		}
	}
	return nil
}

func removeEntries(dir, keep string) error {
	names, err := readNames(dir)
	if err != nil {
		return err
	}
	for _, name := range names {
		if name == keep {
			continue
		}
		if err := fsutil.RemoveAll(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
