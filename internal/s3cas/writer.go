package s3cas

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// Create starts writing d. A blob that fits in one part is buffered and sent
// as one PUT at Commit; a larger one becomes a multipart upload whose parts
// are sent as they fill, uploadAhead at once, and which Commit completes and
// Close (without Commit) aborts. Either way nothing is visible in the bucket
// before Commit returns nil.
func (s *Store) Create(ctx context.Context, d digest.Digest) (cas.Writer, error) {
	if _, err := digest.New(d.Function, d.Hash, d.Size); err != nil {
		return nil, fmt.Errorf("%s: create: %w", s.name, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &writer{s: s, d: d, key: s.Key(d), ctx: ctx, cancel: cancel, sem: make(chan struct{}, uploadAhead)}
	w.buf = make([]byte, 0, min(d.Size, s.partSize))
	return w, nil
}

// unsignedPayload: parts and PUTs are signed as UNSIGNED-PAYLOAD
// (DisableContentSha256), i.e. SigV4 covers the request's headers but not a
// SHA-256 of its body. Over TLS this is minio-go's own default; over plain
// http minio-go would instead sign every 64 KiB chunk (aws-chunked streaming
// signature), a second SHA-256 pass over every byte on top of the digest
// check the verifying wrapper already makes. The config layer allows http
// only to a loopback endpoint, where nobody can alter the bytes in flight,
// and TCP's checksum covers the link; the digest itself is what Hearth
// trusts (checked before Commit, and again when a read fills the fast tier).
var (
	partOptions = minio.PutObjectPartOptions{DisableContentSha256: true}
	putOptions  = minio.PutObjectOptions{DisableContentSha256: true}
)

// abortTimeout bounds the abort of an unfinished upload at Close.
const abortTimeout = 30 * time.Second

type writer struct {
	s      *Store
	d      digest.Digest
	key    string
	ctx    context.Context
	cancel context.CancelFunc

	buf     []byte
	written int64

	uploadID string // "" until the first full part
	next     int    // next part number
	sem      chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	parts    []minio.CompletePart // indexed by part number - 1
	partErr  error

	err       error
	committed bool
	closed    bool
}

func (w *writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.committed || w.closed {
		return 0, fmt.Errorf("%s: write to %s after commit or close", w.s.name, w.d)
	}
	if w.written+int64(len(p)) > w.d.Size {
		w.err = fmt.Errorf("%w: %s: %s: %d bytes written, more than its size %d", cas.ErrMismatch, w.s.name, w.d, w.written+int64(len(p)), w.d.Size)
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		room := int(w.s.partSize) - len(w.buf)
		k := min(room, len(p))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		n += k
		w.written += int64(k)
		if len(w.buf) == int(w.s.partSize) && w.written < w.d.Size {
			if err := w.sendPart(); err != nil {
				w.err = err
				return n, err
			}
		}
	}
	return n, nil
}

// sendPart uploads the full buffer as the next part, in the background.
func (w *writer) sendPart() error {
	if w.uploadID == "" {
		id, err := w.s.core.NewMultipartUpload(w.ctx, w.s.bucket, w.key, minio.PutObjectOptions{})
		if err != nil {
			return w.s.wrap("starting the upload of "+w.key, err)
		}
		w.uploadID = id
	}
	if err := w.firstPartErr(); err != nil {
		return err
	}
	select {
	case w.sem <- struct{}{}:
	case <-w.ctx.Done():
		return w.s.wrap("uploading "+w.key, w.ctx.Err())
	}
	w.next++
	num, data := w.next, w.buf
	w.buf = make([]byte, 0, min(w.d.Size-w.written, w.s.partSize))
	w.wg.Add(1)
	go func() {
		defer func() { <-w.sem; w.wg.Done() }()
		p, err := w.s.core.PutObjectPart(w.ctx, w.s.bucket, w.key, w.uploadID, num, bytes.NewReader(data), int64(len(data)), partOptions)
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			if w.partErr == nil {
				w.partErr = w.s.wrap(fmt.Sprintf("uploading part %d of %s", num, w.key), err)
			}
			return
		}
		for len(w.parts) < num {
			w.parts = append(w.parts, minio.CompletePart{})
		}
		w.parts[num-1] = minio.CompletePart{PartNumber: num, ETag: p.ETag}
	}()
	return nil
}

func (w *writer) firstPartErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.partErr
}

// Commit sends what remains and makes the object visible: one PUT, or the
// last part and CompleteMultipartUpload.
func (w *writer) Commit() error {
	if w.err != nil {
		return w.err
	}
	if w.committed || w.closed {
		return fmt.Errorf("%s: commit of %s after commit or close", w.s.name, w.d)
	}
	if w.written != w.d.Size {
		w.err = fmt.Errorf("%w: %s: %s: got %d bytes, want %d", cas.ErrMismatch, w.s.name, w.d, w.written, w.d.Size)
		return w.err
	}
	if w.uploadID == "" {
		_, err := w.s.core.PutObject(w.ctx, w.s.bucket, w.key, bytes.NewReader(w.buf), int64(len(w.buf)), "", "", putOptions)
		if err != nil {
			w.err = w.s.wrap("PUT "+w.key, err)
			return w.err
		}
		w.committed = true
		return nil
	}
	if err := w.sendPart(); err != nil {
		w.err = err
		return err
	}
	w.wg.Wait()
	if err := w.firstPartErr(); err != nil {
		w.err = err
		return err
	}
	if _, err := w.s.core.CompleteMultipartUpload(w.ctx, w.s.bucket, w.key, w.uploadID, w.parts, minio.PutObjectOptions{}); err != nil {
		w.err = w.s.wrap("completing the upload of "+w.key, err)
		return w.err
	}
	w.committed = true
	return nil
}

// Close releases the writer; without a successful Commit it aborts the
// multipart upload, so its parts never become an object.
func (w *writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	w.cancel()
	w.wg.Wait()
	w.buf = nil
	if w.committed || w.uploadID == "" {
		return nil
	}
	// The writer's context is cancelled; the abort gets its own, short one.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), abortTimeout)
	defer cancel()
	if err := w.s.core.AbortMultipartUpload(ctx, w.s.bucket, w.key, w.uploadID); err != nil {
		// The parts are invisible either way; a lifecycle rule for
		// incomplete uploads reclaims them.
		return w.s.wrap("aborting the upload of "+w.key, err)
	}
	return nil
}
