package reapi

import (
	"context"
	"fmt"
	"io"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/grpcbulk"
)

// readChunkSize bounds the data of one ReadResponse: large enough that
// per-message overhead is negligible, small enough to stay far below
// clients' 4 MiB receive limit and to keep per-read memory small.
const readChunkSize = 256 << 10

// resourceNameHeader is the optional request header that REAPI says must
// equal the request's resource_name when present.
const resourceNameHeader = "build.bazel.remote.execution.v2.resource-name"

// byteStreamCompressors are the compressors of compressed-blobs names that
// Hearth serves (identity is spelled "blobs/").
var byteStreamCompressors = map[repb.Compressor_Value]bool{repb.Compressor_ZSTD: true}

// byteStreamServer implements google.bytestream.ByteStream for the CAS.
//
// Decisions where the specs leave room:
//   - Read: read_offset < 0 or > size is OUT_OF_RANGE (ByteStream docs);
//     read_limit < 0 is INVALID_ARGUMENT. Compressed reads honour read_offset
//     (an offset into the uncompressed blob, as REAPI says) and reject a
//     non-zero read_limit with INVALID_ARGUMENT (REAPI MUST).
//   - Write offsets of compressed uploads follow REAPI: the first message's
//     write_offset is an uncompressed offset (where this stream's zstd data
//     starts in the blob), later ones add compressed bytes. QueryWriteStatus
//     reports uncompressed bytes for every upload, so its answer is always a
//     valid first write_offset; a finished compressed Write answers
//     first write_offset + compressed bytes received.
//   - A first write_offset must equal the session's committed size, or be 0,
//     which sends the upload again from the start (a client that lost its
//     place can always start over). The server skips the re-sent bytes it
//     already holds, so committed_size never goes down, as ByteStream
//     promises; the digest check at commit catches re-sent bytes that differ.
//   - A stream that ends without finish_write is answered with the committed
//     size (ByteStream docs); a broken or cancelled one leaves the upload
//     resumable. Sessions are keyed by the name without its metadata, live
//     in memory, expire after DefaultUploadIdleTimeout idle, and at most
//     DefaultMaxIdleUploads idle ones are kept (oldest dropped first).
//   - A second stream on an upload that another stream still owns waits up
//     to DefaultUploadTakeoverWait for it to end, then gets ABORTED.
//   - QueryWriteStatus answers complete=true, committed_size=size (the
//     uncompressed size, also for compressed names) whenever the blob is in
//     the CAS, whoever uploaded it; NOT_FOUND when there is neither the blob
//     nor a session.
//   - After finish_write the server reads once more and requires the
//     client's close: a request after finish_write is INVALID_ARGUMENT.
type byteStreamServer struct {
	bspb.UnimplementedByteStreamServer
	store   cas.Store
	uploads *uploads
}

func newByteStreamServer(cfg Config) *byteStreamServer {
	return newByteStreamServerWith(cfg, uploadOptions{})
}

func newByteStreamServerWith(cfg Config, o uploadOptions) *byteStreamServer {
	return &byteStreamServer{store: cfg.CAS, uploads: newUploads(o)}
}

// parseName parses a request's resource name, checks it against the optional
// routing header and checks that the service supports its compressor.
func parseName(ctx context.Context, name string, upload bool) (ResourceName, error) {
	rn, err := ParseResourceName(name)
	if err != nil {
		return ResourceName{}, toStatus(err)
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if hs := md.Get(resourceNameHeader); len(hs) > 0 && hs[0] != name {
			return ResourceName{}, invalidf("header %s is %q but the request's resource_name is %q; they must match", resourceNameHeader, hs[0], name)
		}
	}
	if upload && !rn.IsUpload() {
		return ResourceName{}, invalidf("resource name %q is not an upload name ({instance}/uploads/{uuid}/blobs/...)", name)
	}
	if !upload && rn.IsUpload() {
		return ResourceName{}, invalidf("resource name %q is an upload name; reads use {instance}/blobs/... or {instance}/compressed-blobs/...", name)
	}
	if rn.Compressor != repb.Compressor_IDENTITY && !byteStreamCompressors[rn.Compressor] {
		return ResourceName{}, invalidf("resource name %q: compressor %s is not supported (supported: zstd)", name, rn.Compressor)
	}
	return rn, nil
}

