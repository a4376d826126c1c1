package e2e

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// dialDefaultLimits is a client with gRPC's default message limits (4 MiB
// received), as most REAPI clients run: what the server advertises must be
// usable by it.
func (c *conformanceClient) dialDefaultLimits(t *testing.T) *reapiClient {
	t.Helper()
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dialing %s: %v", c.addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &reapiClient{conn: conn, cas: repb.NewContentAddressableStorageClient(conn), bs: bspb.NewByteStreamClient(conn), caps: repb.NewCapabilitiesClient(conn)}
}

// cacheCaps returns the server's CacheCapabilities.
func (c *conformanceClient) cacheCaps(t *testing.T) *repb.CacheCapabilities {
	t.Helper()
	caps, err := c.caps.GetCapabilities(t.Context(), &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("GetCapabilities: %v", err)
	}
	return caps.GetCacheCapabilities()
}

// batchCodes maps "hash/size" to the codes of the responses for it, so
// checks need not assume the responses come in request order.
func batchCodes(resps []*repb.BatchUpdateBlobsResponse_Response) map[string][]codes.Code {
	out := map[string][]codes.Code{}
	for _, r := range resps {
		k := fmt.Sprintf("%s/%d", r.GetDigest().GetHash(), r.GetDigest().GetSizeBytes())
		out[k] = append(out[k], codes.Code(r.GetStatus().GetCode()))
	}
	return out
}

