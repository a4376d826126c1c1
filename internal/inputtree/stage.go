package inputtree

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/fsutil"
)

// stageParallelism bounds the files linked at once. Linking a cached file is
// one system call, but a cache miss waits for a fetch, so this is sized for
// fetch latency rather than for cores.
const stageParallelism = 32

// inlineStageMax is how many files the walk links itself, with no link
// workers: a warm worker's request with diff staging has a handful of new
// inputs, and handing each to a goroutine costs more than the link, and
// under load every hand-off waits for a CPU.
var inlineStageMax = 8 // a variable for the tests of both paths

// Stage materializes t under dir, which must exist and be empty: directories
// with mode 0755, files as hardlinks from cache (read-only, executable where
// the tree says so), symlinks as symlinks. On error dir holds part of the
// tree; the caller removes it.
//
// Nothing is created outside dir and no symlink is followed. Every entry is
// created with a *at system call relative to a descriptor of its parent
// directory and a single, validated name, and each directory descriptor is
// opened with O_NOFOLLOW|O_DIRECTORY right after this function made the
// directory. A symlink from the tree (or one planted by anyone else) where a
// directory should be therefore makes Stage fail instead of writing through
// it; the tree itself cannot ask for that, as names are unique per directory.
func Stage(ctx context.Context, t *Tree, cache *filecache.Cache, dir string) error {
	return StageWith(ctx, t, cache, dir, StageOptions{})
}

// StageOptions adapt Stage to a directory that is reused between actions: a
// persistent worker's workspace, where the tool files stay.
type StageOptions struct {
	// Skip leaves out the files it returns true for (already present).
	Skip func(*File) bool
	// Reuse allows dir to be non-empty and directories of the tree to exist
	// already (they are entered, never followed if they are symlinks). With
	// Skip, a directory whose whole subtree is skipped files (each of its
	// directories holding at least one, so all of them exist) is not visited
	// at all: a persistent worker's tool tree (a node_modules of hundreds of
	// directories) then costs nothing per request, where entering it cost
	// four system calls a directory.
	Reuse bool
	// Dirs, with Reuse, supplies the directories staging creates, renamed
	// into place instead of made (fsutil.SpareDirs: a directory's creation
	// is most of its cost); nil makes each.
	Dirs *fsutil.SpareDirs
}

// StageWith is Stage with options.
func StageWith(ctx context.Context, t *Tree, cache *filecache.Cache, dir string, opts StageOptions) error {
	if len(t.Dirs) == 0 {
		return errors.New("inputtree: staging a tree that Load did not make (it has no root directory)")
	}
	if !opts.Reuse {
		if err := checkEmpty(dir); err != nil {
			return err
		}
	}
	rootfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("inputtree: opening %s: %w", dir, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &stager{t: t, cache: cache, opts: opts, cancel: cancel}
	if opts.Reuse && opts.Skip != nil {
		s.present = presentDirs(t, opts.Skip)
	}
	var wg sync.WaitGroup
	if stagedFiles(t, opts.Skip) > inlineStageMax {
		s.jobs = make(chan linkJob, 2*stageParallelism)
		for range stageParallelism {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.linkFiles(ctx)
			}()
		}
	}
	root := newDirHandle(rootfd)
	if err := s.walk(ctx, root, 0); err != nil {
		s.fail(err)
	}
	root.release()
	if s.jobs != nil {
		close(s.jobs)
		wg.Wait()
	}
	return s.err
}

// checkEmpty fails unless dir is an empty directory.
func checkEmpty(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("inputtree: staging into %s: %w", dir, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err == nil && len(names) > 0 {
		return fmt.Errorf("inputtree: staging into %s: the directory is not empty (it holds %q)", dir, names[0])
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("inputtree: staging into %s: %w", dir, err)
	}
	return nil
}

// stager is one Stage call: the directory walk feeds file links to workers.
type stager struct {
	t      *Tree
	cache  *filecache.Cache
	opts   StageOptions
	cancel context.CancelFunc
	jobs   chan linkJob // nil: the walk links each file itself

	// present marks the directories with nothing to stage below them that
	// certainly exist already (see StageOptions.Reuse); nil without Reuse.
	present []bool

	mu  sync.Mutex
	err error // the first failure
}

// presentDirs marks each directory whose subtree has no file to stage and no
// symlink, and each of whose directories holds a skipped file somewhere
// below it: a skipped file is already there, so every directory above it is
// too, and staging the subtree would only re-enter them.
func presentDirs(t *Tree, skip func(*File) bool) []bool {
	present := make([]bool, len(t.Dirs))
	var visit func(i int) (present, holdsSkipped bool)
	visit = func(i int) (bool, bool) {
		d := &t.Dirs[i]
		ok, held := d.symsLo == d.symsHi, false
		for f := d.filesLo; f < d.filesHi; f++ {
			if skip(&t.Files[f]) {
				held = true
			} else {
				ok = false
			}
		}
		for c := d.subsLo; c < d.subsHi; c++ {
			p, h := visit(c)
			ok = ok && p
			held = held || h
		}
		present[i] = ok && held
		return present[i], held
	}
	visit(0)
	return present
}

// linkJob links file Files[file] into the directory open as dir.
type linkJob struct {
	dir  *dirHandle
	file int
}

// dirHandle is a directory descriptor shared by the walk and the link jobs
// of its files; the last to release it closes it.
type dirHandle struct {
	fd   int
	refs atomic.Int32
}

func newDirHandle(fd int) *dirHandle {
	h := &dirHandle{fd: fd}
	h.refs.Store(1)
	return h
}

func (h *dirHandle) acquire() { h.refs.Add(1) }

func (h *dirHandle) release() {
	if h.refs.Add(-1) == 0 {
		unix.Close(h.fd)
	}
}

// fail records err if it is the first failure and stops the other work.
func (s *stager) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.cancel()
}

