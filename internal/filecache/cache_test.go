package filecache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newDisk(t testing.TB, dir string) *cas.Disk {
	t.Helper()
	d, err := cas.NewDisk(dir, cas.DiskOptions{Logger: quiet()})
	if err != nil {
		t.Fatalf("NewDisk: %v", err)
	}
	return d
}

func newCache(t testing.TB, src cas.Store, maxBytes int64) *Cache {
	t.Helper()
	c, err := New(filepath.Join(t.TempDir(), "cache"), src, Options{MaxBytes: maxBytes, Logger: quiet()})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func put(t testing.TB, s cas.Store, data []byte) digest.Digest {
	t.Helper()
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(context.Background(), s, d, data); err != nil {
		t.Fatalf("Put: %v", err)
	}
	return d
}

func stat(t testing.TB, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

func assertFile(t testing.TB, path string, want []byte, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s holds %q, want %q", path, got, want)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != mode {
		t.Errorf("%s has mode %v, want %v", path, fi.Mode(), mode)
	}
}

// plainSource hides the Disk's Path method, so the cache must stream.
type plainSource struct{ cas.Store }

// countingSource counts the fetches that reach a real Disk. Path is forwarded
// so that the link-from-source path stays in use.
type countingSource struct {
	*cas.Disk
	opens, paths atomic.Int64
	gate         chan struct{} // if non-nil, Open waits for it to close
}

func (s *countingSource) Open(ctx context.Context, d digest.Digest, off int64) (io.ReadCloser, error) {
	s.opens.Add(1)
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Disk.Open(ctx, d, off)
}

func (s *countingSource) Path(d digest.Digest) (string, bool) {
	s.paths.Add(1)
	return s.Disk.Path(d)
}

func TestLinkModesAndInodes(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t, t.TempDir())
	data := []byte("hello, cache")
	d := put(t, disk, data)
	diskPath, ok := disk.Path(d)
	if !ok {
		t.Fatal("Disk.Path: blob absent")
	}
	for _, tc := range []struct {
		name       string
		src        cas.Store
		sameAsDisk bool // plain variant is a link to the Disk's own file
		spares     int
	}{
		{name: "disk source links", src: disk, sameAsDisk: true},
		{name: "store without files copies", src: plainSource{disk}},
		{name: "copies into spare files", src: plainSource{disk}, spares: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(filepath.Join(t.TempDir(), "cache"), tc.src, Options{Logger: quiet(), SpareFiles: tc.spares})
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			plain, exec := filepath.Join(out, "plain"), filepath.Join(out, "exec")
			if err := c.Link(ctx, d, false, plain); err != nil {
				t.Fatalf("Link plain: %v", err)
			}
			if err := c.Link(ctx, d, true, exec); err != nil {
				t.Fatalf("Link exec: %v", err)
			}
			assertFile(t, plain, data, 0o444)
			assertFile(t, exec, data, 0o555)
			plainIno, execIno := stat(t, plain).Ino, stat(t, exec).Ino
			if plainIno == execIno {
				t.Error("plain and executable variants share an inode; a hardlink cannot have two modes")
			}
			if got := stat(t, c.path(key{d, false})).Ino; got != plainIno {
				t.Errorf("plain file is inode %d, its cache entry %d: not a hardlink", plainIno, got)
			}
			if got := stat(t, c.path(key{d, true})).Ino; got != execIno {
				t.Errorf("exec file is inode %d, its cache entry %d: not a hardlink", execIno, got)
			}
			if same := stat(t, diskPath).Ino == plainIno; same != tc.sameAsDisk {
				t.Errorf("plain entry shares the Disk's inode: %v, want %v", same, tc.sameAsDisk)
			}
			if c.Count() != 2 || c.SizeBytes() != 2*d.Size {
				t.Errorf("Count, SizeBytes = %d, %d; want 2, %d", c.Count(), c.SizeBytes(), 2*d.Size)
			}
			// A second link of a cached entry is another name of the same inode.
			again := filepath.Join(out, "again")
			if err := c.Link(ctx, d, true, again); err != nil {
				t.Fatal(err)
			}
			if stat(t, again).Ino != execIno {
				t.Error("second link of a cached entry is not the same inode")
			}
			if err := c.Link(ctx, d, true, again); !errors.Is(err, os.ErrExist) {
				t.Errorf("Link onto an existing file: %v, want ErrExist", err)
			}
			// The spare files (empty, waiting for the next copy) are all
			// tmp/ may hold.
			ents, _ := os.ReadDir(c.tmpDir)
			for _, e := range ents {
				if fi, err := e.Info(); err != nil || fi.Size() != 0 {
					t.Errorf("tmp/ holds a leftover %s", e.Name())
				}
			}
			if len(ents) > tc.spares {
				t.Errorf("tmp/ holds %d files, more than the %d spares", len(ents), tc.spares)
			}
		})
	}
}

