package casclient

import (
	"context"
	"errors"
	"fmt"
	"io"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// errClosed is returned by a Writer used after Close or Commit.
var errClosed = errors.New("casclient: writer already closed")

// Create starts writing the blob d. Blobs up to batchThreshold are buffered
// and sent with one BatchUpdateBlobs call on Commit; larger ones are streamed
// with ByteStream Write in chunkSize pieces as they are written, so memory
// stays bounded whatever the size. The empty blob is never sent: every
// server holds it.
func (s *Store) Create(ctx context.Context, d digest.Digest) (cas.Writer, error) {
	switch {
	case d.Size == 0:
		return &emptyWriter{d: d}, nil
	case d.Size <= batchThreshold:
		return &batchWriter{ctx: ctx, s: s, d: d, buf: make([]byte, 0, d.Size)}, nil
	}
	name := s.resourceName("uploads/"+uuid.NewString()+"/blobs", d)
	ctx, cancel := context.WithCancel(ctx)
	stream, err := s.bs.Write(ctx)
	if err != nil {
		cancel()
		return nil, fromStatus(opWrite, "write "+name, err)
	}
	return &streamWriter{name: name, d: d, stream: stream, cancel: cancel, buf: make([]byte, 0, chunkSize)}, nil
}

// emptyWriter "writes" the empty blob, which needs no transfer.
type emptyWriter struct {
	d       digest.Digest
	written bool
}

func (w *emptyWriter) Write(p []byte) (int, error) {
	if len(p) > 0 {
		w.written = true
		return 0, fmt.Errorf("casclient: write %s: %w: data written to an empty blob", w.d, cas.ErrMismatch)
	}
	return 0, nil
}

func (w *emptyWriter) Commit() error {
	if w.written || !w.d.IsEmpty() {
		return fmt.Errorf("casclient: write %s: %w: it is not the empty blob", w.d, cas.ErrMismatch)
	}
	return nil
}

func (w *emptyWriter) Close() error { return nil }

// batchWriter buffers a small blob and sends it on Commit.
type batchWriter struct {
	ctx    context.Context
	s      *Store
	d      digest.Digest
	buf    []byte
	closed bool
}

func (w *batchWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errClosed
	}
	if int64(len(w.buf)+len(p)) > w.d.Size {
		return 0, fmt.Errorf("casclient: write %s: %w: more than %d bytes written", w.d, cas.ErrMismatch, w.d.Size)
	}
	w.buf = append(w.buf, p...)
	return len(p), nil
}

func (w *batchWriter) Commit() error {
	if w.closed {
		return errClosed
	}
	w.closed = true
	if int64(len(w.buf)) != w.d.Size {
		return fmt.Errorf("casclient: write %s: %w: %d bytes written", w.d, cas.ErrMismatch, len(w.buf))
	}
	what := "BatchUpdateBlobs " + w.d.String()
	resp, err := w.s.cas.BatchUpdateBlobs(w.ctx, &repb.BatchUpdateBlobsRequest{
		InstanceName:   w.s.instance,
		Requests:       []*repb.BatchUpdateBlobsRequest_Request{{Digest: w.d.Proto(), Data: w.buf}},
		DigestFunction: w.d.Function,
	})
	w.buf = nil
	if err != nil {
		return fromStatus(opWrite, what, err)
	}
	rs := resp.GetResponses()
	if len(rs) != 1 || rs[0].GetDigest().GetHash() != w.d.Hash || rs[0].GetDigest().GetSizeBytes() != w.d.Size {
		return fmt.Errorf("casclient: %s: the server answered for %d other blobs", what, len(rs))
	}
	if st := status.FromProto(rs[0].GetStatus()); st.Code() != codes.OK {
		return fromStatus(opWrite, what, st.Err())
	}
	return nil
}

func (w *batchWriter) Close() error {
	w.closed = true
	w.buf = nil
	return nil
}

// streamWriter streams a large blob with ByteStream Write.
type streamWriter struct {
	name    string
	d       digest.Digest
	stream  bspb.ByteStream_WriteClient
	cancel  context.CancelFunc
	buf     []byte // pending data, sent when a chunk is full
	sent    int64  // bytes sent so far (the next write_offset)
	written int64  // bytes accepted from the caller
	// exists is set when the server ended the stream early because it
	// already holds the blob; the rest of the data is then dropped.
	exists bool
	err    error // sticky failure
	closed bool
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
		}
	}
	return n, nil
}

// send sends the pending data. An io.EOF from Send means the server ended
// the stream; its answer (maybe "already have it") comes from CloseAndRecv.
func (w *streamWriter) send(finish bool) error {
	req := &bspb.WriteRequest{WriteOffset: w.sent, Data: w.buf, FinishWrite: finish}
	if w.sent == 0 {
		req.ResourceName = w.name
	}
	err := w.stream.Send(req)
	if err == io.EOF {
		return w.endedEarly()
	}
	if err != nil {
		return fromStatus(opWrite, "write "+w.name, err)
	}
	w.sent += int64(len(w.buf))
	// A fresh buffer: gRPC allows stats handlers to look at a sent message
	// later, so its bytes must not be overwritten.
	w.buf = make([]byte, 0, min(chunkSize, w.d.Size-w.sent))
	return nil
}

// endedEarly interprets a stream the server closed before finish_write:
// committed_size equal to the blob's size (or -1, which compressed uploads
// use) means the blob exists and the upload is complete.
func (w *streamWriter) endedEarly() error {
	resp, err := w.stream.CloseAndRecv()
	if err != nil {
		return fromStatus(opWrite, "write "+w.name, err)
	}
	if c := resp.GetCommittedSize(); c != w.d.Size && c != -1 {
		return fmt.Errorf("casclient: write %s: the server ended the upload early at %d of %d bytes", w.name, c, w.d.Size)
	}
	w.exists = true
	w.buf = nil
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
	if w.exists {
		return nil
	}
	resp, err := w.stream.CloseAndRecv()
	if err != nil {
		return fromStatus(opWrite, "write "+w.name, err)
	}
	if c := resp.GetCommittedSize(); c != w.d.Size {
		return fmt.Errorf("casclient: write %s: the server committed %d of %d bytes", w.name, c, w.d.Size)
	}
	return nil
}

// Close ends the stream. Without a successful Commit the server never saw
// finish_write, so it keeps nothing.
func (w *streamWriter) Close() error {
	if !w.closed {
		w.closed = true
		w.cancel()
		w.buf = nil
	}
	return nil
}
