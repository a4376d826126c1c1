package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
)

// Defaults for resumable uploads.
const (
	// DefaultUploadIdleTimeout is how long a broken upload stays resumable.
	DefaultUploadIdleTimeout = 10 * time.Minute
	// DefaultMaxIdleUploads bounds the resumable uploads kept at once; each
	// holds an open temporary file. The oldest idle one is dropped first.
	DefaultMaxIdleUploads = 256
	// DefaultUploadTakeoverWait is how long a new stream waits for the stream that
	// still owns an upload to notice it is dead (a client that reconnects
	// fast after a network error), before answering ABORTED.
	DefaultUploadTakeoverWait = 2 * time.Second
)

// upload is one ByteStream upload session: the store Writer that holds the
// bytes received so far (in the store's temporary file, invisible until
// Commit), kept across Write streams so that a broken stream can be resumed.
type upload struct {
	key string
	rn  ResourceName

	// committed is the number of uncompressed bytes written to w; read by
	// QueryWriteStatus while a stream writes.
	committed atomic.Int64

	// Guarded by uploads.mu.
	busy     bool          // a Write stream owns the upload
	released chan struct{} // closed when the owning stream lets go
	idleAt   time.Time     // when the last stream let go
	gone     bool          // removed from the registry; w is closed

	// Owned by the stream that holds busy, or by the registry when idle.
	w cas.Writer
}

// uploads is the registry of upload sessions by resource name. Sessions live
// in memory only: after a restart QueryWriteStatus answers NOT_FOUND and the
// client starts again, which is always correct for content-addressed data.
type uploads struct {
	uploadOptions

	mu    sync.Mutex
	m     map[string]*upload
	timer *time.Timer // sweeps expired idle sessions; nil when none is idle
}

// uploadOptions tunes the session registry; zero fields take the defaults.
type uploadOptions struct {
	idleTimeout  time.Duration
	maxIdle      int
	takeoverWait time.Duration
}

func newUploads(o uploadOptions) *uploads {
	if o.idleTimeout <= 0 {
		o.idleTimeout = DefaultUploadIdleTimeout
	}
	if o.maxIdle <= 0 {
		o.maxIdle = DefaultMaxIdleUploads
	}
	if o.takeoverWait <= 0 {
		o.takeoverWait = DefaultUploadTakeoverWait
	}
	return &uploads{uploadOptions: o, m: make(map[string]*upload)}
}

