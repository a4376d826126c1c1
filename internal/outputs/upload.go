package outputs

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

// uploadWorkers bounds concurrent uploads. Uploads mostly wait on the store
// (a disk fsync, a round trip to a remote CAS), so a few more than the CPUs
// is right; more would only add open files.
const uploadWorkers = 8

// blobSource says where the bytes of a blob come from: a file beneath the
// input root (rel) or memory (data, for Tree and Directory protos).
type blobSource struct {
	rel    string
	data   []byte
	inline bool
}

// blobSet is the set of blobs an ActionResult references, each once.
type blobSet struct {
	order []digest.Digest
	src   map[digest.Key]blobSource
}

func newBlobSet() *blobSet { return &blobSet{src: map[digest.Key]blobSource{}} }

func (b *blobSet) add(d digest.Digest, s blobSource) {
	if d.IsEmpty() {
		return // every store holds the empty blob
	}
	if _, ok := b.src[d.Key()]; ok {
		return
	}
	b.src[d.Key()] = s
	b.order = append(b.order, d)
}

func (b *blobSet) addFile(d digest.Digest, rel string) { b.add(d, blobSource{rel: rel}) }
func (b *blobSet) addBytes(d digest.Digest, data []byte) {
	b.add(d, blobSource{data: data, inline: true})
}

// upload asks the store which blobs it lacks, in one call, and uploads only
// those, a few at a time, streaming files from disk.
func (c *collector) upload(ctx context.Context, store cas.Store) error {
	if len(c.blobs.order) == 0 {
		return nil
	}
	missing, err := store.FindMissing(ctx, c.blobs.order)
	if err != nil {
		return fmt.Errorf("outputs: find missing blobs: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	work := make(chan digest.Digest)
	workers := min(uploadWorkers, len(missing))
	wg.Add(workers)
	for range workers {
		go func() {
			defer wg.Done()
			bp := buffers.Get().(*[]byte)
			defer buffers.Put(bp)
			buf := *bp
			for d := range work {
				if err := c.uploadOne(ctx, store, d, buf); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
				}
			}
		}()
	}
feed:
	for _, d := range missing {
		select {
		case work <- d:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

func (c *collector) uploadOne(ctx context.Context, store cas.Store, d digest.Digest, buf []byte) error {
	s, ok := c.blobs.src[d.Key()]
	if !ok {
		return fmt.Errorf("outputs: store reported %s missing, which was not asked about", d)
	}
	if s.inline {
		if err := cas.Put(ctx, store, d, s.data); err != nil {
			return fmt.Errorf("outputs: upload %s: %w", d, err)
		}
		return nil
	}
	return onceMoreIfLost(ctx, func() error {
		fd, err := openBeneath(c.rootfd, s.rel, unix.O_RDONLY|unix.O_NONBLOCK)
		if err != nil {
			return fmt.Errorf("outputs: reopen %q for upload: %w", s.rel, err)
		}
		f := os.NewFile(uintptr(fd), s.rel)
		defer f.Close()
		return copyVerified(ctx, store, d, f, s.rel, buf)
	})
}

// onceMoreIfLost runs upload, and once more when the store lost it and
// may take it if sent again (cas.ErrUnavailable): a remote CAS whose server
// went away mid-upload restarts the upload itself only while it still holds
// the first bytes (casclient keeps 8 MiB), and a file upload can always
// start over from the file.
func onceMoreIfLost(ctx context.Context, upload func() error) error {
	err := upload()
	if errors.Is(err, cas.ErrUnavailable) && ctx.Err() == nil {
		err = upload()
	}
	return err
}

// copyVerified uploads what r yields as the blob d, hashing on the way and
// committing only if the bytes still hash to d: a straggling process may have
// changed a file since it was hashed, and a store that trusts its caller
// (cas.Disk) must never be handed bytes that do not match their digest.
func copyVerified(ctx context.Context, store cas.Store, d digest.Digest, r io.Reader, name string, buf []byte) error {
	w, err := store.Create(ctx, d)
	if err != nil {
		return fmt.Errorf("outputs: upload %q as %s: %w", name, d, err)
	}
	defer w.Close()
	h := digest.NewHasher(d.Function)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, rerr := r.Read(buf)
		if m > 0 {
			h.Write(buf[:m])
			n += int64(m)
			if n > d.Size {
				return fmt.Errorf("outputs: %q grew while outputs were collected (more than %d bytes)", name, d.Size)
			}
			if _, err := w.Write(buf[:m]); err != nil {
				return fmt.Errorf("outputs: upload %q as %s: %w", name, d, err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("outputs: read %q: %w", name, rerr)
		}
	}
	if n != d.Size || hex.EncodeToString(h.Sum(nil)) != d.Hash {
		return fmt.Errorf("outputs: %q changed while outputs were collected (hashed as %s)", name, d)
	}
	if err := w.Commit(); err != nil {
		return fmt.Errorf("outputs: upload %q as %s: %w", name, d, err)
	}
	return nil
}

// UploadFile uploads the regular file at path (say, an action's captured
// stdout) to store unless it is already there, and returns its digest. The
// file is streamed, never read into memory whole.
func UploadFile(ctx context.Context, store cas.Store, fn digest.Function, path string) (digest.Digest, error) {
	fn, err := digest.Resolve(fn)
	if err != nil {
		return digest.Digest{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("outputs: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return digest.Digest{}, fmt.Errorf("outputs: %w", err)
	}
	if !st.Mode().IsRegular() {
		return digest.Digest{}, fmt.Errorf("outputs: %q is not a regular file (mode %s)", path, st.Mode())
	}
	if st.Size() == 0 {
		return digest.Empty(fn), nil // every store holds the empty blob
	}
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	d, err := hashReader(ctx, fn, f, buf)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("outputs: hash %q: %w", path, err)
	}
	missing, err := isMissing(ctx, store, d)
	if err != nil || !missing {
		return d, err
	}
	err = onceMoreIfLost(ctx, func() error {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("outputs: %w", err)
		}
		return copyVerified(ctx, store, d, f, path, buf)
	})
	if err != nil {
		return digest.Digest{}, err
	}
	return d, nil
}

// UploadBytes uploads data (say, an action's stdout kept in memory) to store
// unless it is already there, and returns its digest.
func UploadBytes(ctx context.Context, store cas.Store, fn digest.Function, data []byte) (digest.Digest, error) {
	fn, err := digest.Resolve(fn)
	if err != nil {
		return digest.Digest{}, err
	}
	d := digest.Compute(fn, data)
	missing, err := isMissing(ctx, store, d)
	if err != nil || !missing {
		return d, err
	}
	if err := cas.Put(ctx, store, d, data); err != nil {
		return digest.Digest{}, fmt.Errorf("outputs: upload %s: %w", d, err)
	}
	return d, nil
}

// isMissing reports whether store lacks d; the empty blob is never missing.
func isMissing(ctx context.Context, store cas.Store, d digest.Digest) (bool, error) {
	if d.IsEmpty() {
		return false, nil
	}
	missing, err := store.FindMissing(ctx, []digest.Digest{d})
	if err != nil {
		return false, fmt.Errorf("outputs: find missing blobs: %w", err)
	}
	return len(missing) > 0, nil
}