func (c *conformanceClient) checkBatchIndependence(t *testing.T) {
	ctx := t.Context()
	cc := c.cacheCaps(t)
	good := uniqueBlob("independent good")
	dup := uniqueBlob("independent duplicate")
	deflated := uniqueBlob("independent deflate")
	corrupt := uniqueBlob("independent corrupt zstd")
	otherZ := uniqueBlob("independent zstd of other data")
	enc, _ := zstd.NewWriter(nil)
	reqs := []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: good.digest, Data: good.data},
		// "This request is equivalent to calling a Bytestream Write request
		// on each individual blob, in parallel": the same blob twice is two
		// uploads of present data, both fine.
		{Digest: dup.digest, Data: dup.data},
		{Digest: dup.digest, Data: dup.data},
		{Digest: corrupt.digest, Data: []byte("this is not a zstd frame"), Compressor: repb.Compressor_ZSTD},
		{Digest: otherZ.digest, Data: enc.EncodeAll(bytes.Repeat([]byte{'y'}, len(otherZ.data)), nil), Compressor: repb.Compressor_ZSTD},
	}
	// compressor: "Must be IDENTITY/unspecified, or one of the compressors
	// advertised by the CacheCapabilities.supported_batch_update_compressors
	// field." A blob in another one is refused on its own.
	deflateAdvertised := slices.Contains(cc.GetSupportedBatchUpdateCompressors(), repb.Compressor_DEFLATE)
	if !deflateAdvertised {
		reqs = append(reqs, &repb.BatchUpdateBlobsRequest_Request{Digest: deflated.digest, Data: deflated.data, Compressor: repb.Compressor_DEFLATE})
	}
	resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: reqs})
	if err != nil {
		t.Fatalf("BatchUpdateBlobs: %v", err)
	}
	// "The requests may succeed or fail independently."
	if len(resp.GetResponses()) != len(reqs) {
		t.Fatalf("%d responses for %d requests", len(resp.GetResponses()), len(reqs))
	}
	got := batchCodes(resp.GetResponses())
	want := map[string][]codes.Code{
		good.String(): {codes.OK},
		dup.String():  {codes.OK, codes.OK},
		// "INVALID_ARGUMENT: The Digest does not match the provided data."
		corrupt.String(): {codes.InvalidArgument},
		otherZ.String():  {codes.InvalidArgument},
	}
	if !deflateAdvertised {
		want[deflated.String()] = []codes.Code{codes.InvalidArgument}
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("BatchUpdateBlobs response codes for %s: %v, want %v", k, got[k], w)
		}
	}
	missing, err := c.findMissing(ctx, []*repb.Digest{good.digest, dup.digest, corrupt.digest, otherZ.digest, deflated.digest})
	if err != nil {
		t.Fatal(err)
	}
	if missing[good.digest.Hash] || missing[dup.digest.Hash] {
		t.Errorf("blobs acknowledged OK are missing: %v", missing)
	}
	if !missing[corrupt.digest.Hash] || !missing[otherZ.digest.Hash] || !missing[deflated.digest.Hash] {
		t.Errorf("refused blobs were stored: missing = %v", missing)
	}

	// A malformed digest next to a good blob: refused on its own, or the
	// whole call is INVALID_ARGUMENT; never stored, never OK.
	good2 := uniqueBlob("independent good 2")
	bad := &repb.Digest{Hash: "NOT-A-HASH", SizeBytes: 3}
	resp, err = c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: good2.digest, Data: good2.data}, {Digest: bad, Data: []byte("abc")},
	}})
	if err != nil {
		wantCode(t, "BatchUpdateBlobs with a malformed digest", err, codes.InvalidArgument)
	} else {
		got := batchCodes(resp.GetResponses())
		if !slices.Equal(got[good2.String()], []codes.Code{codes.OK}) || !slices.Equal(got["NOT-A-HASH/3"], []codes.Code{codes.InvalidArgument}) {
			t.Errorf("BatchUpdateBlobs with one malformed digest: codes %v, want OK for the good blob and INVALID_ARGUMENT for the other", got)
		}
	}

	// "Every error on individual read will be returned in the corresponding
	// digest status": a malformed digest, too, fails in its own status.
	rresp, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{good.digest, {Hash: "NOT-A-HASH", SizeBytes: 1}, good.digest}})
	if err != nil {
		t.Fatalf("BatchReadBlobs with a malformed digest: %v", err)
	}
	if len(rresp.GetResponses()) != 3 {
		t.Fatalf("BatchReadBlobs: %d responses for 3 digests", len(rresp.GetResponses()))
	}
	for _, r := range rresp.GetResponses() {
		code := codes.Code(r.GetStatus().GetCode())
		switch r.GetDigest().GetHash() {
		case good.digest.Hash:
			if code != codes.OK || !bytes.Equal(r.GetData(), good.data) {
				t.Errorf("BatchReadBlobs of a present blob next to a malformed digest: %v", r.GetStatus())
			}
		case "NOT-A-HASH":
			if code != codes.InvalidArgument {
				t.Errorf("BatchReadBlobs of a malformed digest: status %v, want INVALID_ARGUMENT", r.GetStatus())
			}
		default:
			t.Errorf("BatchReadBlobs answered for a digest not asked for: %v", r.GetDigest())
		}
	}

	// acceptable_compressors: "IDENTITY is always allowed even if not
	// specified here", and the data comes back in IDENTITY or one listed.
	rresp, err = c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{good.digest}, AcceptableCompressors: []repb.Compressor_Value{repb.Compressor_DEFLATE}})
	if err != nil || len(rresp.GetResponses()) != 1 {
		t.Fatalf("BatchReadBlobs accepting DEFLATE: %v, %v", rresp, err)
	}
	r := rresp.GetResponses()[0]
	data := r.GetData()
	switch r.GetCompressor() {
	case repb.Compressor_IDENTITY:
	case repb.Compressor_DEFLATE:
		if data, err = io.ReadAll(flate.NewReader(bytes.NewReader(data))); err != nil {
			t.Fatalf("DEFLATE data does not inflate: %v", err)
		}
	default:
		t.Errorf("BatchReadBlobs returned compressor %v, which was not acceptable", r.GetCompressor())
	}
	if !bytes.Equal(data, good.data) {
		t.Errorf("BatchReadBlobs accepting DEFLATE returned other data")
	}
	// The empty blob in ZSTD: whatever comes back decodes to nothing.
	empty := newTestBlob(nil)
	rresp, err = c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{empty.digest}, AcceptableCompressors: []repb.Compressor_Value{repb.Compressor_ZSTD}})
	if err != nil || len(rresp.GetResponses()) != 1 || rresp.GetResponses()[0].GetStatus().GetCode() != 0 {
		t.Fatalf("BatchReadBlobs of the empty blob accepting ZSTD: %v, %v", rresp, err)
	}
	if r := rresp.GetResponses()[0]; r.GetCompressor() == repb.Compressor_ZSTD {
		dec, _ := zstd.NewReader(nil)
		if d, err := dec.DecodeAll(r.GetData(), nil); err != nil || len(d) != 0 {
			t.Errorf("the empty blob in ZSTD decodes to %d bytes, %v", len(d), err)
		}
	} else if len(r.GetData()) != 0 {
		t.Errorf("the empty blob has %d bytes", len(r.GetData()))
	}

	// Nothing asked, nothing answered.
	if resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{}); err != nil || len(resp.GetResponses()) != 0 {
		t.Errorf("BatchUpdateBlobs of nothing: %v, %v", resp, err)
	}
	if resp, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{}); err != nil || len(resp.GetResponses()) != 0 {
		t.Errorf("BatchReadBlobs of nothing: %v, %v", resp, err)
	}
}

