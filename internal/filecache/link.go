package filecache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// Link makes dst a hardlink to the cached file of blob d, fetching the blob
// from the source store first if the cache lacks it. The file is read-only,
// and also executable (mode 0555 instead of 0444) if executable is set. dst
// must not exist. If a hardlink is impossible (dst on another filesystem, or
// the entry has the filesystem's maximum number of links) dst becomes a copy
// instead. The empty blob is created in place, with no fetch and no link.
//
// A blob the source does not hold is a *cas.MissingError; bytes that do not
// match d are ErrCorrupt (both wrapped).
func (c *Cache) Link(ctx context.Context, d digest.Digest, executable bool, dst string) error {
	return c.LinkAt(ctx, d, executable, unix.AT_FDCWD, dst)
}

// LinkAt is Link with the destination named as linkat(2) names it: name is
// resolved relative to the directory open as dirfd. Callers that build a tree
// pass one directory's descriptor and a single path component, so that no
// symlink anywhere can redirect the link.
func (c *Cache) LinkAt(ctx context.Context, d digest.Digest, executable bool, dirfd int, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Revalidate: the hash becomes part of a path below.
	d, err := digest.New(d.Function, d.Hash, d.Size)
	if err != nil {
		return fmt.Errorf("filecache: linking %q: %w", name, err)
	}
	mode := modeOf(executable)
	if d.IsEmpty() {
		if err := createEmpty(dirfd, name, mode); err != nil {
			return fmt.Errorf("filecache: creating the empty file %q: %w", name, err)
		}
		return nil
	}
	e, err := c.acquire(ctx, key{d: d, executable: executable})
	if err != nil {
		return err
	}
	defer c.release(e)
	src := c.path(e.k)
	err = unix.Linkat(unix.AT_FDCWD, src, dirfd, name, 0)
	if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EMLINK) {
		if !c.warnedCopy.Swap(true) {
			c.logger.Warn("filecache: cannot hardlink into an action directory, copying instead (put the cache and the work directory on one filesystem to avoid copies)",
				"dst", name, "err", err)
		}
		err = copyOut(src, dirfd, name, mode)
	}
	if err != nil {
		return fmt.Errorf("filecache: linking %s %s as %q: %w", d.Function, d, name, err)
	}
	return nil
}

func modeOf(executable bool) uint32 {
	if executable {
		return execMode
	}
	return plainMode
}

// fetch puts the blob of k in place at its cache path. The plain variant is
// linked from the source's own file when the source has one on this
// filesystem; otherwise the blob is streamed from the source. Either way the
// bytes are hashed before the entry is used: one read per cache miss buys the
// guarantee that no action ever sees a damaged input.
func (c *Cache) fetch(ctx context.Context, k key) error {
	if err := c.makeShard(k); err != nil {
		return err
	}
	final := c.path(k)
	if !k.executable && c.srcFiles != nil && !c.noSrcLinks.Load() {
		linked, err := c.linkFromSource(ctx, k.d, final)
		if linked || err != nil {
			return err
		}
	}
	return c.copyFromSource(ctx, k, final)
}

