package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// TestConformance checks `hearth serve` against the text of the REAPI v2
// spec (remote_execution.proto), google.bytestream and google.longrunning, as
// an independent client would. Each check quotes the sentence it enforces.
// One server serves every check, so the whole test stays fast.
func TestConformance(t *testing.T) {
	p := startServe(t, t.TempDir())
	c := dial(t, p.GRPCAddr)
	ops := longrunningpb.NewOperationsClient(c.conn)
	ac := repb.NewActionCacheClient(c.conn)
	limit, err := c.maxBatchBytes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cc := &conformanceClient{reapiClient: c, ac: ac, ops: ops, addr: p.GRPCAddr}

	t.Run("Capabilities", func(t *testing.T) { cc.checkCapabilities(t) })
	t.Run("Advertised", func(t *testing.T) { cc.checkAdvertised(t) })
	t.Run("FindMissingBlobs", func(t *testing.T) { cc.checkFindMissing(t) })
	t.Run("BatchUpdateBlobs", func(t *testing.T) { cc.checkBatchUpdate(t, limit) })
	t.Run("BatchReadBlobs", func(t *testing.T) { cc.checkBatchRead(t, limit) })
	t.Run("BatchIndependence", func(t *testing.T) { cc.checkBatchIndependence(t) })
	t.Run("BatchLimit", func(t *testing.T) { cc.checkBatchLimit(t, limit) })
	t.Run("DigestFunctionField", func(t *testing.T) { cc.checkDigestFunctionField(t) })
	t.Run("ByteStreamRead", func(t *testing.T) { cc.checkByteStreamRead(t) })
	t.Run("ByteStreamWrite", func(t *testing.T) { cc.checkByteStreamWrite(t) })
	t.Run("ByteStreamNames", func(t *testing.T) { cc.checkByteStreamNames(t) })
	t.Run("ByteStreamConcurrentUpload", func(t *testing.T) { cc.checkConcurrentUpload(t) })
	t.Run("ByteStreamCompressedResume", func(t *testing.T) { cc.checkCompressedResume(t) })
	t.Run("ByteStreamUploadForms", func(t *testing.T) { cc.checkUploadForms(t) })
	t.Run("ByteStreamRestartedUpload", func(t *testing.T) { cc.checkRestartedUpload(t) })
	t.Run("GetTree", func(t *testing.T) { cc.checkGetTree(t) })
	t.Run("GetTreePaging", func(t *testing.T) { cc.checkGetTreePaging(t) })
	t.Run("ActionCache", func(t *testing.T) { cc.checkActionCache(t) })
	t.Run("ActionCacheResults", func(t *testing.T) { cc.checkActionCacheResults(t) })
	t.Run("Execute", func(t *testing.T) { cc.checkExecute(t) })
	t.Run("Operations", func(t *testing.T) { cc.checkOperations(t) })
	t.Run("BLAKE3", func(t *testing.T) { cc.checkBLAKE3(t) })
}

type conformanceClient struct {
	*reapiClient
	ac  repb.ActionCacheClient
	ops longrunningpb.OperationsClient
	// addr is the server's gRPC address, for checks that need a client with
	// gRPC's default message limits.
	addr string
}

// codeOf is the gRPC code of err (OK for nil).
func codeOf(err error) codes.Code { return status.Code(err) }

// wantCode fails unless err has code want.
func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := codeOf(err); got != want {
		t.Errorf("%s: got %v (%v), want %v", what, got, err, want)
	}
}

// missingSubjects returns the subjects of MISSING violations in st.
func missingSubjects(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				if v.GetType() == "MISSING" {
					out = append(out, v.GetSubject())
				}
			}
		}
	}
	return out
}

func blake3Blob(data []byte) testBlob {
	sum := blake3.Sum256(data)
	return testBlob{data: data, digest: &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}}
}

// uniqueBlob is content no other check uses.
func uniqueBlob(what string) testBlob {
	return newTestBlob([]byte(what + " " + uuid.NewString()))
}

func (c *conformanceClient) readAll(ctx context.Context, req *bspb.ReadRequest, md ...string) ([]byte, error) {
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	r, err := c.bs.Read(ctx, req)
	if err != nil {
		return nil, err
	}
	return readStream(r)
}