func TestEmptyBlobNeedsNoFetch(t *testing.T) {
	src := &countingSource{Disk: newDisk(t, t.TempDir())}
	c := newCache(t, src, 0)
	out := t.TempDir()
	empty := digest.Empty(digest.SHA256)
	for _, exec := range []bool{false, true} {
		p := filepath.Join(out, map[bool]string{false: "plain", true: "exec"}[exec])
		if err := c.Link(context.Background(), empty, exec, p); err != nil {
			t.Fatalf("Link empty: %v", err)
		}
		assertFile(t, p, nil, map[bool]os.FileMode{false: 0o444, true: 0o555}[exec])
	}
	if src.opens.Load()+src.paths.Load() != 0 || c.Count() != 0 {
		t.Errorf("empty blob: %d opens, %d paths, %d entries; want none", src.opens.Load(), src.paths.Load(), c.Count())
	}
}

func TestMissingBlob(t *testing.T) {
	c := newCache(t, newDisk(t, t.TempDir()), 0)
	d := digest.Compute(digest.SHA256, []byte("never stored"))
	dst := filepath.Join(t.TempDir(), "x")
	err := c.Link(context.Background(), d, false, dst)
	var me *cas.MissingError
	if !errors.As(err, &me) || len(me.Digests) != 1 || me.Digests[0] != d {
		t.Fatalf("Link of an absent blob: %v, want a MissingError for %s", err, d)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dst exists after a failed link: %v", err)
	}
}

func TestInvalidDigestRejected(t *testing.T) {
	c := newCache(t, newDisk(t, t.TempDir()), 0)
	for _, d := range []digest.Digest{
		{Function: digest.SHA256, Hash: "../../etc/passwd", Size: 3},
		{Function: digest.SHA256, Hash: "", Size: 3},
		{Function: digest.SHA256, Hash: digest.Compute(digest.SHA256, []byte("x")).Hash, Size: -1},
	} {
		err := c.Link(context.Background(), d, false, filepath.Join(t.TempDir(), "x"))
		if !errors.Is(err, digest.ErrInvalid) {
			t.Errorf("Link(%+v) = %v, want digest.ErrInvalid", d, err)
		}
	}
}

// corruptDisk stores bad bytes under d's name: a Disk trusts its caller and
// checks only the size.
func corruptDisk(t *testing.T) (*cas.Disk, digest.Digest) {
	disk := newDisk(t, t.TempDir())
	d := digest.Compute(digest.SHA256, []byte("the real bytes"))
	if err := cas.Put(context.Background(), disk, d, []byte("THE FAKE BYTES")); err != nil {
		t.Fatalf("planting a corrupt blob: %v", err)
	}
	return disk, d
}

func TestCorruptSourceDetectedAndNotCached(t *testing.T) {
	for _, tc := range []struct {
		name string
		exec bool
		wrap func(*cas.Disk) cas.Store
	}{
		{"linked from disk", false, func(d *cas.Disk) cas.Store { return d }},
		{"streamed, executable", true, func(d *cas.Disk) cas.Store { return d }},
		{"streamed, plain", false, func(d *cas.Disk) cas.Store { return plainSource{d} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk, d := corruptDisk(t)
			c := newCache(t, tc.wrap(disk), 0)
			dst := filepath.Join(t.TempDir(), "x")
			if err := c.Link(context.Background(), d, tc.exec, dst); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Link of a corrupt blob: %v, want ErrCorrupt", err)
			}
			if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("dst exists after a corrupt fetch: %v", err)
			}
			if _, err := os.Lstat(c.path(key{d, tc.exec})); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cache entry exists after a corrupt fetch: %v", err)
			}
			if ents, _ := os.ReadDir(c.tmpDir); len(ents) != 0 || c.Count() != 0 {
				t.Errorf("after a corrupt fetch: %d tmp files, %d entries; want none", len(ents), c.Count())
			}
		})
	}
}