// Read streams a blob, or the window [read_offset, read_offset+read_limit)
// of it, in chunks of at most readChunkSize, straight from the store.
func (s *byteStreamServer) Read(req *bspb.ReadRequest, stream bspb.ByteStream_ReadServer) error {
	ctx := stream.Context()
	rn, err := parseName(ctx, req.GetResourceName(), false)
	if err != nil {
		return err
	}
	d, off, limit := rn.Digest, req.GetReadOffset(), req.GetReadLimit()
	if off < 0 || off > d.Size {
		return status.Errorf(codes.OutOfRange, "read_offset %d is outside blob %s of %d bytes", off, req.GetResourceName(), d.Size)
	}
	if limit < 0 {
		return invalidf("read_limit %d of %s is negative", limit, req.GetResourceName())
	}
	if rn.Compressor != repb.Compressor_IDENTITY && limit != 0 {
		return invalidf("read_limit %d of %s: compressed reads must have read_limit 0", limit, req.GetResourceName())
	}
	r, err := s.store.Open(ctx, d, off)
	if err != nil {
		return toStatus(fmt.Errorf("read %s: %w", req.GetResourceName(), err))
	}
	defer r.Close()

	want := d.Size - off
	if limit > 0 && limit < want {
		want = limit
	}
	send := &chunkSender{
		send: func(b []byte) error { return stream.Send(&bspb.ReadResponse{Data: b}) },
		// SendMsg, not Send: the chunk's buffer passes to gRPC.
		sendChunk: func(c *grpcbulk.SendChunk) error { return stream.SendMsg(c) },
	}
	var n int64
	if rn.Compressor == repb.Compressor_IDENTITY {
		n, err = send.copyFrom(io.LimitReader(r, want))
	} else {
		n, err = compressTo(send, r)
	}
	if err != nil {
		// A Send error (client gone) keeps its status through the wrapping.
		return toStatus(fmt.Errorf("read %s: %w", req.GetResourceName(), err))
	}
	if n != want {
		return status.Errorf(codes.DataLoss, "blob %s ended after %d of %d bytes from offset %d", req.GetResourceName(), n, want, off)
	}
	return nil
}

// chunkSender turns a byte stream into messages of at most readChunkSize.
type chunkSender struct {
	send      func([]byte) error
	sendChunk func(*grpcbulk.SendChunk) error
	buf       []byte
}

var chunkPool = sync.Pool{New: func() any { b := make([]byte, readChunkSize); return &b }}

// copyFrom sends everything r yields and returns the number of bytes sent.
// Each message is read into a buffer of its own that passes to gRPC with
// the message (grpcbulk.SendChunk): through the server's grpcbulk codec
// the transport writes it as it is, instead of marshalling a copy of every
// byte of the blob first.
func (c *chunkSender) copyFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		ch := grpcbulk.NewSendChunk(readChunkSize)
		n, err := io.ReadFull(r, ch.Data)
		if n > 0 {
			ch.Truncate(n)
			if serr := c.sendChunk(ch); serr != nil {
				return total, serr
			}
			total += int64(n)
		} else {
			ch.Release()
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Write buffers p and sends full chunks; used as the zstd encoder's output.
func (c *chunkSender) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if c.buf == nil {
			c.buf = (*chunkPool.Get().(*[]byte))[:0]
		}
		k := copy(c.buf[len(c.buf):cap(c.buf)], p)
		c.buf = c.buf[:len(c.buf)+k]
		p = p[k:]
		if len(c.buf) == cap(c.buf) {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *chunkSender) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := c.send(c.buf)
	c.buf = c.buf[:0]
	return err
}

func (c *chunkSender) release() {
	if c.buf != nil {
		b := c.buf[:cap(c.buf)]
		chunkPool.Put(&b)
		c.buf = nil
	}
}

var encoderPool = sync.Pool{New: func() any {
	// Concurrency 1 keeps a read on one core and its memory small; the
	// fastest level because reads are latency-bound and clients verify.
	e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithLowerEncoderMem(true))
	if err != nil {
		panic(fmt.Sprintf("zstd.NewWriter with constant options: %v", err))
	}
	return e
}}

// compressTo sends r zstd-compressed through c and returns the number of
// uncompressed bytes read.
func compressTo(c *chunkSender, r io.Reader) (int64, error) {
	defer c.release()
	enc := encoderPool.Get().(*zstd.Encoder)
	enc.Reset(c)
	defer func() {
		enc.Reset(nil)
		encoderPool.Put(enc)
	}()
	n, err := enc.ReadFrom(r)
	if err != nil {
		return n, err
	}
	if err := enc.Close(); err != nil {
		return n, err
	}
	return n, c.flush()
}

// QueryWriteStatus reports an upload's progress. See byteStreamServer for
// what it answers.
func (s *byteStreamServer) QueryWriteStatus(ctx context.Context, req *bspb.QueryWriteStatusRequest) (*bspb.QueryWriteStatusResponse, error) {
	rn, err := parseName(ctx, req.GetResourceName(), true)
	if err != nil {
		return nil, err
	}
	missing, err := s.store.FindMissing(ctx, []digest.Digest{rn.Digest})
	if err != nil {
		return nil, toStatus(fmt.Errorf("query %s: %w", req.GetResourceName(), err))
	}
	if len(missing) == 0 {
		s.uploads.discardIdle(rn)
		return &bspb.QueryWriteStatusResponse{CommittedSize: rn.Digest.Size, Complete: true}, nil
	}
	if n, ok := s.uploads.progress(rn); ok {
		return &bspb.QueryWriteStatusResponse{CommittedSize: n}, nil
	}
	return nil, status.Errorf(codes.NotFound, "no upload %s in progress", req.GetResourceName())
}

