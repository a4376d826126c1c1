package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// noiseBlob is n bytes that do not compress, unique to this call.
func noiseBlob(n int) testBlob {
	r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	return newTestBlob(data)
}

func (c *conformanceClient) checkByteStreamNames(t *testing.T) {
	ctx := t.Context()
	cc := c.cacheCaps(t)
	b := uniqueBlob(strings.Repeat("names ", 200))
	if err := c.batchUpload(ctx, []testBlob{b}); err != nil {
		t.Fatal(err)
	}
	size := b.digest.SizeBytes

	// compressor: "a lowercase string form of a Compressor.Value enum other
	// than identity, which is supported by the server and advertised in
	// CacheCapabilities.supported_compressors".
	if !slices.Contains(cc.GetSupportedCompressors(), repb.Compressor_DEFLATE) {
		_, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: "compressed-blobs/deflate/" + b.String()})
		wantCode(t, "Read of an unadvertised compressor", err, codes.InvalidArgument)
		d := uniqueBlob("deflate upload")
		_, err = c.write(ctx, &bspb.WriteRequest{ResourceName: fmt.Sprintf("uploads/%s/compressed-blobs/deflate/%s", uuid.NewString(), d), Data: d.data, FinishWrite: true})
		wantCode(t, "Write of an unadvertised compressor", err, codes.InvalidArgument)
		if m, _ := c.findMissing(ctx, []*repb.Digest{d.digest}); !m[d.digest.Hash] {
			t.Errorf("a Write with an unadvertised compressor stored the blob")
		}
	}

	// Compressed reads: "ReadRequest.read_offset refers to the offset in the
	// uncompressed form of the blob", so ByteStream's range rule applies to
	// the uncompressed size: "A read_offset that is negative or greater than
	// the size of the resource will cause an OUT_OF_RANGE error."
	z := "compressed-blobs/zstd/" + b.String()
	_, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: z, ReadOffset: size + 1})
	wantCode(t, "compressed Read past the end", err, codes.OutOfRange)
	_, err = c.readAll(ctx, &bspb.ReadRequest{ResourceName: z, ReadOffset: -1})
	wantCode(t, "compressed Read at a negative offset", err, codes.OutOfRange)
	dec, _ := zstd.NewReader(nil)
	if got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: z, ReadOffset: size}); err != nil {
		t.Errorf("compressed Read at offset = size: %v", err)
	} else if plain, err := dec.DecodeAll(got, nil); err != nil || len(plain) != 0 {
		t.Errorf("compressed Read at offset = size: %d bytes, %v", len(plain), err)
	}
	_, err = c.readAll(ctx, &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/" + uniqueBlob("bs absent z").String()})
	wantCode(t, "compressed Read of an absent blob", err, codes.NotFound)
	_, err = c.readAll(ctx, &bspb.ReadRequest{ResourceName: "my/instance/compressed-blobs/zstd/" + b.String()})
	wantCode(t, "compressed Read under an instance name", err, codes.OK)

	// BLAKE3 in compressed names: {compressor}/{digest_function/}{hash}/{size}.
	b3 := blake3Blob([]byte(strings.Repeat("blake3 zstd ", 100) + uuid.NewString()))
	enc, _ := zstd.NewWriter(nil)
	name := fmt.Sprintf("uploads/%s/compressed-blobs/zstd/blake3/%s", uuid.NewString(), b3)
	if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: enc.EncodeAll(b3.data, nil), FinishWrite: true}); err != nil {
		t.Fatalf("Write %s: %v", name, err)
	}
	if got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: "blobs/blake3/" + b3.String()}); err != nil || !bytes.Equal(got, b3.data) {
		t.Errorf("Read of a compressed BLAKE3 upload: %v", err)
	}
	if got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/blake3/" + b3.String()}); err != nil {
		t.Errorf("compressed Read of a BLAKE3 blob: %v", err)
	} else if plain, err := dec.DecodeAll(got, nil); err != nil || !bytes.Equal(plain, b3.data) {
		t.Errorf("compressed Read of a BLAKE3 blob decodes to other data: %v", err)
	}

	// QueryWriteStatus takes upload names, which a read name is not.
	_, err = c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: "blobs/" + b.String()})
	wantCode(t, "QueryWriteStatus of a read name", err, codes.InvalidArgument)

	w := uniqueBlob(strings.Repeat("write rules ", 50))
	// resource_name: "If it is set on subsequent calls, it must match the
	// value of the first request."
	_, err = c.write(ctx,
		&bspb.WriteRequest{ResourceName: uploadResource(w), Data: w.data[:10]},
		&bspb.WriteRequest{ResourceName: uploadResource(w), WriteOffset: 10, Data: w.data[10:], FinishWrite: true})
	if codeOf(err) == codes.OK {
		t.Errorf("a Write whose second request names another resource was accepted")
	}
	// The first write_offset "must be equal to the committed_size that a
	// call to QueryWriteStatus() would return" — and for an upload nobody
	// started there is none. "An incorrect value will cause an error."
	_, err = c.write(ctx, &bspb.WriteRequest{ResourceName: uploadResource(w), WriteOffset: 10, Data: w.data[10:], FinishWrite: true})
	if codeOf(err) == codes.OK {
		t.Errorf("a fresh upload starting at write_offset 10 was accepted")
	}
	if m, _ := c.findMissing(ctx, []*repb.Digest{w.digest}); !m[w.digest.Hash] {
		t.Errorf("a rejected Write stored the blob")
	}

	// A blob over 4 MiB streams to a client with gRPC's default limits, in
	// both forms: every ReadResponse must fit a message the client accepts.
	big := noiseBlob(5<<20 + 123)
	if err := c.byteStreamWrite(ctx, big, 1<<20); err != nil {
		t.Fatal(err)
	}
	small := c.dialDefaultLimits(t)
	if got, err := small.byteStreamRead(ctx, big.digest); err != nil || !bytes.Equal(got, big.data) {
		t.Errorf("Read of a 5 MiB blob with default gRPC limits: %v", err)
	}
	r, err := small.bs.Read(ctx, &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/" + big.String()})
	if err == nil {
		var got []byte
		if got, err = readStream(r); err == nil {
			if got, err = dec.DecodeAll(got, nil); err == nil && !bytes.Equal(got, big.data) {
				err = fmt.Errorf("decodes to other data")
			}
		}
	}
	if err != nil {
		t.Errorf("compressed Read of a 5 MiB incompressible blob with default gRPC limits: %v", err)
	}
}

