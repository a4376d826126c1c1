package casclient

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// streamWriter streams a large blob with ByteStream Write.
//
// When the stream breaks transiently (a retryable code of the Store's
// policy, or ABORTED: a Hearth server's answer to a resumed upload whose
// previous stream it has not let go of yet) the writer waits its back-off,
// asks the server with QueryWriteStatus how far the upload got, and goes on
// as the ByteStream spec allows:
//   - complete: the blob is there (this upload reached it, or another
//     client's did): done, the rest of the data is dropped.
//   - committed_size C, and the writer still holds the bytes from C on: a
//     new stream under the same name starts at write_offset C (the spec's
//     resume: the first write_offset equals what QueryWriteStatus says).
//     It holds the last replayWindow bytes it sent, which covers what can
//     be in flight unseen by the server.
//   - NOT_FOUND (the server knows nothing of the upload: another replica
//     after a fail-over, or a restarted server) or a C it no longer holds:
//     a new upload, under a new uuid, from 0 — possible while the writer
//     still holds byte 0, that is for a blob of at most replayWindow bytes
//     or before more than that was sent.
//   - otherwise the upload fails, with the UNAVAILABLE it met, wrapping
//     cas.ErrUnavailable, and a message saying the data is gone. A cas.Writer is fed from a stream it cannot
//     rewind, and keeping every large upload whole in memory, or spooling it
//     to disk, would make every upload pay for a rare fail-over; the
//     caller, which has the source, may upload again.
//
// The old stream is cancelled before the back-off, so by the time of the
// QueryWriteStatus the server has let go of it and its committed size no
// longer moves.
type streamWriter struct {
	s        *Store
	ctx      context.Context // the writer's, marked SelfRetried
	closeAll context.CancelFunc
	name     string // changes when the upload restarts
	d        digest.Digest

	stream bspb.ByteStream_WriteClient // nil: none open
	cancel context.CancelFunc          // ends stream's attempt
	fresh  bool                        // nothing sent on stream yet: the next request names the resource
	n      int                         // retries over the writer's life (a Send that returns proves nothing reached the server)

	buf       []byte   // pending data, sent when a chunk is full
	sent      int64    // bytes sent so far (the next write_offset)
	hist      [][]byte // the last chunks sent, at most replayWindow bytes (and at least one chunk)
	histStart int64    // the offset of hist[0]
	histBytes int64
	finishing bool  // the request with finish_write was sent
	written   int64 // bytes accepted from the caller
	// exists is set when the server ended the stream early because it
	// already holds the blob; the rest of the data is then dropped.
	exists bool
	err    error // sticky failure
	closed bool
}

// open starts a stream for the next requests.
func (w *streamWriter) open() error {
	actx, cancel := w.s.retry.Attempt(w.ctx)
	stream, err := w.s.bs.Write(actx)
	if err != nil {
		cancel()
		return err
	}
	w.stream, w.cancel, w.fresh = stream, cancel, true
	return nil
}

func (w *streamWriter) dropStream() {
	if w.stream != nil {
		w.cancel()
		w.stream, w.cancel = nil, nil
	}
}

func (w *streamWriter) Write(p []byte) (int, error) {
	switch {
	case w.closed:
		return 0, errClosed
	case w.err != nil:
		return 0, w.err
	case w.written+int64(len(p)) > w.d.Size:
		w.err = fmt.Errorf("casclient: write %s: %w: more than %d bytes written", w.name, cas.ErrMismatch, w.d.Size)
		return 0, w.err
	}
	w.written += int64(len(p))
	if w.exists {
		return len(p), nil
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), chunkSize-len(w.buf))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		if len(w.buf) == chunkSize && w.sent+chunkSize < w.d.Size {
			// A full chunk is sent unless it ends the blob: the last
			// chunk waits for Commit, which sends it with finish_write.
			// (Write never accepts more than the blob's size, so a full
			// last chunk means p is used up.)
			if err := w.send(false); err != nil {
				w.err = err
				return 0, err
			}
			if w.exists {
				return n, nil
			}
		}
	}
	return n, nil
}

// send sends the pending data, recovering from a broken stream.
func (w *streamWriter) send(finish bool) error {
	for {
		req := &bspb.WriteRequest{WriteOffset: w.sent, Data: w.buf, FinishWrite: finish}
		if w.fresh {
			req.ResourceName = w.name
		}
		err := w.stream.Send(req)
		if err == nil {
			w.fresh, w.finishing = false, finish
			w.keep(w.buf)
			// A fresh buffer: gRPC allows stats handlers to look at a
			// sent message later, and the replay needs the old one.
			w.buf = make([]byte, 0, min(chunkSize, w.d.Size-w.sent))
			return nil
		}
		if err == io.EOF {
			// The server ended the stream: its answer says why.
			if err = w.endedEarly(); err == nil {
				return nil
			}
		}
		if err := w.recover(err); err != nil {
			return err
		}
		if w.exists {
			return nil
		}
	}
}

// keep records a sent chunk for a replay, forgetting the oldest beyond
// replayWindow.
func (w *streamWriter) keep(chunk []byte) {
	w.sent += int64(len(chunk))
	w.hist = append(w.hist, chunk)
	w.histBytes += int64(len(chunk))
	for len(w.hist) > 1 && w.histBytes-int64(len(w.hist[0])) >= replayWindow {
		w.histStart += int64(len(w.hist[0]))
		w.histBytes -= int64(len(w.hist[0]))
		w.hist[0] = nil
		w.hist = w.hist[1:]
	}
}

