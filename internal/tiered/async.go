package tiered

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/hearth-build/hearth/internal/cas"
)

// The fast tier's copy (a write's second leg, a read's fill) is written by
// a goroutine of its own, fed through a bounded queue of copied buffers: the
// client's stream only copies its bytes into the queue, while the hashing
// (the fill verifies) and the file writes run beside it. A profile of a cold
// 256 MiB read had 85 % of the stream goroutine's time in the fill's
// write(2) calls and SHA-256, and 7 % in gRPC.
//
// When the disk is slower than the stream for longer than the queue holds
// (a large blob, or on two shared cores simply a moment in which the copy's
// goroutine does not get a core: a probe of 256 MiB cold reads at 350-670
// MiB/s fell behind every time, on a disk that takes 1.1 GB/s with fsync),
// a write's copy makes the stream wait (backpressure: the upload must reach
// both tiers), but a read's fill stops taking bytes instead (lossy): the
// client's read must not run at the local disk's pace for the sake of a
// cache. What the fill had queued is still written, and the store then
// finishes it in the background from where it stopped, with a ranged read
// of its own (see resumeFill): only the bytes the fill missed are read
// again.
const (
	asyncBufSize = 1 << 20
	asyncQueue   = 16 // buffers: 16 MiB queued per copy at most
)

var asyncBufs = sync.Pool{New: func() any { b := make([]byte, 0, asyncBufSize); return &b }}

var (
	errAsyncClosed = errors.New("tiered: fast-tier copy already finished")
	// errFellBehind is a lossy copy's Commit error when it stopped: it
	// holds only a prefix of the blob (see resume).
	errFellBehind = errors.New("tiered: the fast-tier copy fell behind the stream and stopped")
)

// asyncWriter is a cas.Writer whose writes reach w from a goroutine. Its
// Write never fails on w's account: w's first error is reported by Commit
// (which then commits nothing).
type asyncWriter struct {
	w    cas.Writer
	cur  *[]byte
	ch   chan *[]byte
	done chan struct{}
	err  error // w's first error; read after done
	shut bool
	// lossy: a full queue stops the copy instead of waiting (fills).
	lossy   bool
	stopped bool        // a lossy copy stopped taking bytes
	queued  int64       // bytes handed to the goroutine: all w gets
	discard atomic.Bool // Close: the goroutine skips what is still queued
}

func newAsyncWriter(w cas.Writer) *asyncWriter {
	a := &asyncWriter{w: w, ch: make(chan *[]byte, asyncQueue), done: make(chan struct{})}
	go a.drain()
	return a
}

// newLossyWriter is an asyncWriter that stops taking bytes when its queue
// is full rather than make the stream wait; what it queued is still
// written, and resume continues from there.
func newLossyWriter(w cas.Writer) *asyncWriter {
	a := newAsyncWriter(w)
	a.lossy = true
	return a
}

// fellBehind reports whether a lossy copy stopped.
func (a *asyncWriter) fellBehind() bool { return a.stopped }

func (a *asyncWriter) drain() {
	defer close(a.done)
	for bp := range a.ch {
		if a.err == nil && !a.discard.Load() {
			if _, err := a.w.Write(*bp); err != nil {
				a.err = err
			}
		}
		*bp = (*bp)[:0]
		asyncBufs.Put(bp)
	}
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	if a.stopped {
		return len(p), nil // not copied: Commit reports it, resume continues
	}
	if a.shut {
		return 0, errAsyncClosed
	}
	n := len(p)
	for len(p) > 0 {
		if a.cur == nil {
			a.cur = asyncBufs.Get().(*[]byte)
		}
		b := *a.cur
		k := copy(b[len(b):cap(b)], p)
		*a.cur = b[:len(b)+k]
		p = p[k:]
		if len(*a.cur) == cap(*a.cur) {
			if !a.send() {
				return n, nil
			}
		}
	}
	return n, nil
}

// send queues the full buffer; a lossy copy whose queue is full stops
// (returning false): the buffer is dropped, and the goroutine finishes
// writing what was queued before it.
func (a *asyncWriter) send() bool {
	n := int64(len(*a.cur)) // before the send: then the buffer is the goroutine's
	if !a.lossy {
		a.ch <- a.cur
		a.queued += n
		a.cur = nil
		return true
	}
	select {
	case a.ch <- a.cur:
		a.queued += n
		a.cur = nil
		return true
	default:
		a.stopped = true
		*a.cur = (*a.cur)[:0]
		asyncBufs.Put(a.cur)
		a.cur = nil
		a.shut = true
		close(a.ch)
		return false
	}
}

// finish hands over what is buffered and waits for the goroutine.
func (a *asyncWriter) finish() {
	if a.shut {
		<-a.done
		return
	}
	a.shut = true
	if a.cur != nil {
		a.queued += int64(len(*a.cur)) // before the send, as in send
		a.ch <- a.cur
		a.cur = nil
	}
	close(a.ch)
	<-a.done
}

// Commit waits for every queued write, then commits w, unless one failed
// or the copy stopped.
func (a *asyncWriter) Commit() error {
	a.finish()
	if a.stopped {
		return errFellBehind
	}
	if a.err != nil {
		return a.err
	}
	return a.w.Commit()
}

// resume waits for every queued write and returns w with the number of
// bytes it holds, for the caller to write the rest and commit; Close
// afterwards still closes w.
func (a *asyncWriter) resume() (cas.Writer, int64, error) {
	a.finish()
	if a.err != nil {
		return nil, 0, a.err
	}
	return a.w, a.queued, nil
}

// Close discards the copy unless it was committed or resumed: the queued
// writes that have not started are skipped, so closing an abandoned copy
// (a client that went away) waits for at most one disk write.
func (a *asyncWriter) Close() error {
	a.discard.Store(true)
	a.finish()
	return a.w.Close()
}