func TestConcurrentLinkFetchesOnce(t *testing.T) {
	for _, exec := range []bool{false, true} {
		src := &countingSource{Disk: newDisk(t, t.TempDir()), gate: make(chan struct{})}
		data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
		d := put(t, src.Disk, data)
		c := newCache(t, src, 0)
		out := t.TempDir()
		const n = 16
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = c.Link(context.Background(), d, exec, filepath.Join(out, string(rune('a'+i))))
			}()
		}
		// Hold the one streaming fetch until the others are (very likely)
		// waiting for it; the assertion holds either way.
		time.Sleep(50 * time.Millisecond)
		close(src.gate)
		wg.Wait()
		var ino uint64
		for i, err := range errs {
			if err != nil {
				t.Fatalf("Link %d: %v", i, err)
			}
			p := filepath.Join(out, string(rune('a'+i)))
			if i == 0 {
				ino = stat(t, p).Ino
				assertFile(t, p, data, map[bool]os.FileMode{false: 0o444, true: 0o555}[exec])
			} else if stat(t, p).Ino != ino {
				t.Errorf("exec=%v: link %d is another inode", exec, i)
			}
		}
		if fetches := src.opens.Load() + src.paths.Load(); fetches != 1 {
			t.Errorf("exec=%v: %d fetches (opens %d, paths %d), want 1", exec, fetches, src.opens.Load(), src.paths.Load())
		}
	}
}

// A waiter must not inherit the failure of a fetcher whose own context ended.
func TestWaiterRetriesAfterFetcherCancelled(t *testing.T) {
	src := &countingSource{Disk: newDisk(t, t.TempDir()), gate: make(chan struct{})}
	d := put(t, src.Disk, []byte("shared"))
	c := newCache(t, plainSource{src}, 0)
	out := t.TempDir()
	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() { errA <- c.Link(ctxA, d, false, filepath.Join(out, "a")) }()
	for src.opens.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	errB := make(chan error, 1)
	go func() { errB <- c.Link(context.Background(), d, false, filepath.Join(out, "b")) }()
	time.Sleep(20 * time.Millisecond) // let B start waiting on A's fetch
	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Link: %v, want context.Canceled", err)
	}
	for src.opens.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	close(src.gate)
	if err := <-errB; err != nil {
		t.Fatalf("waiting Link after the fetcher was cancelled: %v", err)
	}
	assertFile(t, filepath.Join(out, "b"), []byte("shared"), 0o444)
}

func TestEvictionKeepsLinkedFiles(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t, t.TempDir())
	blob := func(c byte) []byte { return bytes.Repeat([]byte{c}, 100) }
	a, b, cc := put(t, disk, blob('a')), put(t, disk, blob('b')), put(t, disk, blob('c'))
	c := newCache(t, plainSource{disk}, 250)
	out := t.TempDir()
	link := func(d digest.Digest, name string) {
		t.Helper()
		if err := c.Link(ctx, d, false, filepath.Join(out, name)); err != nil {
			t.Fatalf("Link %s: %v", name, err)
		}
	}
	link(a, "a1")
	link(b, "b1")
	link(a, "a2") // a is now more recent than b
	link(cc, "c1")
	if _, err := os.Lstat(c.path(key{b, false})); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("least recently used entry b was not evicted: %v", err)
	}
	for _, d := range []digest.Digest{a, cc} {
		if _, err := os.Lstat(c.path(key{d, false})); err != nil {
			t.Errorf("recently used entry %s evicted: %v", d, err)
		}
	}
	if c.Count() != 2 || c.SizeBytes() != 200 {
		t.Errorf("Count, SizeBytes = %d, %d; want 2, 200", c.Count(), c.SizeBytes())
	}
	// The evicted entry's hardlink in the action directory is intact.
	assertFile(t, filepath.Join(out, "b1"), blob('b'), 0o444)
	if nl := stat(t, filepath.Join(out, "b1")).Nlink; nl != 1 {
		t.Errorf("evicted file has %d links, want 1 (only the action's)", nl)
	}
	// Fetching b again works and evicts the now least recent a.
	link(b, "b2")
	if _, err := os.Lstat(c.path(key{a, false})); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("entry a not evicted: %v", err)
	}
	assertFile(t, filepath.Join(out, "a1"), blob('a'), 0o444)

	// A blob larger than the whole cache is linked, then dropped.
	big := put(t, disk, bytes.Repeat([]byte("z"), 1000))
	link(big, "big")
	assertFile(t, filepath.Join(out, "big"), bytes.Repeat([]byte("z"), 1000), 0o444)
	if _, err := os.Lstat(c.path(key{big, false})); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("entry larger than MaxBytes kept: %v", err)
	}
	if c.SizeBytes() > 250 {
		t.Errorf("SizeBytes %d over MaxBytes 250 once nothing is pinned", c.SizeBytes())
	}
}

