package tiered

import (
	"errors"
	"sync"

	"github.com/hearth-build/hearth/internal/cas"
)

// The fast tier's copy (a write's second leg, a read's fill) is written by
// a goroutine of its own, fed through a bounded queue of copied buffers: the
// client's stream only copies its bytes into the queue, while the hashing
// (the fill verifies) and the file writes run beside it. A profile of a cold
// 256 MiB read had 85 % of the stream goroutine's time in the fill's
// write(2) calls and SHA-256, and 7 % in gRPC. When the disk is slower than
// the stream for longer than the queue holds, the stream waits for it
// (backpressure) rather than dropping the copy.
const (
	asyncBufSize = 1 << 20
	asyncQueue   = 16 // buffers: 16 MiB queued per copy at most
)

var asyncBufs = sync.Pool{New: func() any { b := make([]byte, 0, asyncBufSize); return &b }}

var errAsyncClosed = errors.New("tiered: fast-tier copy already finished")

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
}

func newAsyncWriter(w cas.Writer) *asyncWriter {
	a := &asyncWriter{w: w, ch: make(chan *[]byte, asyncQueue), done: make(chan struct{})}
	go a.drain()
	return a
}

func (a *asyncWriter) drain() {
	defer close(a.done)
	for bp := range a.ch {
		if a.err == nil {
			if _, err := a.w.Write(*bp); err != nil {
				a.err = err
			}
		}
		*bp = (*bp)[:0]
		asyncBufs.Put(bp)
	}
}

func (a *asyncWriter) Write(p []byte) (int, error) {
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
			a.ch <- a.cur
			a.cur = nil
		}
	}
	return n, nil
}

// finish hands over what is buffered and waits for the goroutine.
func (a *asyncWriter) finish() {
	if a.shut {
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
	if a.err != nil {
		return a.err
	}
	return a.w.Commit()
}

func (a *asyncWriter) Close() error {
	a.finish()
	return a.w.Close()
}