func (c *conformanceClient) checkBatchLimit(t *testing.T, limit int64) {
	ctx := t.Context()
	// max_batch_total_size_bytes is the "Maximum total size of blobs to be
	// uploaded/downloaded using batch methods": a batch of exactly that much
	// is within it.
	tag := []byte(uuid.NewString())
	half := newTestBlob(append(bytes.Repeat([]byte{'h'}, int(limit/2)-len(tag)), tag...))
	rest := newTestBlob(append(bytes.Repeat([]byte{'r'}, int(limit-limit/2)-len(tag)), tag...))
	if half.digest.SizeBytes+rest.digest.SizeBytes != limit {
		t.Fatalf("test bug: %d + %d != %d", half.digest.SizeBytes, rest.digest.SizeBytes, limit)
	}
	if err := c.batchUpload(ctx, []testBlob{half, rest}); err != nil {
		t.Fatalf("BatchUpdateBlobs of exactly max_batch_total_size_bytes: %v", err)
	}
	// Reading the same batch back must work for a client with gRPC's
	// default 4 MiB receive limit whenever the advertised limit is below it:
	// a limit the server cannot deliver to a default client is no limit.
	reader := c.reapiClient
	if limit <= 4<<20-64<<10 {
		reader = c.dialDefaultLimits(t)
	}
	data, err := reader.batchRead(ctx, []*repb.Digest{half.digest, rest.digest})
	if err != nil {
		t.Fatalf("BatchReadBlobs of exactly max_batch_total_size_bytes: %v", err)
	}
	if !bytes.Equal(data[half.digest.Hash], half.data) || !bytes.Equal(data[rest.digest.Hash], rest.data) {
		t.Errorf("a full batch read back differently")
	}
}