// acquire returns the session for rn, creating it if needed, owned by the
// caller until release or discard. If another stream owns it, acquire waits
// briefly for that stream to end and then fails with ABORTED: two streams
// must never interleave their bytes.
func (u *uploads) acquire(ctx context.Context, rn ResourceName) (*upload, error) {
	key := rn.sessionKey()
	deadline := time.NewTimer(u.takeoverWait)
	defer deadline.Stop()
	for {
		u.mu.Lock()
		up := u.m[key]
		if up == nil {
			up = &upload{key: key, rn: rn}
			u.m[key] = up
		}
		if !up.busy {
			up.busy = true
			up.released = make(chan struct{})
			u.mu.Unlock()
			return up, nil
		}
		released := up.released
		u.mu.Unlock()
		select {
		case <-released:
		case <-deadline.C:
			return nil, status.Errorf(codes.Aborted, "upload %q is being written by another stream; retry after QueryWriteStatus", rn.String())
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// release hands an owned session back: it stays resumable until it has been
// idle for idleTimeout.
func (u *uploads) release(up *upload) {
	u.mu.Lock()
	up.busy = false
	up.idleAt = time.Now()
	close(up.released)
	victims := u.overflowLocked()
	if u.timer == nil {
		u.timer = time.AfterFunc(u.idleTimeout, u.sweep)
	}
	u.mu.Unlock()
	closeUploads(victims, "too many resumable uploads")
}

// discard ends an owned session: its writer is closed (an uncommitted write
// is thrown away) and the name is forgotten.
func (u *uploads) discard(up *upload) {
	u.mu.Lock()
	if u.m[up.key] == up {
		delete(u.m, up.key)
	}
	up.gone = true
	up.busy = false
	close(up.released)
	u.mu.Unlock()
	if up.w != nil {
		up.w.Close()
		up.w = nil
	}
}

// discardIdle drops the session of rn if no stream owns it; used when the
// blob turned out to exist already, so the partial upload is useless.
func (u *uploads) discardIdle(rn ResourceName) {
	u.mu.Lock()
	up := u.m[rn.sessionKey()]
	if up == nil || up.busy {
		u.mu.Unlock()
		return
	}
	delete(u.m, up.key)
	up.gone = true
	u.mu.Unlock()
	closeUploads([]*upload{up}, "blob exists")
}

// progress reports the bytes committed to the session of rn, if there is one.
func (u *uploads) progress(rn ResourceName) (int64, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	up := u.m[rn.sessionKey()]
	if up == nil {
		return 0, false
	}
	return up.committed.Load(), true
}

// overflowLocked removes the oldest idle sessions beyond maxIdle and returns
// them for closing outside the lock.
func (u *uploads) overflowLocked() []*upload {
	var idle []*upload
	for _, up := range u.m {
		if !up.busy {
			idle = append(idle, up)
		}
	}
	if len(idle) <= u.maxIdle {
		return nil
	}
	sort.Slice(idle, func(i, j int) bool { return idle[i].idleAt.Before(idle[j].idleAt) })
	victims := idle[:len(idle)-u.maxIdle]
	for _, up := range victims {
		delete(u.m, up.key)
		up.gone = true
	}
	return victims
}

// sweep closes sessions idle for longer than idleTimeout and schedules itself
// again while idle sessions remain.
func (u *uploads) sweep() {
	now := time.Now()
	var expired []*upload
	u.mu.Lock()
	next := time.Duration(-1)
	for key, up := range u.m {
		if up.busy {
			continue
		}
		if left := u.idleTimeout - now.Sub(up.idleAt); left > 0 {
			if next < 0 || left < next {
				next = left
			}
			continue
		}
		delete(u.m, key)
		up.gone = true
		expired = append(expired, up)
	}
	if next >= 0 {
		u.timer = time.AfterFunc(next, u.sweep)
	} else {
		u.timer = nil
	}
	u.mu.Unlock()
	closeUploads(expired, "idle timeout")
}

func (u *uploads) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m)
}

// closeUploads closes the writers of sessions already removed from the
// registry. Nobody else touches them: they were idle, and acquire can no
// longer find them.
func closeUploads(ups []*upload, why string) {
	for _, up := range ups {
		slog.Debug("bytestream: dropping resumable upload", "resource_name", up.key, "committed", up.committed.Load(), "reason", why)
		if up.w != nil {
			up.w.Close()
			up.w = nil
		}
	}
}

// requestSource yields the data of a Write stream's requests, checking each
// request against the first: the same resource_name if set, contiguous
// write_offsets, nothing after finish_write. Its first error sticks.
type requestSource struct {
	stream bspb.ByteStream_WriteServer
	name   string
	// next is the write_offset the next request must carry.
	next    int64
	pending []byte
	// finished: a request had finish_write; eof: the client then closed.
	finished, eof bool
	// halfClosed: the client closed the stream without finish_write.
	halfClosed bool
	// transportErr: the stream broke (client cancelled, connection lost).
	transportErr error
	err          error
}

var errHalfClosed = errors.New("the client closed the stream without finish_write")

func newRequestSource(stream bspb.ByteStream_WriteServer, first *bspb.WriteRequest) *requestSource {
	return &requestSource{
		stream:   stream,
		name:     first.GetResourceName(),
		next:     first.GetWriteOffset() + int64(len(first.GetData())),
		pending:  first.GetData(),
		finished: first.GetFinishWrite(),
	}
}

// chunk returns the data of the next request (possibly empty), or io.EOF
// once the client has closed the stream after finish_write.
func (s *requestSource) chunk() ([]byte, error) {
	if s.err != nil {
		return nil, s.err
	}
	if len(s.pending) > 0 {
		p := s.pending
		s.pending = nil
		return p, nil
	}
	if s.eof {
		return nil, io.EOF
	}
	req, err := s.stream.Recv()
	switch {
	case err == io.EOF && s.finished:
		s.eof = true
		return nil, io.EOF
	case err == io.EOF:
		s.halfClosed = true
		s.err = errHalfClosed
	case err != nil:
		s.transportErr = err
		s.err = err
	case s.finished:
		s.err = invalidf("a WriteRequest (write_offset %d) of %s followed the one with finish_write", req.GetWriteOffset(), s.name)
	case req.GetResourceName() != "" && req.GetResourceName() != s.name:
		s.err = invalidf("WriteRequest names %q but the stream's first request named %q", req.GetResourceName(), s.name)
	case req.GetWriteOffset() != s.next:
		s.err = invalidf("write_offset %d of %s, expected %d: the first write_offset plus the bytes sent since", req.GetWriteOffset(), s.name, s.next)
	default:
		s.next += int64(len(req.GetData()))
		s.finished = req.GetFinishWrite()
		return req.GetData(), nil
	}
	return nil, s.err
}

// Read makes the request data an io.Reader, for the zstd decoder.
func (s *requestSource) Read(p []byte) (int, error) {
	for len(s.pending) == 0 {
		b, err := s.chunk()
		if err != nil {
			return 0, err
		}
		s.pending = b
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	return n, nil
}

// copyTo writes every request's data to w until finish_write.
func (s *requestSource) copyTo(w io.Writer) error {
	for {
		b, err := s.chunk()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(b) > 0 {
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
	}
}

// sessionWriter writes uncompressed bytes into an upload's store writer,
// counting them as committed and refusing more than the declared size.
type sessionWriter struct {
	up *upload
	rn ResourceName
	// skip is how many more bytes to drop before writing: a stream that
	// starts again at 0 re-sends bytes the session already holds.
	skip int64
}

func (w *sessionWriter) Write(p []byte) (int, error) {
	all := len(p)
	if w.skip > 0 {
		k := min(w.skip, int64(len(p)))
		w.skip -= k
		p = p[k:]
		if len(p) == 0 {
			return all, nil
		}
	}
	n, err := w.write(p)
	return all - len(p) + n, err
}

func (w *sessionWriter) write(p []byte) (int, error) {
	size := w.rn.Digest.Size
	if c := w.up.committed.Load(); int64(len(p)) > size-c {
		return 0, invalidf("%s: received more than the %d bytes its name declares", w.rn, size)
	}
	n, err := w.up.w.Write(p)
	w.up.committed.Add(int64(n))
	if err != nil {
		return n, toStatus(fmt.Errorf("write %s: %w", w.rn, err))
	}
	return n, nil
}

// maxDecoderWindow bounds the memory a compressed upload may make the
// decoder allocate. 64 MiB covers zstd's levels up to --ultra -22 on blobs
// of any size and "--long" windows up to 2^26.
const maxDecoderWindow = 64 << 20

var decoderPool = sync.Pool{New: func() any {
	// Concurrency 1 decodes synchronously in the caller: no goroutines to
	// leak when a stream breaks, and memory bounded per upload.
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxDecoderWindow))
	if err != nil {
		panic(fmt.Sprintf("zstd.NewReader with constant options: %v", err))
	}
	return d
}}

// decompress streams the zstd data of src's requests into dst. Errors of dst
// and src are returned as they are; anything else is bad compressed data.
func decompress(dst *sessionWriter, src *requestSource) error {
	dec := decoderPool.Get().(*zstd.Decoder)
	defer func() {
		dec.Reset(nil) // drop the reference to the stream
		decoderPool.Put(dec)
	}()
	if err := dec.Reset(src); err != nil {
		return toStatus(err)
	}
	_, err := dec.WriteTo(dst)
	if src.err != nil {
		return src.err
	}
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err // from dst
		}
		return invalidf("compressed data of %s is not valid zstd: %v", dst.rn, err)
	}
	// The decoder may stop at the end of the last frame without reading the
	// close that follows finish_write; anything more than that is invalid.
	for {
		b, err := src.chunk()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(b) > 0 {
			return invalidf("%s: %d bytes of data follow the end of the zstd stream", dst.rn, len(b))
		}
	}
}
