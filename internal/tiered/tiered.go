// Package tiered owns the fast/slow CAS decorator: a bounded local disk
// store (fast) in front of a shared, durable store (slow, S3), with an
// optional presence index of the slow tier (Redis).
//
//   - Reads try the fast tier, then the slow one; a whole read from the slow
//     tier fills the fast one as it streams (one fill per blob at a time;
//     a fill that falls behind the read is finished in the background).
//   - Writes go to both; the slow tier is committed first, so a blob is
//     acknowledged to the client only once the shared store holds it (a
//     second server on the same bucket can then read it, whatever happens to
//     this one). Then the index entry is written; the fast copy is
//     committed in the background, as is a read's fill (both are caches).
//   - FindMissing answers from the fast tier, then the index, and HEADs the
//     slow tier only for what neither knows (recording what it finds).
//
// Disagreement rule. The slow tier is the truth; the fast tier and the index
// are caches of it. Hearth never deletes from the slow tier, so an index
// entry (written only after the slow tier acknowledged the blob) is right
// unless someone else deleted the object (a bucket lifecycle rule): index
// entries expire (casindex TTL; keep it shorter than the bucket's expiry) and
// a read that finds the object gone drops the entry (unless it was written
// within the last minute: that read may have raced the upload; see
// casindex.DefaultFreshWindow) and reports NotFound.
// A stale entry can therefore make FindMissing say "present" for a blob a
// read cannot return; the REAPI answer is then a MISSING precondition
// failure on Execute or NOT_FOUND on the read, after which FindMissing is
// right again, and the action cache's completeness check makes a result
// referencing the blob a miss. An index that cannot be reached is skipped
// (FindMissing falls back to HEADs), never trusted.
package tiered

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// Index is the presence index of the slow tier (casindex.Index).
type Index interface {
	Has(ctx context.Context, ds []digest.Digest) ([]bool, error)
	Add(ctx context.Context, ds ...digest.Digest) error
	Remove(ctx context.Context, d digest.Digest) error
}

// Store is the fast/slow pair.
type Store struct {
	fast   cas.Store
	fill   cas.Store // fast, verifying: a fill never stores bytes that do not match
	slow   cas.Store
	index  Index // nil: none
	logger *slog.Logger
	// bg counts the fast tier's background commits and the refill loop
	// (Wait).
	bg      sync.WaitGroup
	refills refills
}

var _ cas.Store = (*Store)(nil)

// New returns the pair; index may be nil, logger nil means slog.Default().
func New(fast, slow cas.Store, index Index, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.Default()
	}
	return &Store{fast: fast, fill: cas.NewVerifying(fast), slow: slow, index: index, logger: logger}
}

// Wait returns once the fast tier's background commits started so far have
// finished (at shutdown, before the disk is released; in tests).
func (s *Store) Wait() { s.bg.Wait() }

// FindMissing: fast tier, then the index, then the slow tier for the rest.
func (s *Store) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	rest, err := s.fast.FindMissing(ctx, ds)
	if err != nil || len(rest) == 0 {
		return rest, err
	}
	if s.index != nil {
		has, err := s.index.Has(ctx, rest)
		if err != nil {
			s.logger.Warn("cas presence index unavailable; asking the slow tier", "err", err)
		} else {
			n := 0
			for i, d := range rest {
				if !has[i] {
					rest[n] = d
					n++
				}
			}
			rest = rest[:n]
			if n == 0 {
				return nil, nil
			}
		}
	}
	missing, err := s.slow.FindMissing(ctx, rest)
	if err != nil {
		return nil, err
	}
	if s.index != nil && len(missing) < len(rest) {
		found := make([]digest.Digest, 0, len(rest)-len(missing))
		i := 0
		for _, d := range rest {
			if i < len(missing) && missing[i] == d {
				i++
				continue
			}
			found = append(found, d)
		}
		if err := s.index.Add(ctx, found...); err != nil {
			s.logger.Warn("cas presence index: recording blobs found in the slow tier", "err", err)
		}
	}
	return missing, nil
}

// Open reads from the fast tier, else the slow one (filling the fast tier
// when the read starts at 0 and no other fill of the blob is under way). A
// blob gone from the slow tier is dropped from the index.
func (s *Store) Open(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, error) {
	r, err := s.fast.Open(ctx, d, offset)
	if err == nil || !errors.Is(err, cas.ErrNotFound) {
		return r, err
	}
	r, err = s.slow.Open(ctx, d, offset)
	if errors.Is(err, cas.ErrNotFound) && s.index != nil {
		if ierr := s.index.Remove(ctx, d); ierr != nil {
			s.logger.Warn("cas presence index: dropping a blob gone from the slow tier", "digest", d.String(), "err", ierr)
		}
	}
	if err != nil || offset != 0 || !s.claimFill(d) {
		return r, err
	}
	w, ferr := s.fill.Create(context.WithoutCancel(ctx), d)
	if ferr != nil {
		s.releaseFill(d)
		if !errors.Is(ferr, cas.ErrTooLarge) {
			s.logger.Warn("fast tier: cannot fill", "digest", d.String(), "err", ferr)
		}
		return r, nil
	}
	return &fillReader{r: r, w: newLossyWriter(w), s: s, d: d}, nil
}