func (c *conformanceClient) checkDigestFunctionField(t *testing.T) {
	ctx := t.Context()
	cc := c.cacheCaps(t)
	empty := newTestBlob(nil)
	b := uniqueBlob("digest function field")
	if err := c.batchUpload(ctx, []testBlob{b}); err != nil {
		t.Fatal(err)
	}
	// An explicit SHA256 means what leaving it unset means for a 64-hex hash.
	for _, fn := range []repb.DigestFunction_Value{repb.DigestFunction_UNKNOWN, repb.DigestFunction_SHA256} {
		resp, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: fn, BlobDigests: []*repb.Digest{b.digest}})
		if err != nil || len(resp.GetMissingBlobDigests()) != 0 {
			t.Errorf("FindMissingBlobs of a stored SHA256 blob with digest_function %v: %v, %v", fn, resp, err)
		}
	}
	// The hash of a SHA256 blob, asked for as BLAKE3, names another blob
	// (one nobody uploaded): "individual execution requests may only
	// reference CAS objects using a single digest function", and a store
	// that answered by hash alone would serve data whose BLAKE3 digest is not
	// the one asked for.
	fm, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3, BlobDigests: []*repb.Digest{b.digest}})
	if err != nil || len(fm.GetMissingBlobDigests()) != 1 {
		t.Errorf("FindMissingBlobs BLAKE3 of a blob stored as SHA256: %v, %v; want it missing", fm, err)
	}
	rd, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3, Digests: []*repb.Digest{b.digest}})
	if err != nil || codes.Code(rd.GetResponses()[0].GetStatus().GetCode()) != codes.NotFound {
		t.Errorf("BatchReadBlobs BLAKE3 of a blob stored as SHA256: %v, %v; want NOT_FOUND", rd, err)
	}
	_, err = c.readAll(ctx, &bspb.ReadRequest{ResourceName: "blobs/blake3/" + b.String()})
	wantCode(t, "Read blobs/blake3/ of a blob stored as SHA256", err, codes.NotFound)
	if q, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: fmt.Sprintf("uploads/%s/blobs/blake3/%s", uuid.NewString(), b)}); codeOf(err) != codes.NotFound {
		t.Errorf("QueryWriteStatus of a BLAKE3 upload of a hash stored as SHA256: %v, %v; want NOT_FOUND", q, err)
	}

	// A function the server does not announce, and a value that is no
	// function at all: the request cannot be served as asked.
	unsupported := []repb.DigestFunction_Value{repb.DigestFunction_Value(99)}
	for _, fn := range []repb.DigestFunction_Value{repb.DigestFunction_SHA384, repb.DigestFunction_SHA1, repb.DigestFunction_GITSHA1} {
		if !slices.Contains(cc.GetDigestFunctions(), fn) {
			unsupported = append(unsupported, fn)
		}
	}
	for _, fn := range unsupported {
		what := func(rpc string) string { return fmt.Sprintf("%s with digest_function %v", rpc, fn) }
		_, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: fn, BlobDigests: []*repb.Digest{b.digest}})
		wantCode(t, what("FindMissingBlobs"), err, codes.InvalidArgument)
		up, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: fn, Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: empty.digest}}})
		if err == nil && codes.Code(up.GetResponses()[0].GetStatus().GetCode()) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", what("BatchUpdateBlobs"), up)
		} else if err != nil {
			wantCode(t, what("BatchUpdateBlobs"), err, codes.InvalidArgument)
		}
		rd, err = c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{DigestFunction: fn, Digests: []*repb.Digest{b.digest}})
		if err == nil && codes.Code(rd.GetResponses()[0].GetStatus().GetCode()) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", what("BatchReadBlobs"), rd)
		} else if err != nil {
			wantCode(t, what("BatchReadBlobs"), err, codes.InvalidArgument)
		}
		_, err = c.getTree(ctx, &repb.GetTreeRequest{DigestFunction: fn, RootDigest: empty.digest})
		wantCode(t, what("GetTree"), err, codes.InvalidArgument)
		_, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{DigestFunction: fn, ActionDigest: b.digest})
		wantCode(t, what("GetActionResult"), err, codes.InvalidArgument)
		_, err = c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{DigestFunction: fn, ActionDigest: b.digest, ActionResult: &repb.ActionResult{}})
		wantCode(t, what("UpdateActionResult"), err, codes.InvalidArgument)
	}
	// digest_function unset: "the server SHOULD infer the digest function
	// using the length of the blob digest hashes and the digest functions
	// announced". A 128-hex hash is SHA512's length; unannounced, it names
	// no blob the server can hold.
	if !slices.Contains(cc.GetDigestFunctions(), repb.DigestFunction_SHA512) {
		long := &repb.Digest{Hash: strings.Repeat("ab", 64), SizeBytes: 5}
		_, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{long}})
		wantCode(t, "FindMissingBlobs of a SHA512-length hash", err, codes.InvalidArgument)
	}
}

