package reapi

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/digest"
)

// Tests of resumable uploads: sessions that outlive a broken Write stream.

// breakAfter starts an upload, sends data (at stream offset first) without
// finish_write, waits until the server has committed want bytes, then cancels
// the stream as a broken connection would.
func (e *bsEnv) breakAfter(t *testing.T, name string, first int64, data []byte, want int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(bsCtx(t))
	stream, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bsSendChunks(stream, name, first, data, 32<<10, false); err != nil {
		t.Fatal(err)
	}
	e.waitCommitted(t, name, want)
	cancel()
	// RecvMsg, not CloseAndRecv: a half-close could reach the server before
	// the cancellation, and a broken connection does not half-close.
	err = stream.RecvMsg(new(bspb.WriteResponse))
	bsWantCode(t, err, codes.Canceled, "")
}

func (e *bsEnv) waitCommitted(t *testing.T, name string, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		qs, err := e.client.QueryWriteStatus(context.Background(), &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err == nil && qs.GetCommittedSize() == want && !qs.GetComplete() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("QueryWriteStatus(%s) = %v, %v; want %d committed", name, qs, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestByteStreamResumableWrite(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(3<<20, 5)
	d := digest.Compute(digest.SHA256, data)
	name := bsUploadName("a/b", d, repb.Compressor_IDENTITY)
	const cut = 1<<20 + 17

	_, err := e.client.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	bsWantCode(t, err, codes.NotFound, "")

	e.breakAfter(t, name, 0, data[:cut], cut)
	e.waitCommitted(t, name, cut)
	if e.present(t, d) {
		t.Fatal("a broken upload is visible")
	}

	// A stream may end without finish_write: it is answered with the
	// committed size and stays resumable.
	stream, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bsSendChunks(stream, name, cut, data[cut:2<<20], 50<<10, false); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != 2<<20 {
		t.Fatalf("half-closed stream: %v, %v; want committed_size %d", resp, err, 2<<20)
	}

	// Resuming at a wrong offset is refused and leaves the upload intact.
	_, err = func() (*bspb.WriteResponse, error) {
		s, err := e.client.Write(ctx)
		if err != nil {
			return nil, err
		}
		bsSendChunks(s, name, 2<<20-1, data[2<<20-1:], 64<<10, true)
		return s.CloseAndRecv()
	}()
	bsWantCode(t, err, codes.InvalidArgument, "must start at 2097152")
	e.waitCommitted(t, name, 2<<20)

	// Resume at the committed size and finish; the metadata may differ.
	stream, err = e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bsSendChunks(stream, name+"/retry-1", 2<<20, data[2<<20:], 64<<10, true); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("resumed Write = %v, %v; want committed_size %d", resp, err, d.Size)
	}
	qs, err := e.client.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || !qs.GetComplete() || qs.GetCommittedSize() != d.Size {
		t.Fatalf("QueryWriteStatus after completion = %v, %v", qs, err)
	}
	got, _, err := e.read(ctx, ReadResourceName("a/b", d, 0), 0, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v; want the resumed blob", len(got), err)
	}
	if n := e.tempFiles(t); n != 0 {
		t.Errorf("%d temp files left", n)
	}
}

func TestByteStreamResumableCompressedWrite(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsCompressible(2 << 20)
	d := digest.Compute(digest.BLAKE3, data)
	name := bsUploadName("", d, repb.Compressor_ZSTD)
	const cut = 700 << 10

	// One whole zstd frame of the first part, so the server can decode all of
	// it before the stream breaks.
	e.breakAfter(t, name, 0, zstdCompress(t, data[:cut]), cut)

	// REAPI: the first write_offset of a compressed stream is uncompressed,
	// later ones add compressed bytes.
	rest := zstdCompress(t, data[cut:])
	stream, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bsSendChunks(stream, name, cut, rest, 10<<10, true); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(cut + len(rest)); resp.GetCommittedSize() != want {
		t.Errorf("committed_size %d, want first offset + compressed bytes = %d", resp.GetCommittedSize(), want)
	}
	got, _, err := e.read(ctx, ReadResourceName("", d, 0), 0, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}

func TestByteStreamRestartAtZero(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(200<<10, 6)
	d := digest.Compute(digest.SHA256, data)
	name := bsUploadName("", d, 0)
	e.breakAfter(t, name, 0, data[:100<<10], 100<<10)
	resp, err := e.write(ctx, name, data, 30<<10)
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("restart at 0 = %v, %v", resp, err)
	}
	if !e.present(t, d) {
		t.Fatal("not stored")
	}
	if n := e.tempFiles(t); n != 0 {
		t.Errorf("%d temp files left", n)
	}
}

// A stream that starts again at 0 but stops short keeps what the session
// held: QueryWriteStatus's committed_size never decreases (ByteStream), and
// the upload can still be resumed from it.
func TestByteStreamRestartKeepsCommitted(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(200<<10, 7)
	d := digest.Compute(digest.SHA256, data)
	name := bsUploadName("", d, 0)
	e.breakAfter(t, name, 0, data[:100<<10], 100<<10)

	stream, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bsSendChunks(stream, name, 0, data[:30<<10], 10<<10, false); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != 100<<10 {
		t.Fatalf("a restart that stops at 30 KiB = %v, %v; want committed_size %d", resp, err, 100<<10)
	}
	e.waitCommitted(t, name, 100<<10)

	stream, err = e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bsSendChunks(stream, name, 100<<10, data[100<<10:], 30<<10, true); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.CloseAndRecv(); err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("resuming after the short restart = %v, %v", resp, err)
	}
	got, _, err := e.read(ctx, ReadResourceName("", d, 0), 0, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}

// A restart that finishes before re-sending what the session holds is short
// of the blob; one whose re-sent bytes differ from those held fails the
// digest check. Neither stores anything.
func TestByteStreamRestartChecked(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(200<<10, 8)
	d := digest.Compute(digest.SHA256, data)

	name := bsUploadName("", d, 0)
	e.breakAfter(t, name, 0, data[:100<<10], 100<<10)
	_, err := e.write(ctx, name, data[:50<<10], 10<<10)
	bsWantCode(t, err, codes.InvalidArgument, "short of the")

	name = bsUploadName("", d, 0)
	corrupt := append([]byte(nil), data[:100<<10]...)
	corrupt[0] ^= 1
	e.breakAfter(t, name, 0, corrupt, 100<<10)
	_, err = e.write(ctx, name, data, 30<<10)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a restart over a session holding other bytes = %v, want INVALID_ARGUMENT", err)
	}
	if e.present(t, d) {
		t.Fatal("stored")
	}
	if n := e.tempFiles(t); n != 0 {
		t.Errorf("%d temp files left", n)
	}
}

// waitIdle waits until no stream owns the upload: the server has noticed
// that the client went away.
func (e *bsEnv) waitIdle(t *testing.T, name string) {
	t.Helper()
	rn, err := ParseResourceName(name)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		u := e.server.uploads
		u.mu.Lock()
		up := u.m[rn.sessionKey()]
		busy := up != nil && up.busy
		u.mu.Unlock()
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("upload %s still owned by a stream", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestByteStreamIdleSessionsAreBounded(t *testing.T) {
	e := startByteStream(t, uploadOptions{maxIdle: 2})
	data := bsRandom(10<<10, 7)
	d := digest.Compute(digest.SHA256, data)
	var names []string
	for i := 0; i < 3; i++ {
		names = append(names, bsUploadName("", d, 0))
		e.breakAfter(t, names[i], 0, data[:1000+i], int64(1000+i))
		e.waitIdle(t, names[i])
	}
	// The oldest idle upload was dropped to keep two; the others resume.
	_, err := e.client.QueryWriteStatus(context.Background(), &bspb.QueryWriteStatusRequest{ResourceName: names[0]})
	bsWantCode(t, err, codes.NotFound, "")
	e.waitCommitted(t, names[1], 1001)
	e.waitCommitted(t, names[2], 1002)
	if n := e.tempFiles(t); n != 2 {
		t.Errorf("%d temp files, want the 2 resumable uploads'", n)
	}
}

func TestByteStreamIdleSessionsExpire(t *testing.T) {
	e := startByteStream(t, uploadOptions{idleTimeout: 100 * time.Millisecond})
	data := bsRandom(10<<10, 7)
	d := digest.Compute(digest.SHA256, data)
	name := bsUploadName("", d, 0)
	e.breakAfter(t, name, 0, data[:1000], 1000)
	deadline := time.Now().Add(10 * time.Second)
	for e.server.uploads.len() > 0 || e.tempFiles(t) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions and %d temp files remain after the idle timeout", e.server.uploads.len(), e.tempFiles(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, err := e.client.QueryWriteStatus(context.Background(), &bspb.QueryWriteStatusRequest{ResourceName: name})
	bsWantCode(t, err, codes.NotFound, "")
}

func TestByteStreamConcurrentStreamsOnOneUpload(t *testing.T) {
	e := startByteStream(t, uploadOptions{takeoverWait: 100 * time.Millisecond})
	ctx := bsCtx(t)
	data := bsRandom(100<<10, 8)
	d := digest.Compute(digest.SHA256, data)
	name := bsUploadName("", d, 0)

	first, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := bsSendChunks(first, name, 0, data[:1000], 1000, false); err != nil {
		t.Fatal(err)
	}
	e.waitCommitted(t, name, 1000)

	second, err := e.client.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bsSendChunks(second, name, 1000, data[1000:], 1<<20, true)
	_, err = second.CloseAndRecv()
	bsWantCode(t, err, codes.Aborted, "another stream")

	// The first stream is unharmed and finishes the upload.
	if err := bsSendChunks(first, "", 1000, data[1000:], 1<<20, true); err != nil {
		t.Fatal(err)
	}
	resp, err := first.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != d.Size {
		t.Fatalf("first stream = %v, %v", resp, err)
	}
}

func TestByteStreamConcurrentUploadsOfOneBlob(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(2<<20, 9)
	d := digest.Compute(digest.BLAKE3, data)
	z := zstdCompress(t, data)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, payload := repb.Compressor_IDENTITY, data
			if i%2 == 1 {
				c, payload = repb.Compressor_ZSTD, z
			}
			resp, err := e.write(ctx, bsUploadName("", d, c), payload, 64<<10)
			if err != nil {
				errs <- err
				return
			}
			if n := resp.GetCommittedSize(); n != d.Size && n != int64(len(z)) && n != -1 {
				errs <- errors.New("unexpected committed_size")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent upload: %v", err)
	}
	got, _, err := e.read(ctx, ReadResourceName("", d, 0), 0, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if n := e.tempFiles(t); n != 0 {
		t.Errorf("%d temp files left", n)
	}
}