// endedEarly interprets a stream the server closed before finish_write:
// committed_size equal to the blob's size (or -1, which compressed uploads
// use) means the blob exists and the upload is complete. A failure status
// is returned as it is, for recover to judge.
func (w *streamWriter) endedEarly() error {
	resp, err := w.stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if c := resp.GetCommittedSize(); c != w.d.Size && c != -1 {
		return fmt.Errorf("casclient: write %s: the server ended the upload early at %d of %d bytes", w.name, c, w.d.Size)
	}
	w.done()
	return nil
}

// done records that the server holds the blob.
func (w *streamWriter) done() {
	w.exists = true
	w.buf, w.hist = nil, nil
	w.dropStream()
}

// recover handles cause, the failure of the current stream: unless it is
// final, it retries until a new stream is where the old one was (or the
// blob turned out to exist), and returns nil. It returns the final error.
func (w *streamWriter) recover(cause error) error {
	for {
		w.dropStream()
		if _, ok := status.FromError(cause); !ok {
			return cause // ours (the server broke the protocol), named
		}
		p := w.s.retry
		if status.Code(cause) == codes.Aborted && p.Limit > 0 {
			p.Codes = append(slices.Clone(p.Codes), codes.Aborted)
			if len(p.Codes) == 1 {
				p.Codes = append(p.Codes, codes.Unavailable) // what no codes meant
			}
		}
		if !p.Again(w.ctx, "write "+w.name, w.n, cause) {
			return fromStatus(opWrite, tried("write "+w.name, w.n+1), cause)
		}
		w.n++
		final, err := w.resume(cause)
		if err == nil {
			return nil
		}
		if final {
			return err
		}
		cause = err
	}
}

// resume asks how far the upload got and continues it on a new stream,
// replaying what the server lacks; final says err is not to be retried.
func (w *streamWriter) resume(cause error) (final bool, err error) {
	actx, cancel := w.s.retry.Attempt(w.ctx)
	q, err := w.s.bs.QueryWriteStatus(actx, &bspb.QueryWriteStatusRequest{ResourceName: w.name})
	cancel()
	from := int64(-1) // restart
	switch {
	case err == nil && q.GetComplete():
		w.done()
		return false, nil
	case err == nil:
		if c := q.GetCommittedSize(); c >= w.histStart && c <= w.sent {
			from = c
		}
	case status.Code(err) != codes.NotFound:
		return false, err
	}
	if from < 0 {
		if w.histStart > 0 {
			// cas.ErrUnavailable: a caller that has the source may
			// upload it again (outputs does).
			return true, fmt.Errorf("casclient: write %s: %w: the upload cannot go on after the stream broke (the server has %s) and restarting it needs the first %d bytes, which are no longer held: %w",
				w.name, cas.ErrUnavailable, committedOrNot(q, err), w.histStart, cause)
		}
		// A new name: the spec lets a first write_offset be only what
		// QueryWriteStatus would answer, which is 0 for a new upload.
		w.name = w.s.resourceName("uploads/"+uuid.NewString()+"/blobs", w.d)
		from = 0
	}
	if err := w.open(); err != nil {
		return false, err
	}
	return false, w.replay(from)
}

func committedOrNot(q *bspb.QueryWriteStatusResponse, err error) string {
	if err != nil {
		return "no such upload"
	}
	return fmt.Sprintf("%d bytes of it", q.GetCommittedSize())
}

// replay sends again, on the new stream, the data sent from offset from
// on (and finish_write if it was sent). A stream the server ends meanwhile
// (io.EOF) is left for the next Send or CloseAndRecv to report.
func (w *streamWriter) replay(from int64) error {
	type piece struct {
		off  int64
		data []byte
	}
	var pieces []piece
	off := w.histStart
	for _, c := range w.hist {
		end := off + int64(len(c))
		if end > from {
			skip := max(0, from-off)
			pieces = append(pieces, piece{off + skip, c[skip:]})
		}
		off = end
	}
	if len(pieces) == 0 {
		if !w.finishing {
			return nil // the next Send names the resource
		}
		pieces = append(pieces, piece{off: w.sent})
	}
	for i, pc := range pieces {
		req := &bspb.WriteRequest{WriteOffset: pc.off, Data: pc.data, FinishWrite: w.finishing && i == len(pieces)-1}
		if w.fresh {
			req.ResourceName = w.name
		}
		err := w.stream.Send(req)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		w.fresh = false
	}
	return nil
}

func (w *streamWriter) Commit() error {
	if w.closed {
		return errClosed
	}
	if w.err != nil {
		return w.err
	}
	if w.written != w.d.Size {
		w.err = fmt.Errorf("casclient: write %s: %w: %d bytes written", w.name, cas.ErrMismatch, w.written)
		return w.err
	}
	defer w.Close()
	if w.exists {
		return nil
	}
	if err := w.send(true); err != nil {
		return err
	}
	for !w.exists {
		resp, err := w.stream.CloseAndRecv()
		if err == nil {
			if c := resp.GetCommittedSize(); c != w.d.Size {
				return fmt.Errorf("casclient: write %s: the server committed %d of %d bytes", w.name, c, w.d.Size)
			}
			return nil
		}
		if err := w.recover(err); err != nil {
			return err
		}
	}
	return nil
}

// Close ends the stream. Without a successful Commit the server never saw
// finish_write, so it keeps nothing.
func (w *streamWriter) Close() error {
	if !w.closed {
		w.closed = true
		w.dropStream()
		w.closeAll()
		w.buf, w.hist = nil, nil
	}
	return nil
}