func (c *conformanceClient) checkGetTreePaging(t *testing.T) {
	ctx := t.Context()
	// A tree of 1 + 12 + 12 distinct directories.
	tag := uuid.NewString()
	var want []string
	root := &repb.Directory{}
	for i := range 12 {
		leaf := c.putDirectory(t, &repb.Directory{Files: []*repb.FileNode{{Name: fmt.Sprintf("%s-%d", tag, i), Digest: newTestBlob(nil).digest}}})
		mid := c.putDirectory(t, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "leaf", Digest: leaf.digest}}})
		root.Directories = append(root.Directories, &repb.DirectoryNode{Name: fmt.Sprintf("d%02d", i), Digest: mid.digest})
		want = append(want, leaf.String(), mid.String())
	}
	rootB := c.putDirectory(t, root)
	want = append(want, rootB.String())
	names := func(ps []*repb.GetTreeResponse) []string {
		var out []string
		for _, p := range ps {
			for _, d := range p.GetDirectories() {
				out = append(out, marshalBlob(t, d).String())
			}
		}
		return out
	}

	// page_size: "the server will request no more than this many items".
	pages, err := c.getTree(ctx, &repb.GetTreeRequest{RootDigest: rootB.digest, PageSize: 4})
	if err != nil {
		t.Fatalf("GetTree page_size 4: %v", err)
	}
	for i, p := range pages {
		if len(p.GetDirectories()) > 4 {
			t.Errorf("page %d of page_size 4 has %d directories", i, len(p.GetDirectories()))
		}
		// "If present, signifies that there are more results"; "If empty,
		// signifies that this is the last page of results."
		if last := i == len(pages)-1; last != (p.GetNextPageToken() == "") {
			t.Errorf("page %d of %d has next_page_token %q", i, len(pages), p.GetNextPageToken())
		}
	}
	all := names(pages)
	// "return every node descended from the root", each once.
	if got, w := slices.Sorted(slices.Values(all)), slices.Sorted(slices.Values(want)); !slices.Equal(got, w) {
		t.Errorf("GetTree returned %d directories %v, want the %d of the tree", len(got), got, len(w))
	}

	// A token resumes "returning only that page and the ones that succeed
	// it", and the order is stable "when retrieving subsequent pages from an
	// earlier request": so each token's call yields exactly the rest.
	offset := 0
	for i, p := range pages[:len(pages)-1] {
		offset += len(p.GetDirectories())
		rest, err := c.getTree(ctx, &repb.GetTreeRequest{RootDigest: rootB.digest, PageSize: 4, PageToken: p.GetNextPageToken()})
		if err != nil {
			t.Fatalf("GetTree with the token of page %d: %v", i, err)
		}
		if got := names(rest); !slices.Equal(got, all[offset:]) {
			t.Errorf("GetTree resumed after page %d: %d directories, want the %d that followed it", i, len(got), len(all)-offset)
		}
	}

	// page_token "must be a value received in a previous GetTreeResponse".
	for _, tok := range []string{"not a token", "AAAA", "x" + pages[0].GetNextPageToken()[1:]} {
		_, err = c.getTree(ctx, &repb.GetTreeRequest{RootDigest: rootB.digest, PageToken: tok})
		wantCode(t, fmt.Sprintf("GetTree with page_token %q", tok), err, codes.InvalidArgument)
	}

	// Under an instance name, and with BLAKE3 digests.
	if got, err := c.getTree(ctx, &repb.GetTreeRequest{InstanceName: "some/instance", RootDigest: rootB.digest}); err != nil || len(names(got)) != len(want) {
		t.Errorf("GetTree under an instance name: %d directories, %v", len(names(got)), err)
	}
	leaf3 := blake3Proto(t, &repb.Directory{Files: []*repb.FileNode{{Name: tag, Digest: blake3Blob(nil).digest}}})
	root3 := blake3Proto(t, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "x", Digest: leaf3.digest}}})
	up, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3, Requests: []*repb.BatchUpdateBlobsRequest_Request{
		{Digest: leaf3.digest, Data: leaf3.data}, {Digest: root3.digest, Data: root3.data},
	}})
	if err != nil || up.GetResponses()[0].GetStatus().GetCode() != 0 || up.GetResponses()[1].GetStatus().GetCode() != 0 {
		t.Fatalf("uploading BLAKE3 directories: %v, %v", up, err)
	}
	got3, err := c.getTree(ctx, &repb.GetTreeRequest{DigestFunction: repb.DigestFunction_BLAKE3, RootDigest: root3.digest})
	if err != nil || len(names(got3)) != 2 {
		t.Errorf("GetTree of a BLAKE3 tree: %d directories, %v; want 2", len(names(got3)), err)
	}
	// The same hash as SHA256 names no stored Directory.
	_, err = c.getTree(ctx, &repb.GetTreeRequest{DigestFunction: repb.DigestFunction_SHA256, RootDigest: root3.digest})
	wantCode(t, "GetTree of a BLAKE3 root asked as SHA256", err, codes.NotFound)
}