// write sends reqs on one Write stream and returns the server's answer.
func (c *conformanceClient) write(ctx context.Context, reqs ...*bspb.WriteRequest) (*bspb.WriteResponse, error) {
	w, err := c.bs.Write(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range reqs {
		if err := w.Send(r); err != nil {
			break // the server ended the stream; CloseAndRecv says why
		}
	}
	return w.CloseAndRecv()
}

func (c *conformanceClient) checkCapabilities(t *testing.T) {
	caps, err := c.caps.GetCapabilities(t.Context(), &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("GetCapabilities: %v", err)
	}
	// "Execution + CAS + Action Cache endpoints should return both
	// CacheCapabilities and ExecutionCapabilities."
	if caps.GetCacheCapabilities() == nil || caps.GetExecutionCapabilities() == nil {
		t.Fatalf("want both cache and execution capabilities: %v", caps)
	}
	ex := caps.GetExecutionCapabilities()
	// ExecutionCapabilities.digest_function: "It MUST be set to a value
	// other than UNKNOWN." digest_functions: "If this field is set, it MUST
	// also contain digest_function."
	if ex.GetDigestFunction() == repb.DigestFunction_UNKNOWN {
		t.Errorf("execution_capabilities.digest_function is UNKNOWN")
	}
	found := false
	for _, f := range ex.GetDigestFunctions() {
		found = found || f == ex.GetDigestFunction()
	}
	if len(ex.GetDigestFunctions()) > 0 && !found {
		t.Errorf("execution digest_functions %v does not contain digest_function %v", ex.GetDigestFunctions(), ex.GetDigestFunction())
	}
	if !ex.GetExecEnabled() {
		t.Errorf("hearth serve runs actions but exec_enabled is false")
	}
	// DigestFunction.UNKNOWN: "It is an error for the server to return this value."
	for _, f := range caps.GetCacheCapabilities().GetDigestFunctions() {
		if f == repb.DigestFunction_UNKNOWN {
			t.Errorf("cache digest_functions contains UNKNOWN")
		}
	}
	// SemVer ordering: deprecated <= low <= high.
	ver := func(v interface {
		GetMajor() int32
		GetMinor() int32
	}) int32 {
		return v.GetMajor()*1000 + v.GetMinor()
	}
	if !(ver(caps.GetDeprecatedApiVersion()) <= ver(caps.GetLowApiVersion()) && ver(caps.GetLowApiVersion()) <= ver(caps.GetHighApiVersion())) || caps.GetHighApiVersion().GetMajor() != 2 {
		t.Errorf("api versions deprecated %v low %v high %v are not ordered v2 versions", caps.GetDeprecatedApiVersion(), caps.GetLowApiVersion(), caps.GetHighApiVersion())
	}
	if caps.GetCacheCapabilities().GetSymlinkAbsolutePathStrategy() == repb.SymlinkAbsolutePathStrategy_UNKNOWN {
		t.Errorf("symlink_absolute_path_strategy is UNKNOWN (\"Invalid value\")")
	}
	// Every instance name usable in resource names works.
	if _, err := c.caps.GetCapabilities(t.Context(), &repb.GetCapabilitiesRequest{InstanceName: "a/b"}); err != nil {
		t.Errorf("GetCapabilities(instance a/b): %v", err)
	}
}

func (c *conformanceClient) checkFindMissing(t *testing.T) {
	ctx := t.Context()
	present := uniqueBlob("fmb present")
	absent := uniqueBlob("fmb absent")
	if err := c.batchUpload(ctx, []testBlob{present}); err != nil {
		t.Fatal(err)
	}
	empty := newTestBlob(nil)
	wrongSize := &repb.Digest{Hash: present.digest.Hash, SizeBytes: present.digest.SizeBytes + 1}
	// digest_function left unset: "the server SHOULD infer the digest
	// function using the length of the blob digest hashes".
	resp, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
		BlobDigests: []*repb.Digest{present.digest, absent.digest, empty.digest, wrongSize},
	})
	if err != nil {
		t.Fatalf("FindMissingBlobs: %v", err)
	}
	got := map[string]bool{}
	for _, d := range resp.GetMissingBlobDigests() {
		got[fmt.Sprintf("%s/%d", d.Hash, d.SizeBytes)] = true
	}
	want := map[string]bool{
		absent.String(): true,
		// Digest: "even if the hash field is correctly specified but
		// size_bytes is not, the server MUST reject the request" — a blob
		// of another size is not this blob.
		fmt.Sprintf("%s/%d", wrongSize.Hash, wrongSize.SizeBytes): true,
	}
	// "Servers MUST behave as though empty blobs are always available."
	if got[empty.String()] {
		t.Errorf("the empty blob is reported missing")
	}
	if got[present.String()] {
		t.Errorf("an uploaded blob is reported missing")
	}
	for k := range want {
		if !got[k] {
			t.Errorf("%s not reported missing; missing = %v", k, got)
		}
	}
	// Malformed digests: "A list of the blobs to check" — a hash that is not
	// lower-case hex of the function's length cannot name a blob.
	for _, d := range []*repb.Digest{
		{Hash: strings.ToUpper(present.digest.Hash), SizeBytes: present.digest.SizeBytes},
		{Hash: "abc", SizeBytes: 1},
		{Hash: present.digest.Hash, SizeBytes: -1},
	} {
		_, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{d}})
		wantCode(t, fmt.Sprintf("FindMissingBlobs(%s/%d)", d.Hash, d.SizeBytes), err, codes.InvalidArgument)
	}
	// A digest function the server does not announce.
	_, err = c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{present.digest}, DigestFunction: repb.DigestFunction_MD5})
	wantCode(t, "FindMissingBlobs with digest_function MD5", err, codes.InvalidArgument)
	// No digests: nothing missing.
	if resp, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{}); err != nil || len(resp.GetMissingBlobDigests()) != 0 {
		t.Errorf("FindMissingBlobs of nothing: %v, %v", resp, err)
	}
}

