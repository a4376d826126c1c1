package tiered

import (
	"bufio"
	"context"
	"errors"
	"sync"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// maxRefills bounds the blobs waiting to be filled in the background: past
// it a blob is simply not filled this time (the next cold read tries again),
// so a burst of large cold reads costs bounded memory and a bounded
// shutdown (Wait finishes the queue).
const maxRefills = 16

// refills is the queue of blobs whose fill fell behind the client's read
// (see newLossyWriter), filled one at a time by one goroutine that exists
// only while the queue is not empty.
type refills struct {
	mu      sync.Mutex
	queue   []digest.Digest
	queued  map[digest.Digest]bool
	running bool
}

// refill queues d for a background fill of the fast tier.
func (s *Store) refill(d digest.Digest) {
	q := &s.refills
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.queued[d] || len(q.queue) >= maxRefills {
		return
	}
	if q.queued == nil {
		q.queued = make(map[digest.Digest]bool)
	}
	q.queued[d] = true
	q.queue = append(q.queue, d)
	if !q.running {
		q.running = true
		s.bg.Add(1)
		go s.refillLoop()
	}
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
		d := q.queue[0]
		q.queue = q.queue[1:]
		q.mu.Unlock()
		if err := s.fillFromSlow(context.Background(), d); err != nil {
			s.logger.Warn("fast tier: background fill", "digest", d.String(), "err", err)
		}
		q.mu.Lock()
		delete(q.queued, d)
		q.mu.Unlock()
	}
}

// fillFromSlow copies d from the slow tier into the fast one, verified, at
// whatever pace the disk takes.
func (s *Store) fillFromSlow(ctx context.Context, d digest.Digest) error {
	if missing, err := s.fast.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) == 0 {
		return err
	}
	r, err := s.slow.Open(ctx, d, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	// Buffered so the disk gets 1 MiB writes, not io.Copy's 32 KiB.
	err = cas.Copy(ctx, s.fill, d, bufio.NewReaderSize(r, asyncBufSize))
	if errors.Is(err, cas.ErrTooLarge) {
		return nil
	}
	return err
}