// TestConformanceBlobSizeLimit checks max_cas_blob_size_bytes on a server
// whose CAS is bounded.
func TestConformanceBlobSizeLimit(t *testing.T) {
	p := startServe(t, t.TempDir(), "--cas-max-bytes", "262144")
	c := &conformanceClient{reapiClient: dial(t, p.GRPCAddr), addr: p.GRPCAddr}
	ctx := t.Context()
	limit := c.cacheCaps(t).GetMaxCasBlobSizeBytes()
	if limit <= 0 {
		t.Fatalf("a server with a 256 KiB CAS advertises max_cas_blob_size_bytes %d", limit)
	}
	// "Servers SHOULD reject blob uploads over the max_cas_blob_size_bytes
	// limit with response code INVALID_ARGUMENT".
	big := noiseBlob(int(limit) + 1)
	_, err := c.write(ctx, &bspb.WriteRequest{ResourceName: uploadResource(big), Data: big.data, FinishWrite: true})
	wantCode(t, "Write over max_cas_blob_size_bytes", err, codes.InvalidArgument)
	enc, _ := zstd.NewWriter(nil)
	_, err = c.write(ctx, &bspb.WriteRequest{ResourceName: fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), big), Data: enc.EncodeAll(big.data, nil), FinishWrite: true})
	wantCode(t, "compressed Write over max_cas_blob_size_bytes", err, codes.InvalidArgument)
	resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: big.digest, Data: big.data}}})
	if err == nil && codes.Code(resp.GetResponses()[0].GetStatus().GetCode()) != codes.InvalidArgument {
		t.Errorf("BatchUpdateBlobs over max_cas_blob_size_bytes: %v, want INVALID_ARGUMENT", resp.GetResponses()[0].GetStatus())
	} else if err != nil {
		wantCode(t, "BatchUpdateBlobs over max_cas_blob_size_bytes", err, codes.InvalidArgument)
	}
	// A blob within the limit is still stored.
	small := noiseBlob(1000)
	if err := c.byteStreamWrite(ctx, small, 300); err != nil {
		t.Errorf("a blob within max_cas_blob_size_bytes: %v", err)
	}
}

