package s3cas

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/hearth-build/hearth/internal/digest"
)

// bodyReader is one GET's body, with errors naming the store.
type bodyReader struct {
	s    *Store
	d    digest.Digest
	body io.ReadCloser
}

func (r *bodyReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if err != nil && err != io.EOF {
		err = r.s.wrap("reading "+r.s.Key(r.d), err)
	}
	return n, err
}

func (r *bodyReader) Close() error { return r.body.Close() }

// chunkReader reads a large blob as ranged GETs of readChunk bytes, up to
// readAhead fetched concurrently into memory, and yields them in order. One
// GET stream is bounded by one connection's throughput; several in flight
// fill the link (what a cold read of a large blob needs). Memory per reader
// is bounded by readAhead chunks.
type chunkReader struct {
	s      *Store
	d      digest.Digest
	cur    io.Reader // the chunk being read
	curBuf *[]byte   // cur's buffer, returned to chunkBufs when it is done
	first  io.ReadCloser
	chunks chan chan chunk // in order; each delivers one chunk
	cancel context.CancelFunc
	wg     sync.WaitGroup
	err    error
}

type chunk struct {
	buf  *[]byte // from chunkBufs; data is (*buf)[:n]
	data []byte
	err  error
}

// chunkBufs recycles the chunks' buffers: a fresh 8 MiB slice per chunk cost
// a page-faulting, zeroing pass over every byte read.
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

func putChunk(c chunk) {
	if c.buf != nil {
		chunkBufs.Put(c.buf)
	}
}

func newChunkReader(ctx context.Context, s *Store, d digest.Digest, first io.ReadCloser, next int64) *chunkReader {
	ctx, cancel := context.WithCancel(ctx)
	r := &chunkReader{
		s: s, d: d, first: first, cur: &bodyReader{s: s, d: d, body: first},
		chunks: make(chan chan chunk, readAhead), cancel: cancel,
	}
	r.wg.Add(1)
	go r.fetchAll(ctx, next)
	return r
}

// fetchAll starts one fetch per chunk from off; the buffered channel of
// pending chunks bounds how many are in flight.
func (r *chunkReader) fetchAll(ctx context.Context, off int64) {
	defer r.wg.Done()
	defer close(r.chunks)
	for ; off < r.d.Size; off += readChunk {
		n := min(readChunk, r.d.Size-off)
		c := make(chan chunk, 1)
		select {
		case r.chunks <- c:
		case <-ctx.Done():
			return
		}
		r.wg.Add(1)
		go func(off, n int64) {
			defer r.wg.Done()
			c <- r.fetch(ctx, off, n)
		}(off, n)
	}
}

func (r *chunkReader) fetch(ctx context.Context, off, n int64) chunk {
	body, err := r.s.get(ctx, r.d, off, n)
	if err != nil {
		return chunk{err: err}
	}
	defer body.Close()
	bp := chunkBufs.Get().(*[]byte)
	buf := (*bp)[:n]
	if _, err := io.ReadFull(body, buf); err != nil {
		chunkBufs.Put(bp)
		return chunk{err: r.s.wrap(fmt.Sprintf("reading %s at %d", r.s.Key(r.d), off), err)}
	}
	return chunk{buf: bp, data: buf}
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.cur != nil {
			n, err := r.cur.Read(p)
			if err == io.EOF {
				r.cur = nil
				if r.curBuf != nil {
					chunkBufs.Put(r.curBuf)
					r.curBuf = nil
				}
				if n > 0 {
					return n, nil
				}
				continue
			}
			if err != nil {
				r.err = err
			}
			return n, err
		}
		c, ok := <-r.chunks
		if !ok {
			r.err = io.EOF
			return 0, io.EOF
		}
		ch := <-c
		if ch.err != nil {
			r.err = ch.err
			return 0, r.err
		}
		r.cur, r.curBuf = &sliceReader{b: ch.data}, ch.buf
	}
}

func (r *chunkReader) Close() error {
	r.cancel()
	r.first.Close()
	go func() {
		// Drain so the fetchers' sends never block; they stop on cancel.
		for c := range r.chunks {
			putChunk(<-c)
		}
	}()
	r.wg.Wait()
	return nil
}

type sliceReader struct{ b []byte }

func (s *sliceReader) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}