func (c *conformanceClient) checkConcurrentUpload(t *testing.T) {
	ctx := t.Context()
	b := uniqueBlob(strings.Repeat("concurrent ", 300))
	// "if another client has already completed the upload (which may occur
	// in the middle of a single upload if another client uploads the same
	// blob concurrently), the request will terminate immediately without
	// error, and with a response whose committed_size is ... the full size".
	a, err := c.startWrite(ctx, uploadResource(b), b.data[:100], 100, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.byteStreamWrite(ctx, b, 1000); err != nil {
		t.Fatalf("the second upload: %v", err)
	}
	if err := a.Send(&bspb.WriteRequest{WriteOffset: 100, Data: b.data[100:], FinishWrite: true}); err != nil {
		t.Logf("the first upload's last request: %v (the server may have ended it early)", err)
	}
	resp, err := a.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != b.digest.SizeBytes {
		t.Errorf("the first upload, finished after the second completed: %v, %v; want committed_size %d", resp, err, b.digest.SizeBytes)
	}

	// uuid: "Clients MAY reuse the same uuid for uploading different
	// blobs", also at the same time.
	id := uuid.NewString()
	x, y := uniqueBlob("same uuid x"), uniqueBlob("same uuid y")
	xName := fmt.Sprintf("uploads/%s/blobs/%s", id, x)
	wx, err := c.startWrite(ctx, xName, x.data[:5], 5, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: fmt.Sprintf("uploads/%s/blobs/%s", id, y), Data: y.data, FinishWrite: true}); err != nil {
		t.Errorf("Write of y under the uuid of x's open upload: %v", err)
	}
	if err := wx.Send(&bspb.WriteRequest{WriteOffset: 5, Data: x.data[5:], FinishWrite: true}); err != nil {
		t.Fatalf("finishing x: %v", err)
	}
	if resp, err := wx.CloseAndRecv(); err != nil || resp.GetCommittedSize() != x.digest.SizeBytes {
		t.Errorf("Write of x: %v, %v", resp, err)
	}
	if got, err := c.batchRead(ctx, []*repb.Digest{x.digest, y.digest}); err != nil || !bytes.Equal(got[x.digest.Hash], x.data) || !bytes.Equal(got[y.digest.Hash], y.data) {
		t.Errorf("reading x and y back: %v", err)
	}
}