func (c *conformanceClient) checkBatchUpdate(t *testing.T, limit int64) {
	ctx := t.Context()
	good := uniqueBlob("bub good")
	other := uniqueBlob("bub other")
	badHash := testBlob{data: []byte("not what the digest says"), digest: other.digest}
	badSize := uniqueBlob("bub bad size")
	badSize.digest = &repb.Digest{Hash: badSize.digest.Hash, SizeBytes: badSize.digest.SizeBytes + 1}
	empty := newTestBlob(nil)
	zblob := uniqueBlob(strings.Repeat("compressible ", 50))
	enc, _ := zstd.NewWriter(nil)
	zdata := enc.EncodeAll(zblob.data, nil)

	req := &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: good.digest, Data: good.data},
		{Digest: badHash.digest, Data: badHash.data},
		{Digest: badSize.digest, Data: badSize.data},
		{Digest: empty.digest, Data: nil},
		{Digest: zblob.digest, Data: zdata, Compressor: repb.Compressor_ZSTD},
	}}
	resp, err := c.cas.BatchUpdateBlobs(ctx, req)
	if err != nil {
		t.Fatalf("BatchUpdateBlobs: %v", err)
	}
	// "The requests may succeed or fail independently."
	if len(resp.GetResponses()) != len(req.Requests) {
		t.Fatalf("%d responses for %d requests", len(resp.GetResponses()), len(req.Requests))
	}
	byDigest := map[string]codes.Code{}
	for _, r := range resp.GetResponses() {
		byDigest[fmt.Sprintf("%s/%d", r.GetDigest().GetHash(), r.GetDigest().GetSizeBytes())] = codes.Code(r.GetStatus().GetCode())
	}
	checks := []struct {
		name string
		b    testBlob
		want codes.Code
	}{
		{"matching blob", good, codes.OK},
		// "INVALID_ARGUMENT: The Digest does not match the provided data."
		{"hash mismatch", badHash, codes.InvalidArgument},
		{"size mismatch", badSize, codes.InvalidArgument},
		{"empty blob", empty, codes.OK},
		// "Must be IDENTITY/unspecified, or one of the compressors
		// advertised by supported_batch_update_compressors" (ZSTD is).
		{"zstd blob", zblob, codes.OK},
	}
	for _, ch := range checks {
		got, ok := byDigest[ch.b.String()]
		if !ok {
			t.Errorf("%s: no response for digest %s", ch.name, ch.b)
		} else if got != ch.want {
			t.Errorf("%s: status %v, want %v", ch.name, got, ch.want)
		}
	}
	data, err := c.batchRead(ctx, []*repb.Digest{good.digest, zblob.digest})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data[good.digest.Hash], good.data) || !bytes.Equal(data[zblob.digest.Hash], zblob.data) {
		t.Errorf("stored blobs read back differently")
	}
	if missing, _ := c.findMissing(ctx, []*repb.Digest{badHash.digest}); !missing[badHash.digest.Hash] {
		t.Errorf("a blob rejected for a hash mismatch was stored anyway")
	}

	// "INVALID_ARGUMENT: The client attempted to upload more than the server
	// supported limit."
	big := newTestBlob(bytes.Repeat([]byte{'x'}, int(limit)+1))
	_, err = c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: big.digest, Data: big.data}}})
	wantCode(t, "BatchUpdateBlobs over max_batch_total_size_bytes", err, codes.InvalidArgument)
}