// checkAdvertised uses every digest function and compressor the server
// advertises, so a capability it claims is one it serves.
func (c *conformanceClient) checkAdvertised(t *testing.T) {
	ctx := t.Context()
	caps, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cc := caps.GetCacheCapabilities()
	// PriorityRange: "Supported range of priorities, including boundaries"
	// from min_priority to max_priority.
	ranges := append(slices.Clone(cc.GetCachePriorityCapabilities().GetPriorities()), caps.GetExecutionCapabilities().GetExecutionPriorityCapabilities().GetPriorities()...)
	for _, r := range ranges {
		if r.GetMinPriority() > r.GetMaxPriority() {
			t.Errorf("priority range min %d > max %d", r.GetMinPriority(), r.GetMaxPriority())
		}
	}
	if cc.GetMaxBatchTotalSizeBytes() < 0 || cc.GetMaxCasBlobSizeBytes() < 0 {
		t.Errorf("negative size limits: max_batch_total_size_bytes %d, max_cas_blob_size_bytes %d", cc.GetMaxBatchTotalSizeBytes(), cc.GetMaxCasBlobSizeBytes())
	}
	// "Remote cache may support multiple digest functions simultaneously."
	blobFor := map[repb.DigestFunction_Value]func([]byte) testBlob{repb.DigestFunction_SHA256: newTestBlob, repb.DigestFunction_BLAKE3: blake3Blob}
	encode := map[repb.Compressor_Value]func([]byte) []byte{
		repb.Compressor_ZSTD: func(b []byte) []byte { e, _ := zstd.NewWriter(nil); return e.EncodeAll(b, nil) },
		repb.Compressor_DEFLATE: func(b []byte) []byte {
			var buf bytes.Buffer
			w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
			w.Write(b)
			w.Close()
			return buf.Bytes()
		},
	}
	for _, fn := range cc.GetDigestFunctions() {
		mk, ok := blobFor[fn]
		if !ok {
			t.Logf("digest function %v is advertised; this suite cannot compute it", fn)
			continue
		}
		seg := ""
		if fn != repb.DigestFunction_SHA256 {
			seg = strings.ToLower(fn.String()) + "/"
		}
		b := mk([]byte(strings.Repeat("advertised ", 30) + uuid.NewString()))
		resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: fn, Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: b.digest, Data: b.data}}})
		if err != nil || resp.GetResponses()[0].GetStatus().GetCode() != 0 {
			t.Errorf("BatchUpdateBlobs with advertised %v: %v, %v", fn, resp, err)
		}
		// supported_compressors: the "compressed-blobs" bytestream resources.
		for _, comp := range cc.GetSupportedCompressors() {
			enc, ok := encode[comp]
			if !ok {
				t.Logf("compressor %v is advertised; this suite cannot encode it", comp)
				continue
			}
			u := mk([]byte(strings.Repeat("advertised upload ", 30) + uuid.NewString()))
			cname := strings.ToLower(comp.String())
			name := fmt.Sprintf("uploads/%s/compressed-blobs/%s/%s%s", uuid.NewString(), cname, seg, u)
			if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: enc(u.data), FinishWrite: true}); err != nil {
				t.Errorf("Write %s: %v", name, err)
			}
			if got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: "blobs/" + seg + u.String()}); err != nil || !bytes.Equal(got, u.data) {
				t.Errorf("Read of the %v/%v upload: %v", fn, comp, err)
			}
			if _, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: fmt.Sprintf("compressed-blobs/%s/%s%s", cname, seg, b)}); err != nil {
				t.Errorf("compressed Read %v/%v: %v", fn, comp, err)
			}
		}
		// supported_batch_update_compressors: inlined data in BatchUpdateBlobs.
		for _, comp := range cc.GetSupportedBatchUpdateCompressors() {
			enc, ok := encode[comp]
			if !ok {
				continue
			}
			u := mk([]byte(strings.Repeat("advertised batch ", 30) + uuid.NewString()))
			resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: fn, Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: u.digest, Data: enc(u.data), Compressor: comp}}})
			if err != nil || resp.GetResponses()[0].GetStatus().GetCode() != 0 {
				t.Errorf("BatchUpdateBlobs %v/%v: %v, %v", fn, comp, resp, err)
			}
		}
	}
}