// walk creates the contents of directory Dirs[i], open as h, depth first, so
// that only the descriptors of one path from the root are held by the walk.
func (s *stager) walk(ctx context.Context, h *dirHandle, i int) error {
	d := &s.t.Dirs[i]
	for f := d.filesLo; f < d.filesHi; f++ {
		if s.opts.Skip != nil && s.opts.Skip(&s.t.Files[f]) {
			continue
		}
		if s.jobs == nil {
			if err := s.link(ctx, h, f); err != nil {
				return err
			}
			continue
		}
		h.acquire()
		select {
		case s.jobs <- linkJob{dir: h, file: f}:
		case <-ctx.Done():
			h.release()
			return ctx.Err()
		}
	}
	for k := d.symsLo; k < d.symsHi; k++ {
		l := &s.t.Symlinks[k]
		if err := unix.Symlinkat(l.Target, h.fd, baseName(l.Path)); err != nil {
			return fmt.Errorf("inputtree: creating symlink %q -> %q: %w", l.Path, l.Target, err)
		}
	}
	for c := d.subsLo; c < d.subsHi; c++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.present != nil && s.present[c] {
			continue
		}
		sub, err := s.makeDir(h.fd, s.t.Dirs[c].Path)
		if err != nil {
			return err
		}
		err = s.walk(ctx, sub, c)
		sub.release()
		if err != nil {
			return err
		}
	}
	return nil
}

// makeDir creates the directory path (its last component, relative to
// parent) with mode 0755 and returns a handle on it. With Reuse, an existing
// directory is fine (a symlink in its place still fails to open).
func (s *stager) makeDir(parent int, path string) (*dirHandle, error) {
	name := baseName(path)
	reuse := s.opts.Reuse
	if reuse {
		// An existing directory (or anything else) in the way is never
		// replaced; it answers EEXIST as mkdir would.
		placed, err := s.opts.Dirs.PlaceAt(parent, name)
		if placed {
			return openDir(parent, name, path)
		}
		if errors.Is(err, unix.EEXIST) {
			return existingDir(parent, name, path)
		}
	}
	if err := unix.Mkdirat(parent, name, 0o755); err != nil {
		if !reuse || !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("inputtree: creating directory %q: %w", path, err)
		}
		return existingDir(parent, name, path)
	}
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("inputtree: opening directory %q: %w", path, err)
	}
	return setMode(fd, path)
}

// openDir opens a directory staging just put in place with mode 0755.
func openDir(parent int, name, path string) (*dirHandle, error) {
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("inputtree: opening directory %q: %w", path, err)
	}
	return newDirHandle(fd), nil
}

// existingDir opens a directory a reused workspace already has. It usually
// has its mode: fstat is a read, where fchmod stamps the inode's ctime, a
// journal update per directory on every request.
func existingDir(parent int, name, path string) (*dirHandle, error) {
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("inputtree: opening directory %q: %w", path, err)
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil && st.Mode&0o7777 == 0o755 {
		return newDirHandle(fd), nil
	}
	return setMode(fd, path)
}

// setMode makes the directory open as fd 0755 and returns a handle on it.
func setMode(fd int, path string) (*dirHandle, error) {
	// mkdir's mode is filtered by the umask; actions need 0755 to write
	// outputs beside their inputs whatever the executor's umask is.
	if err := unix.Fchmod(fd, 0o755); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("inputtree: setting the mode of directory %q: %w", path, err)
	}
	return newDirHandle(fd), nil
}

// linkFiles runs link jobs until the channel closes. After a failure it only
// drains the channel, releasing the handles.
func (s *stager) linkFiles(ctx context.Context) {
	for j := range s.jobs {
		if ctx.Err() == nil {
			if err := s.link(ctx, j.dir, j.file); err != nil {
				s.fail(err)
			}
		}
		j.dir.release()
	}
}

// link links Files[file] into the directory open as dir.
func (s *stager) link(ctx context.Context, dir *dirHandle, file int) error {
	f := &s.t.Files[file]

	if err := s.cache.LinkAt(ctx, f.Digest, f.Executable, dir.fd, baseName(f.Path)); err != nil {
		return fmt.Errorf("inputtree: staging file %q: %w", f.Path, err)
	}
	return nil
}

// stagedFiles counts the files of t that skip leaves in, stopping past
// inlineStageMax.
func stagedFiles(t *Tree, skip func(*File) bool) int {
	n := 0
	for i := range t.Files {
		if skip == nil || !skip(&t.Files[i]) {
			if n++; n > inlineStageMax {
				break
			}
		}
	}
	return n
}

// baseName is the last component of a path built by Load.
func baseName(p string) string {
	return p[strings.LastIndexByte(p, '/')+1:]
}
