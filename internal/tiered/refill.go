package tiered

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/hearth-build/hearth/internal/digest"
)

// maxRefills bounds the fills waiting to be finished in the background:
// past it a fill is dropped this time (the next cold read tries again), so
// a burst of large cold reads costs bounded open files and a bounded
// shutdown (Wait finishes the queue).
const maxRefills = 16

// refills is the queue of fills that fell behind the client's read (see
// newLossyWriter), finished one at a time by one goroutine that exists
// only while the queue is not empty, and the set of blobs being filled.
type refills struct {
	mu      sync.Mutex
	queue   []refill
	running bool
	// filling holds the blobs with a fill under way: a read's inline fill
	// until its commit is done, then its background finish if it fell
	// behind. A read of such a blob that misses the fast tier streams from
	// the slow tier without a fill of its own: a second copy would only
	// compete with the first for the disk and the CPU (and make the first
	// fall behind) to store the same file.
	filling map[digest.Digest]bool
}

// refill is a stopped fill: w holds a prefix of d's bytes.
type refill struct {
	d digest.Digest
	w *asyncWriter
}

// claimFill marks d as being filled, unless it already is.
func (s *Store) claimFill(d digest.Digest) bool {
	q := &s.refills
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.filling[d] {
		return false
	}
	if q.filling == nil {
		q.filling = make(map[digest.Digest]bool)
	}
	q.filling[d] = true
	return true
}

// releaseFill ends the fill of d, done or not.
func (s *Store) releaseFill(d digest.Digest) {
	q := &s.refills
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.filling, d)
}

// resumeFill queues the stopped fill w of d to be finished in the
// background; d stays claimed until then.
func (s *Store) resumeFill(d digest.Digest, w *asyncWriter) {
	q := &s.refills
	q.mu.Lock()
	if len(q.queue) >= maxRefills {
		q.mu.Unlock()
		w.Close()
		s.releaseFill(d)
		return
	}
	q.queue = append(q.queue, refill{d: d, w: w})
	if !q.running {
		q.running = true
		s.bg.Add(1)
		go s.refillLoop()
	}
	q.mu.Unlock()
}

func (s *Store) refillLoop() {
	defer s.bg.Done()
	q := &s.refills
	for {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		job := q.queue[0]
		q.queue = q.queue[1:]
		q.mu.Unlock()
		if err := s.finishFill(context.Background(), job); err != nil {
			s.logger.Warn("fast tier: background fill", "digest", job.d.String(), "err", err)
		}
		s.releaseFill(job.d)
	}
}

// finishFill writes the bytes a stopped fill missed, read from the slow
// tier from where it stopped, at whatever pace the disk takes, and commits
// it: the fill's writer verifies the whole blob (it hashed the prefix as
// it was written), so nothing that does not match reaches the fast tier.
func (s *Store) finishFill(ctx context.Context, job refill) error {
	defer job.w.Close()
	w, off, err := job.w.resume()
	if err != nil {
		return err
	}
	s.logger.Debug("fast tier: finishing a fill that fell behind the read", "digest", job.d.String(), "from", off)
	if off < job.d.Size {
		r, err := s.slow.Open(ctx, job.d, off)
		if err != nil {
			return err
		}
		defer r.Close()
		// Buffered so the disk gets 1 MiB writes, not io.Copy's 32 KiB.
		n, err := io.Copy(w, bufio.NewReaderSize(io.LimitReader(r, job.d.Size-off), asyncBufSize))
		if err != nil {
			return err
		}
		if n != job.d.Size-off {
			return fmt.Errorf("tiered: the slow tier's copy of %s ended after %d of its %d bytes", job.d, off+n, job.d.Size)
		}
	}
	return w.Commit()
}
