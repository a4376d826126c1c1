package fsutil

import (
	"errors"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Creating a file or a directory is the one expensive step of writing a
// small blob or staging a new input directory: on the ext4 volumes measured
// it cost 0.2–0.8 ms of system time (inode allocation), where writing,
// chmodding and renaming the file cost 30 µs. The stores and the stager do
// that on every action's critical path (the executor's copies of inputs,
// output blobs, the client's uploads, a request's new directories), so the
// creation is moved off it: SpareFiles and SpareDirs keep a few created
// ahead of need by a background goroutine, to be renamed into place.

// spares keeps up to cap(ch) things made by create.
type spares[T any] struct {
	create   func() (T, error)
	discard  func(T)
	ch       chan T
	kick     chan struct{}
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

func newSpares[T any](n int, create func() (T, error), discard func(T)) *spares[T] {
	s := &spares[T]{
		create: create, discard: discard,
		ch:   make(chan T, n),
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go s.refill()
	return s
}

// take returns a spare, if one is ready.
func (s *spares[T]) take() (T, bool) {
	defer s.wake()
	select {
	case v := <-s.ch:
		return v, true
	default:
		var zero T
		return zero, false
	}
}

// give returns an unused spare (or discards it when the pool is full).
func (s *spares[T]) give(v T) {
	select {
	case s.ch <- v:
	default:
		s.discard(v)
	}
}

func (s *spares[T]) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *spares[T]) refill() {
	defer close(s.done)
	for {
		for len(s.ch) < cap(s.ch) {
			select {
			case <-s.stop:
				return
			default:
			}
			v, err := s.create()
			if err != nil {
				// The directory is gone or full: a caller creating its own
				// gets the error; retry later rather than spin.
				select {
				case <-s.stop:
					return
				case <-time.After(time.Second):
				}
				continue
			}
			s.give(v)
		}
		select {
		case <-s.stop:
			return
		case <-s.kick:
		}
	}
}

func (s *spares[T]) close() {
	s.stopOnce.Do(func() { close(s.stop) })
	<-s.done
	for {
		select {
		case v := <-s.ch:
			s.discard(v)
		default:
			return
		}
	}
}

// SpareFiles hands out empty temporary files of one directory, as
// os.CreateTemp(dir, pattern) makes them, created ahead of need. Whoever
// purges leftovers of the directory at startup removes the unused spares of
// a process that died; Close removes those not handed out.
type SpareFiles struct {
	dir, pattern string
	s            *spares[*os.File]
}

// NewSpareFiles starts keeping up to n spare files of CreateTemp(dir,
// pattern); with n ≤ 0, Create makes each file when asked, as CreateTemp.
func NewSpareFiles(dir, pattern string, n int) *SpareFiles {
	f := &SpareFiles{dir: dir, pattern: pattern}
	if n <= 0 {
		return f
	}
	f.s = newSpares(n, func() (*os.File, error) { return os.CreateTemp(dir, pattern) },
		func(f *os.File) { f.Close(); os.Remove(f.Name()) })
	return f
}

// Create returns an empty temporary file, open for reading and writing; a
// spare one when there is one.
func (f *SpareFiles) Create() (*os.File, error) {
	if f.s != nil {
		if v, ok := f.s.take(); ok {
			return v, nil
		}
	}
	return os.CreateTemp(f.dir, f.pattern)
}

// Close stops the refilling and removes the spare files not handed out.
func (f *SpareFiles) Close() {
	if f.s != nil {
		f.s.close()
	}
}

// SpareDirs hands out empty directories of mode 0755 in one directory,
// created ahead of need, for callers that rename one into place instead of
// making a directory. Like SpareFiles, leftovers are for a startup purge.
type SpareDirs struct {
	s *spares[string]
}

// NewSpareDirs starts keeping up to n spare directories in dir.
func NewSpareDirs(dir string, n int) *SpareDirs {
	return &SpareDirs{s: newSpares(n, func() (string, error) {
		p, err := os.MkdirTemp(dir, "spare-*")
		if err == nil {
			// MkdirTemp makes 0700; staged directories are 0755.
			if err = os.Chmod(p, 0o755); err != nil {
				os.Remove(p)
			}
		}
		return p, err
	}, func(p string) { os.Remove(p) })}
}

// Take returns the path of an empty 0755 directory to rename into place,
// if one is ready.
func (d *SpareDirs) Take() (string, bool) { return d.s.take() }

// Give returns a directory Take handed out that stayed unused and empty.
func (d *SpareDirs) Give(p string) { d.s.give(p) }

// PlaceAt renames a spare directory to name in the directory open as
// dirfd, never replacing what is there: an entry already at name answers
// unix.EEXIST, as mkdir would. It reports false with a nil error when it
// placed nothing for another reason (no spare ready, d nil, another file
// system, no renameat2): the caller then makes the directory itself.
func (d *SpareDirs) PlaceAt(dirfd int, name string) (bool, error) {
	if d == nil {
		return false, nil
	}
	spare, ok := d.Take()
	if !ok {
		return false, nil
	}
	err := unix.Renameat2(unix.AT_FDCWD, spare, dirfd, name, unix.RENAME_NOREPLACE)
	if err == nil {
		return true, nil
	}
	d.Give(spare)
	if errors.Is(err, unix.EEXIST) {
		return false, err
	}
	return false, nil
}

// Close stops the refilling and removes the spare directories not handed
// out.
func (d *SpareDirs) Close() { d.s.close() }