// linkFromSource makes final a hardlink to the source's file of d, verified,
// and reports whether it did. The source's blob files are read-only (0444),
// exactly what a plain entry needs. A failure to link means "copy instead"
// (the source may have evicted the blob since Path answered); bytes that do
// not match d are an error, since a copy would carry the same bytes.
func (c *Cache) linkFromSource(ctx context.Context, d digest.Digest, final string) (bool, error) {
	p, ok := c.srcFiles.Path(d)
	if !ok {
		return false, nil
	}
	if err := os.Link(p, final); err != nil {
		if errors.Is(err, unix.EXDEV) {
			c.noSrcLinks.Store(true)
			c.logger.Info("filecache: the source store is on another filesystem, copying blobs from it", "err", err)
		}
		return false, nil
	}
	fi, err := os.Lstat(final)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != plainMode {
		c.logger.Warn("filecache: the source store's file is not a read-only regular file, copying instead", "path", p, "digest", d.String())
		_ = os.Remove(final)
		return false, nil
	}
	f, err := os.Open(final)
	if err == nil {
		err = verify(ctx, d, f, io.Discard)
		f.Close()
	}
	if err != nil {
		_ = os.Remove(final)
		return false, fmt.Errorf("filecache: fetching %s %s: %w", d.Function, d, err)
	}
	return true, nil
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyFromSource streams the blob from the source into a temporary file while
// hashing it, and renames the file into place only if it matches k.d.
func (c *Cache) copyFromSource(ctx context.Context, k key, final string) error {
	r, err := c.src.Open(ctx, k.d, 0)
	if errors.Is(err, cas.ErrNotFound) {
		return fmt.Errorf("filecache: fetching %s %s: %w", k.d.Function, k.d, &cas.MissingError{Digests: []digest.Digest{k.d}})
	}
	if err != nil {
		return fmt.Errorf("filecache: fetching %s %s: %w", k.d.Function, k.d, err)
	}
	defer r.Close()
	f, err := c.spares.Create()
	if err != nil {
		return fmt.Errorf("filecache: fetching %s %s: %w", k.d.Function, k.d, err)
	}
	tmp := f.Name()
	done := false
	defer func() {
		if !done {
			f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := verify(ctx, k.d, r, f); err != nil {
		return fmt.Errorf("filecache: fetching %s %s: %w", k.d.Function, k.d, err)
	}
	// Chmod sets the mode exactly, whatever the umask.
	if err := f.Chmod(os.FileMode(modeOf(k.executable))); err != nil {
		return fmt.Errorf("filecache: fetching %s %s: %w", k.d.Function, k.d, err)
	}
	// No fsync: the cache is purged at startup, so a crash cannot expose a
	// partly written entry to anyone.
	if err := f.Close(); err != nil {
		return fmt.Errorf("filecache: fetching %s %s: %w", k.d.Function, k.d, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		_ = os.Remove(tmp)
		done = true
		return fmt.Errorf("filecache: fetching %s %s: %w", k.d.Function, k.d, err)
	}
	done = true
	return nil
}

// verify copies r to w while hashing it, and fails with ErrCorrupt unless r
// yields exactly the blob d.
func verify(ctx context.Context, d digest.Digest, r io.Reader, w io.Writer) error {
	h := digest.NewHasher(d.Function)
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	// LimitReader at size+1 so that a source yielding too much is caught
	// without reading an unbounded stream.
	n, err := io.CopyBuffer(io.MultiWriter(w, h), io.LimitReader(ctxReader{ctx, r}, d.Size+1), *buf)
	if err != nil {
		return err
	}
	if n != d.Size {
		return fmt.Errorf("%w: the store yielded %d bytes or more, the size is %d", ErrCorrupt, n, d.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hash {
		return fmt.Errorf("%w: the store's bytes hash to %s", ErrCorrupt, got)
	}
	return nil
}

// createEmpty creates name (relative to dirfd) as an empty file of mode.
func createEmpty(dirfd int, name string, mode uint32) error {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	err = unix.Fchmod(fd, mode)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		_ = unix.Unlinkat(dirfd, name, 0)
	}
	return err
}

// copyOut creates name (relative to dirfd) as a copy of the cache file src.
func copyOut(src string, dirfd int, name string, mode uint32) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	out := os.NewFile(uintptr(fd), name)
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = unix.Unlinkat(dirfd, name, 0)
		}
	}()
	// io.Copy between files uses copy_file_range, which can share extents.
	if _, err := io.Copy(out, in); err != nil {
		return err
	}
	return out.Chmod(os.FileMode(mode))
}

// ctxReader stops a long copy when ctx ends, for sources (local files) whose
// reads do not watch the context themselves.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