func TestNewPurgesOnlyItsOwnDirectory(t *testing.T) {
	disk := newDisk(t, t.TempDir())
	foreign := t.TempDir()
	precious := filepath.Join(foreign, "precious.txt")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(foreign, disk, Options{Logger: quiet()}); err == nil {
		t.Fatal("New on a foreign non-empty directory succeeded")
	}
	if _, err := os.Stat(precious); err != nil {
		t.Fatalf("New deleted a foreign file: %v", err)
	}

	dir := filepath.Join(t.TempDir(), "cache")
	c, err := New(dir, disk, Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	d := put(t, disk, []byte("cached once"))
	if err := c.Link(context.Background(), d, true, filepath.Join(t.TempDir(), "x")); err != nil {
		t.Fatal(err)
	}
	entry := c.path(key{d, true})
	stray := filepath.Join(dir, "tmp", "fetch-left-by-a-crash")
	if err := os.WriteFile(stray, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(dir, disk, Options{Logger: quiet()}); err != nil {
		t.Fatalf("reopening the cache: %v", err)
	}
	for _, p := range []string{entry, stray} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the restart: %v", p, err)
		}
	}
	if _, err := New(dir, disk, Options{MaxBytes: -1}); err == nil {
		t.Error("negative MaxBytes accepted")
	}
}

// otherFilesystem returns a directory on a different filesystem than
// t.TempDir(), to provoke EXDEV. /dev/shm is a tmpfs on Linux machines and in
// containers.
func otherFilesystem(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "filecache-test-")
	if err != nil {
		t.Fatalf("this test needs /dev/shm on another filesystem than the temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if stat(t, dir).Dev == stat(t, t.TempDir()).Dev {
		t.Fatalf("/dev/shm is on the same filesystem as %s; this test needs two", t.TempDir())
	}
	return dir
}

func TestCrossFilesystemFallsBackToCopies(t *testing.T) {
	ctx := context.Background()
	shm := otherFilesystem(t)
	// The source Disk on tmpfs, the cache on the temp dir: linking from the
	// source fails with EXDEV and the cache copies instead.
	disk := newDisk(t, filepath.Join(shm, "cas"))
	data := []byte("across filesystems")
	d := put(t, disk, data)
	src := &countingSource{Disk: disk}
	c := newCache(t, src, 0)
	out := t.TempDir()
	if err := c.Link(ctx, d, false, filepath.Join(out, "x")); err != nil {
		t.Fatalf("Link across filesystems: %v", err)
	}
	assertFile(t, filepath.Join(out, "x"), data, 0o444)
	if !c.noSrcLinks.Load() || src.opens.Load() != 1 {
		t.Errorf("after EXDEV: noSrcLinks %v, opens %d; want true, 1", c.noSrcLinks.Load(), src.opens.Load())
	}
	// The action directory on tmpfs: the link out falls back to a copy.
	dst := filepath.Join(shm, "action-file")
	if err := c.Link(ctx, d, true, dst); err != nil {
		t.Fatalf("Link into another filesystem: %v", err)
	}
	assertFile(t, dst, data, 0o555)
	if stat(t, dst).Nlink != 1 {
		t.Error("copy into another filesystem is a link?")
	}
}