func (c *conformanceClient) checkBatchRead(t *testing.T, limit int64) {
	ctx := t.Context()
	present := uniqueBlob(strings.Repeat("batch read ", 40))
	if err := c.batchUpload(ctx, []testBlob{present}); err != nil {
		t.Fatal(err)
	}
	absent := uniqueBlob("bread absent")
	empty := newTestBlob(nil)
	wrongSize := &repb.Digest{Hash: present.digest.Hash, SizeBytes: present.digest.SizeBytes - 1}
	resp, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{present.digest, absent.digest, empty.digest, wrongSize}})
	if err != nil {
		t.Fatalf("BatchReadBlobs: %v", err)
	}
	if len(resp.GetResponses()) != 4 {
		t.Fatalf("%d responses for 4 digests", len(resp.GetResponses()))
	}
	for _, r := range resp.GetResponses() {
		d := r.GetDigest()
		code := codes.Code(r.GetStatus().GetCode())
		// "The format the data is encoded in. MUST be IDENTITY/unspecified,
		// or one of the acceptable compressors" (none were given).
		if r.GetCompressor() != repb.Compressor_IDENTITY {
			t.Errorf("%s: compressor %v without acceptable_compressors", d, r.GetCompressor())
		}
		switch {
		case proto.Equal(d, present.digest):
			if code != codes.OK || !bytes.Equal(r.GetData(), present.data) {
				t.Errorf("present blob: %v, %d bytes", r.GetStatus(), len(r.GetData()))
			}
		case proto.Equal(d, absent.digest):
			// "Every error on individual read will be returned in the
			// corresponding digest status."
			if code != codes.NotFound {
				t.Errorf("absent blob: status %v, want NOT_FOUND", r.GetStatus())
			}
		case proto.Equal(d, empty.digest):
			// "Servers MUST behave as though empty blobs are always available."
			if code != codes.OK || len(r.GetData()) != 0 {
				t.Errorf("empty blob: %v, %d bytes", r.GetStatus(), len(r.GetData()))
			}
		case proto.Equal(d, wrongSize):
			// The size is "an integral part of the digest".
			if code != codes.NotFound && code != codes.InvalidArgument {
				t.Errorf("right hash, wrong size: status %v, want NOT_FOUND", r.GetStatus())
			}
		default:
			t.Errorf("response for a digest not asked for: %v", d)
		}
	}

	// acceptable_compressors: the data comes back in one of them or IDENTITY.
	resp, err = c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{present.digest}, AcceptableCompressors: []repb.Compressor_Value{repb.Compressor_ZSTD}})
	if err != nil || len(resp.GetResponses()) != 1 {
		t.Fatalf("BatchReadBlobs with zstd: %v, %v", resp, err)
	}
	r := resp.GetResponses()[0]
	data := r.GetData()
	switch r.GetCompressor() {
	case repb.Compressor_ZSTD:
		dec, _ := zstd.NewReader(nil)
		if data, err = dec.DecodeAll(data, nil); err != nil {
			t.Fatalf("zstd data does not decode: %v", err)
		}
	case repb.Compressor_IDENTITY:
	default:
		t.Errorf("compressor %v was not acceptable", r.GetCompressor())
	}
	if !bytes.Equal(data, present.data) {
		t.Errorf("zstd batch read returned other data")
	}

	// "INVALID_ARGUMENT: The client attempted to read more than the server
	// supported limit."
	var ds []*repb.Digest
	for i := 0; i < 3; i++ {
		b := uniqueBlob("bread big")
		ds = append(ds, &repb.Digest{Hash: b.digest.Hash, SizeBytes: limit/2 + 1})
	}
	_, err = c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: ds})
	wantCode(t, "BatchReadBlobs over max_batch_total_size_bytes", err, codes.InvalidArgument)
}