func (c *conformanceClient) checkCompressedResume(t *testing.T) {
	ctx := t.Context()
	// Incompressible, so half the zstd stream carries about half the blob.
	b := noiseBlob(600 << 10)
	enc, _ := zstd.NewWriter(nil)
	z := enc.EncodeAll(b.data, nil)
	name := fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), b)
	// "When the client closes the request channel, the service will respond
	// with a WriteResponse. The service will not view the resource as
	// complete until the client has sent a WriteRequest with finish_write".
	if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: z[:len(z)/2]}); err != nil {
		t.Fatalf("first half of a compressed upload: %v", err)
	}
	q, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || q.GetComplete() {
		t.Fatalf("QueryWriteStatus of a partial compressed upload: %v, %v", q, err)
	}
	off := q.GetCommittedSize()
	if off < 0 || off > b.digest.SizeBytes {
		t.Fatalf("QueryWriteStatus committed_size %d of a %d-byte blob", off, b.digest.SizeBytes)
	}
	// "the WriteRequest.write_offset in the initial request in a stream
	// refers to the offset in the uncompressed form of the blob", and it
	// "must be equal to the committed_size that a call to
	// QueryWriteStatus() would return": the rest is sent as a new zstd
	// stream of the uncompressed bytes from there.
	rest := enc.EncodeAll(b.data[off:], nil)
	if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, WriteOffset: off, Data: rest, FinishWrite: true}); err != nil {
		t.Fatalf("resuming the compressed upload at %d: %v", off, err)
	}
	if got, err := c.byteStreamRead(ctx, b.digest); err != nil || !bytes.Equal(got, b.data) {
		t.Errorf("reading the resumed compressed upload: %v", err)
	}
	// "For any sequence of QueryWriteStatus() calls for a given resource
	// name, the sequence of returned committed_size values will be
	// non-decreasing."
	q2, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || !q2.GetComplete() || q2.GetCommittedSize() < off {
		t.Errorf("QueryWriteStatus after the resumed upload: %v, %v (earlier committed_size %d)", q2, err, off)
	}
}