// fillReader copies what the client reads into the fast tier and commits it
// when the read reaches the end; a read abandoned early discards the copy.
// It holds the store's claim on d's fill until the copy is committed,
// handed to the background or discarded.
type fillReader struct {
	r    io.ReadCloser
	w    *asyncWriter // nil once finished or failed
	s    *Store
	d    digest.Digest
	read int64
}

func (f *fillReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && f.w != nil {
		if _, werr := f.w.Write(p[:n]); werr != nil {
			f.drop(werr)
		}
		f.read += int64(n)
	}
	// The fill finishes once every byte of the blob has passed, not at
	// EOF: a reader that knows the size stops there (ByteStream's Read
	// reads through an io.LimitReader, which never asks for the EOF), and
	// a fill that waited for EOF was discarded by Close on every such read.
	if f.w != nil && f.read == f.d.Size {
		w, d, s := f.w, f.d, f.s
		f.w = nil
		if w.fellBehind() {
			// The disk could not keep up with the read: the fill is
			// finished from where it stopped, at the disk's pace, off
			// the client's path.
			s.resumeFill(d, w)
			return n, err
		}
		// The fill's Commit (an fsync of the whole blob) is off the
		// client's path: the fast tier is a cache, and the client already
		// has every byte.
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			defer s.releaseFill(d)
			if cerr := w.Commit(); cerr != nil {
				s.logger.Warn("fast tier: fill commit", "digest", d.String(), "err", cerr)
			}
			w.Close()
		}()
	}
	return n, err
}

func (f *fillReader) drop(err error) {
	f.s.logger.Warn("fast tier: fill failed", "digest", f.d.String(), "err", err)
	f.w.Close()
	f.w = nil
	f.s.releaseFill(f.d)
}

func (f *fillReader) Close() error {
	if f.w != nil {
		f.w.Close()
		f.w = nil
		f.s.releaseFill(f.d)
	}
	return f.r.Close()
}

// pather is a store whose blobs are files (cas.Disk).
type pather interface {
	Path(digest.Digest) (string, bool)
}

// remover is a store that can drop a blob found damaged (cas.Disk).
type remover interface {
	Remove(d digest.Digest, why string)
}

// Path returns the fast tier's file of d, if it is a disk store holding d,
// so that a file cache in front of the pair hardlinks what the disk holds
// and reads the rest through Open.
func (s *Store) Path(d digest.Digest) (string, bool) {
	if p, ok := s.fast.(pather); ok {
		return p.Path(d)
	}
	return "", false
}

// Remove drops a damaged file (one Path returned) from the fast tier. The
// slow tier is not touched: its copy was verified when written, and the
// next read that misses the fast tier verifies it again as it fills.
func (s *Store) Remove(d digest.Digest, why string) {
	if r, ok := s.fast.(remover); ok {
		r.Remove(d, why)
	}
}

// Create writes to both tiers.
func (s *Store) Create(ctx context.Context, d digest.Digest) (cas.Writer, error) {
	sw, err := s.slow.Create(ctx, d)
	if err != nil {
		return nil, err
	}
	fw, err := s.fast.Create(ctx, d)
	if err != nil {
		if !errors.Is(err, cas.ErrTooLarge) {
			s.logger.Warn("fast tier: cannot write; the blob goes to the slow tier only", "digest", d.String(), "err", err)
		}
		return &writer{s: s, d: d, ctx: ctx, slow: sw}, nil
	}
	return &writer{s: s, d: d, ctx: ctx, slow: sw, fast: newAsyncWriter(fw)}, nil
}

type writer struct {
	s          *Store
	d          digest.Digest
	ctx        context.Context
	slow, fast cas.Writer // fast nil: slow only
}

func (w *writer) Write(p []byte) (int, error) {
	n, err := w.slow.Write(p)
	if err != nil {
		return n, err
	}
	if w.fast != nil {
		if _, ferr := w.fast.Write(p[:n]); ferr != nil {
			w.s.logger.Warn("fast tier: write failed; the blob goes to the slow tier only", "digest", w.d.String(), "err", ferr)
			w.fast.Close()
			w.fast = nil
		}
	}
	return n, nil
}

// Commit: slow tier, then the index, then (in the background) the fast
// tier. Only the slow tier's failure fails the write.
func (w *writer) Commit() error {
	if err := w.slow.Commit(); err != nil {
		return err
	}
	if w.s.index != nil {
		if err := w.s.index.Add(w.ctx, w.d); err != nil {
			w.s.logger.Warn("cas presence index: recording a written blob", "digest", w.d.String(), "err", err)
		}
	}
	if w.fast != nil {
		// The fast copy is a cache of a blob the slow tier now holds
		// durably: its Commit (an fsync) is off the client's path.
		fast, d, logger := w.fast, w.d, w.s.logger
		w.fast = nil
		w.s.bg.Add(1)
		go func() {
			defer w.s.bg.Done()
			if err := fast.Commit(); err != nil {
				logger.Warn("fast tier: commit failed; the blob is in the slow tier only", "digest", d.String(), "err", err)
			}
			fast.Close()
		}()
	}
	return nil
}

func (w *writer) Close() error {
	if w.fast != nil {
		w.fast.Close()
	}
	return w.slow.Close()
}
