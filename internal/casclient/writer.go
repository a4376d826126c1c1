package casclient

import (
	"context"
	"errors"
	"fmt"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/rpcretry"
)

// errClosed is returned by a Writer used after Close or Commit.
var errClosed = errors.New("casclient: writer already closed")

// Create starts writing the blob d. Blobs up to batchThreshold are buffered
// and sent with one BatchUpdateBlobs call on Commit; larger ones are streamed
// with ByteStream Write in chunkSize pieces as they are written, so memory
// stays bounded whatever the size. The empty blob is never sent: every
// server holds it. Both are retried on transient failures: see
// streamWriter for what a broken stream can and cannot survive.
func (s *Store) Create(ctx context.Context, d digest.Digest) (cas.Writer, error) {
	switch {
	case d.Size == 0:
		return &emptyWriter{d: d}, nil
	case d.Size <= batchThreshold:
		return &batchWriter{ctx: ctx, s: s, d: d, buf: make([]byte, 0, d.Size)}, nil
	}
	ctx, cancel := context.WithCancel(rpcretry.SelfRetried(ctx))
	w := &streamWriter{
		s: s, ctx: ctx, closeAll: cancel, d: d,
		name: s.resourceName("uploads/"+uuid.NewString()+"/blobs", d),
		buf:  make([]byte, 0, chunkSize),
	}
	n, err := do(ctx, s.retry, "write "+w.name, func(context.Context) error { return w.open() })
	if err != nil {
		cancel()
		return nil, fromStatus(opWrite, tried("write "+w.name, n), err)
	}
	return w, nil
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
	req := &repb.BatchUpdateBlobsRequest{
		InstanceName:   w.s.instance,
		Requests:       []*repb.BatchUpdateBlobsRequest_Request{{Digest: w.d.Proto(), Data: w.buf}},
		DigestFunction: w.d.Function,
	}
	var odd error // a malformed answer: final, not retried
	// The whole blob is in req, so every attempt sends it all again; the
	// blob's own status counts as the call's (a server may answer a
	// transient failure of one blob of a batch there).
	n, err := do(w.ctx, w.s.retry, what, func(ctx context.Context) error {
		resp, err := w.s.cas.BatchUpdateBlobs(ctx, req)
		if err != nil {
			return err
		}
		rs := resp.GetResponses()
		if len(rs) != 1 || rs[0].GetDigest().GetHash() != w.d.Hash || rs[0].GetDigest().GetSizeBytes() != w.d.Size {
			odd = fmt.Errorf("casclient: %s: the server answered for %d other blobs", what, len(rs))
			return nil
		}
		return status.FromProto(rs[0].GetStatus()).Err()
	})
	w.buf = nil
	if err != nil {
		return fromStatus(opWrite, tried(what, n), err)
	}
	return odd
}

func (w *batchWriter) Close() error {
	w.closed = true
	w.buf = nil
	return nil
}