func (c *conformanceClient) checkUploadForms(t *testing.T) {
	ctx := t.Context()
	enc, _ := zstd.NewWriter(nil)

	// Zstandard data (RFC 8878) is "one or more frames": a client that
	// compresses its blob in pieces sends several frames back to back.
	b := uniqueBlob(strings.Repeat("frames ", 400))
	half := len(b.data) / 2
	z := append(enc.EncodeAll(b.data[:half], nil), enc.EncodeAll(b.data[half:], nil)...)
	name := fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), b)
	if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: z, FinishWrite: true}); err != nil {
		t.Errorf("compressed Write of two zstd frames: %v", err)
	} else if got, err := c.byteStreamRead(ctx, b.digest); err != nil || !bytes.Equal(got, b.data) {
		t.Errorf("reading a two-frame upload: %v", err)
	}
	bb := uniqueBlob(strings.Repeat("batch frames ", 400))
	half = len(bb.data) / 2
	resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{
		Digest: bb.digest, Compressor: repb.Compressor_ZSTD,
		Data: append(enc.EncodeAll(bb.data[:half], nil), enc.EncodeAll(bb.data[half:], nil)...),
	}}})
	if err != nil || resp.GetResponses()[0].GetStatus().GetCode() != 0 {
		t.Errorf("BatchUpdateBlobs of two zstd frames: %v, %v", resp, err)
	}

	// finish_write may come in a request of its own: "The client may leave
	// data empty for any given WriteRequest."
	f := uniqueBlob(strings.Repeat("finish alone ", 40))
	fname := uploadResource(f)
	wr, err := c.write(ctx,
		&bspb.WriteRequest{ResourceName: fname, Data: f.data[:7]},
		&bspb.WriteRequest{WriteOffset: 7},
		&bspb.WriteRequest{WriteOffset: 7, Data: f.data[7:]},
		&bspb.WriteRequest{WriteOffset: f.digest.SizeBytes, FinishWrite: true})
	if err != nil || wr.GetCommittedSize() != f.digest.SizeBytes {
		t.Errorf("Write ending in an empty finish_write request: %v, %v", wr, err)
	}

	// The resource-name header "MUST match the resource_name of the request
	// message" on Write and QueryWriteStatus too.
	h := uniqueBlob("header mismatch upload")
	hname := uploadResource(h)
	hctx := metadata.AppendToOutgoingContext(ctx, "build.bazel.remote.execution.v2.resource-name", uploadResource(h))
	_, err = c.write(hctx, &bspb.WriteRequest{ResourceName: hname, Data: h.data, FinishWrite: true})
	wantCode(t, "Write with a mismatched resource-name header", err, codes.InvalidArgument)
	_, err = c.bs.QueryWriteStatus(hctx, &bspb.QueryWriteStatusRequest{ResourceName: hname})
	wantCode(t, "QueryWriteStatus with a mismatched resource-name header", err, codes.InvalidArgument)
	mctx := metadata.AppendToOutgoingContext(ctx, "build.bazel.remote.execution.v2.resource-name", hname)
	if _, err := c.write(mctx, &bspb.WriteRequest{ResourceName: hname, Data: h.data, FinishWrite: true}); err != nil {
		t.Errorf("Write with a matching resource-name header: %v", err)
	}

	// A compressed upload overtaken by an uncompressed one of the same blob
	// ends "without error" too.
	o := noiseBlob(200 << 10)
	oz := enc.EncodeAll(o.data, nil)
	oname := fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), o)
	w, err := c.startWrite(ctx, oname, oz[:len(oz)/3], len(oz), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.byteStreamWrite(ctx, o, 64<<10); err != nil {
		t.Fatalf("the overtaking upload: %v", err)
	}
	_ = w.Send(&bspb.WriteRequest{WriteOffset: int64(len(oz) / 3), Data: oz[len(oz)/3:], FinishWrite: true})
	if _, err := w.CloseAndRecv(); err != nil {
		t.Errorf("a compressed upload finished after another completed the blob: %v", err)
	}
}

// checkRestartedUpload sends an upload that stopped part-way again from
// offset 0, as clients that lost their place do.
func (c *conformanceClient) checkRestartedUpload(t *testing.T) {
	ctx := t.Context()
	enc, _ := zstd.NewWriter(nil)
	for _, compressed := range []bool{false, true} {
		b := noiseBlob(300 << 10)
		name, data := uploadResource(b), b.data
		if compressed {
			name, data = fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), b), enc.EncodeAll(b.data, nil)
		}
		if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: data[:len(data)/2]}); err != nil {
			t.Fatalf("first half of %s: %v", name, err)
		}
		q, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err != nil || q.GetCommittedSize() <= 0 {
			t.Fatalf("QueryWriteStatus after half of %s: %v, %v", name, q, err)
		}
		// The first write_offset "must be equal to the committed_size that a
		// call to QueryWriteStatus() would return"; 0 is not. A server may
		// refuse it ("An incorrect value will cause an error") or take the
		// bytes again, but either way "For any sequence of
		// QueryWriteStatus() calls for a given resource name, the sequence
		// of returned committed_size values will be non-decreasing."
		_, werr := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: data[:len(data)/8]})
		q2, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err != nil || q2.GetCommittedSize() < q.GetCommittedSize() {
			t.Errorf("compressed=%v: QueryWriteStatus after a Write from offset 0 (%v): %v, %v; committed_size was %d", compressed, werr, q2, err, q.GetCommittedSize())
			continue
		}
		// Whatever it did, the upload can be finished from where
		// QueryWriteStatus says.
		off := q2.GetCommittedSize()
		rest := b.data[off:]
		if compressed {
			rest = enc.EncodeAll(rest, nil)
		}
		if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, WriteOffset: off, Data: rest, FinishWrite: true}); err != nil {
			t.Errorf("compressed=%v: finishing the upload from %d: %v", compressed, off, err)
		} else if got, err := c.byteStreamRead(ctx, b.digest); err != nil || !bytes.Equal(got, b.data) {
			t.Errorf("compressed=%v: reading the finished upload: %v", compressed, err)
		}
	}
}
