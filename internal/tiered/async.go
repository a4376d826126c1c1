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
// (a large blob: the kernel throttles page-cache writers to the disk's
// speed, while S3 on a good link reads faster), a write's copy makes the
// stream wait (backpressure: the upload must reach both tiers), but a
// read's fill gives up instead (lossy): the client's read must not run at
// the local disk's speed for the sake of a cache. The store then fills the
// blob in the background by a read of its own (see refill).
const (
	asyncBufSize = 1 << 20
	asyncQueue   = 16 // buffers: 16 MiB queued per copy at most
)

var asyncBufs = sync.Pool{New: func() any { b := make([]byte, 0, asyncBufSize); return &b }}

var (
	errAsyncClosed = errors.New("tiered: fast-tier copy already finished")
	// errFellBehind is a lossy copy's Commit error when it gave up.
	errFellBehind = errors.New("tiered: the fast-tier copy fell behind the stream and was dropped")
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
	// lossy: a full queue drops the copy instead of waiting (fills).
	lossy  bool
	behind atomic.Bool // a lossy copy gave up (the goroutine then discards)
}

func newAsyncWriter(w cas.Writer) *asyncWriter {
	a := &asyncWriter{w: w, ch: make(chan *[]byte, asyncQueue), done: make(chan struct{})}
	go a.drain()
	return a
}

// newLossyWriter is an asyncWriter that drops the copy when its queue is
// full rather than make the stream wait.
func newLossyWriter(w cas.Writer) *asyncWriter {
	a := newAsyncWriter(w)
	a.lossy = true
	return a
}

// fellBehind reports whether a lossy copy gave up.
func (a *asyncWriter) fellBehind() bool { return a.behind.Load() }

func (a *asyncWriter) drain() {
	defer close(a.done)
	for bp := range a.ch {
		if a.err == nil && !a.behind.Load() {
			if _, err := a.w.Write(*bp); err != nil {
				a.err = err
			}
		}
		*bp = (*bp)[:0]
		asyncBufs.Put(bp)
	}
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	if a.behind.Load() {
		return len(p), nil // dropped: Commit reports it
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

// send queues the full buffer; a lossy copy whose queue is full gives up
// (returning false) and lets the goroutine finish.
func (a *asyncWriter) send() bool {
	if !a.lossy {
		a.ch <- a.cur
		a.cur = nil
		return true
	}
	select {
	case a.ch <- a.cur:
		a.cur = nil
		return true
	default:
		a.behind.Store(true)
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
		a.ch <- a.cur
		a.cur = nil
	}
	close(a.ch)
	<-a.done
}

// Commit waits for every queued write, then commits w, unless one failed.
func (a *asyncWriter) Commit() error {
	a.finish()
	if a.behind.Load() {
		return errFellBehind
	}
	if a.err != nil {
		return a.err
	}
	return a.w.Commit()
}

func (a *asyncWriter) Close() error {
	a.finish()
	return a.w.Close()
}