// Write receives a blob into an upload session and commits it on
// finish_write. Nothing is visible in the CAS until the whole blob has been
// received and verified; a broken stream leaves the session resumable.
func (s *byteStreamServer) Write(stream bspb.ByteStream_WriteServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err == io.EOF {
		return invalidf("the Write stream ended before its first WriteRequest")
	}
	if err != nil {
		return err
	}
	name := first.GetResourceName()
	if name == "" {
		return invalidf("the first WriteRequest of a stream has no resource_name")
	}
	rn, err := parseName(ctx, name, true)
	if err != nil {
		return err
	}
	if off := first.GetWriteOffset(); off < 0 || off > rn.Digest.Size {
		return invalidf("write_offset %d of %s is outside the blob's %d bytes", off, name, rn.Digest.Size)
	}

	// REAPI: if the blob exists, answer at once without reading the data.
	missing, err := s.store.FindMissing(ctx, []digest.Digest{rn.Digest})
	if err != nil {
		return toStatus(fmt.Errorf("write %s: %w", name, err))
	}
	if len(missing) == 0 {
		s.uploads.discardIdle(rn)
		committed := rn.Digest.Size
		if rn.Compressor != repb.Compressor_IDENTITY {
			committed = -1
		}
		return stream.SendAndClose(&bspb.WriteResponse{CommittedSize: committed})
	}

	up, err := s.uploads.acquire(ctx, rn)
	if err != nil {
		return toStatus(err)
	}
	resp, keep, err := s.receive(ctx, stream, first, rn, up)
	if keep {
		s.uploads.release(up)
	} else {
		s.uploads.discard(up)
	}
	if err != nil {
		return err
	}
	return stream.SendAndClose(resp)
}

// receive runs one Write stream on an owned session. keep says whether the
// session should stay resumable (the stream broke or ended early) or be
// discarded (the blob was committed, or the data was bad).
func (s *byteStreamServer) receive(ctx context.Context, stream bspb.ByteStream_WriteServer, first *bspb.WriteRequest, rn ResourceName, up *upload) (_ *bspb.WriteResponse, keep bool, _ error) {
	name := first.GetResourceName()
	// skip is how many uncompressed bytes at the start of this stream the
	// session already holds.
	var skip int64
	switch off, committed := first.GetWriteOffset(), up.committed.Load(); {
	case off == committed:
	case off == 0:
		// Restart: the client chose to send everything again. The bytes held
		// are kept and the re-sent ones skipped rather than the session
		// reset, because ByteStream promises that QueryWriteStatus's
		// committed_size never decreases. Re-sent bytes that differ are
		// caught by the digest check at commit.
		skip = committed
	case committed == 0:
		return nil, up.w != nil, invalidf("write_offset %d of %s: nothing is committed yet, so the stream must start at 0", off, name)
	default:
		return nil, up.w != nil, invalidf("write_offset %d of %s: %d bytes are committed, so a stream must start at %d (resume) or 0 (restart)", off, name, committed, committed)
	}
	if up.w == nil {
		// The writer outlives this stream when the upload is resumed, so it
		// must not be cancelled with it.
		w, err := s.store.Create(context.WithoutCancel(ctx), rn.Digest)
		if err != nil {
			return nil, false, toStatus(fmt.Errorf("write %s: %w", name, err))
		}
		up.w = w
	}

	src := newRequestSource(stream, first)
	dst := &sessionWriter{up: up, rn: rn, skip: skip}
	var err error
	if rn.Compressor == repb.Compressor_IDENTITY {
		err = src.copyTo(dst)
	} else {
		err = decompress(dst, src)
	}
	switch {
	case src.transportErr != nil:
		return nil, true, src.transportErr
	case src.halfClosed:
		// The client closed the stream without finish_write: ByteStream says
		// to answer with what was committed; the upload stays resumable.
		return &bspb.WriteResponse{CommittedSize: up.committed.Load()}, true, nil
	case err != nil:
		return nil, false, err
	}

	if dst.skip > 0 {
		return nil, false, invalidf("finish_write of %s after %d bytes re-sent from offset 0, short of the %d already committed", name, skip-dst.skip, skip)
	}
	if got := up.committed.Load(); got != rn.Digest.Size {
		return nil, false, invalidf("finish_write of %s after %d bytes, but its name declares %d", name, got, rn.Digest.Size)
	}
	if err := up.w.Commit(); err != nil {
		return nil, false, toStatus(fmt.Errorf("write %s: %w", name, err))
	}
	up.w.Close()
	up.w = nil
	if rn.Compressor == repb.Compressor_IDENTITY {
		return &bspb.WriteResponse{CommittedSize: rn.Digest.Size}, false, nil
	}
	// REAPI's compressed offsets: the first write_offset plus the compressed
	// bytes of this stream, i.e. the next write_offset.
	return &bspb.WriteResponse{CommittedSize: src.next}, false, nil
}
