package reapi

import (
	"bytes"
	"context"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
)

func protos(ds ...digest.Digest) []*repb.Digest {
	out := make([]*repb.Digest, len(ds))
	for i, d := range ds {
		out[i] = d.Proto()
	}
	return out
}

func TestFindMissingBlobs(t *testing.T) {
	conn, cfg := startServer(t)
	client := repb.NewContentAddressableStorageClient(conn)
	ctx := context.Background()
	for _, fn := range []digest.Function{digest.SHA256, digest.BLAKE3} {
		t.Run(fn.String(), func(t *testing.T) {
			present := putBlobs(t, cfg.CAS, fn, []byte("present "+fn.String()))[0]
			absent := blob(fn, "absent")
			resp, err := client.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
				DigestFunction: fn,
				BlobDigests:    protos(present, absent, digest.Empty(fn), absent),
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetMissingBlobDigests(); len(got) != 1 || !proto.Equal(got[0], absent.Proto()) {
				t.Fatalf("missing = %v, want only %s", got, absent)
			}
		})
	}

	// An unset digest function means SHA256; BLAKE3 is a separate namespace.
	sha := putBlobs(t, cfg.CAS, digest.SHA256, []byte("sha only"))[0]
	resp, err := client.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: protos(sha)})
	if err != nil || len(resp.GetMissingBlobDigests()) != 0 {
		t.Fatalf("unset function: missing %v, err %v; want none", resp.GetMissingBlobDigests(), err)
	}
	resp, err = client.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: digest.BLAKE3, BlobDigests: protos(sha)})
	if err != nil || len(resp.GetMissingBlobDigests()) != 1 {
		t.Fatalf("SHA256 blob asked for as BLAKE3: missing %v, err %v; want it missing", resp.GetMissingBlobDigests(), err)
	}
}

func TestFindMissingBlobsRejectsBadInput(t *testing.T) {
	conn, _ := startServer(t)
	client := repb.NewContentAddressableStorageClient(conn)
	good := blob(digest.SHA256, "x").Proto()
	for name, bad := range badDigests {
		t.Run(name, func(t *testing.T) {
			_, err := client.FindMissingBlobs(context.Background(), &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{good, bad}})
			wantCode(t, err, codes.InvalidArgument)
			if !strings.Contains(err.Error(), "blob_digests[1]") {
				t.Errorf("error %q does not name blob_digests[1]", err)
			}
		})
	}
	_, err := client.FindMissingBlobs(context.Background(), &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_SHA1, BlobDigests: []*repb.Digest{good}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = client.FindMissingBlobs(context.Background(), &repb.FindMissingBlobsRequest{InstanceName: "a/blobs", BlobDigests: []*repb.Digest{good}})
	wantCode(t, err, codes.InvalidArgument)
}

func zstdCompress(t *testing.T, data []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

func zstdDecompress(t *testing.T, data []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	out, err := dec.DecodeAll(data, nil)
	if err != nil {
		t.Fatalf("response is not zstd: %v", err)
	}
	return out
}

// zstdStream compresses data the way a streaming encoder does: several
// blocks, no content size in the header, and a declared window far larger
// than the data.
func zstdStream(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf, zstd.WithWindowSize(256<<20))
	if err != nil {
		t.Fatal(err)
	}
	half := len(data) / 2
	enc.Write(data[:half])
	enc.Flush()
	enc.Write(data[half:])
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestBatchUpdateBlobs(t *testing.T) {
	big := bytes.Repeat([]byte("compressible "), 1000)
	bomb := make([]byte, 8<<20) // decompresses far past the digest it claims
	type blobReq struct {
		digest     *repb.Digest
		data       []byte
		compressor repb.Compressor_Value
		wantCode   codes.Code
		stored     bool // whether the digest must be in the CAS afterwards
	}
	for _, fn := range []digest.Function{digest.SHA256, digest.BLAKE3} {
		d := func(s string) *repb.Digest { return blob(fn, s).Proto() }
		cases := []struct {
			name string
			reqs []blobReq
		}{
			{"identity", []blobReq{{d("one"), []byte("one"), 0, codes.OK, true}, {d("two"), []byte("two"), 0, codes.OK, true}}},
			{"mismatch fails alone", []blobReq{
				{d("good"), []byte("good"), 0, codes.OK, true},
				{d("claimed"), []byte("other"), 0, codes.InvalidArgument, false},
				{&repb.Digest{Hash: blob(fn, "short").Hash, SizeBytes: 4}, []byte("short"), 0, codes.InvalidArgument, false},
			}},
			{"duplicates", []blobReq{{d("dup"), []byte("dup"), 0, codes.OK, true}, {d("dup"), []byte("dup"), 0, codes.OK, true}}},
			{"empty blob", []blobReq{{digest.Empty(fn).Proto(), nil, 0, codes.OK, true}}},
			{"zstd", []blobReq{
				{digest.Compute(fn, big).Proto(), zstdCompress(t, big), repb.Compressor_ZSTD, codes.OK, true},
				{digest.Compute(fn, big[1:]).Proto(), zstdStream(t, big[1:]), repb.Compressor_ZSTD, codes.OK, true},
				{d("tiny"), zstdCompress(t, []byte("tiny")), repb.Compressor_ZSTD, codes.OK, true},
				{digest.Empty(fn).Proto(), zstdCompress(t, nil), repb.Compressor_ZSTD, codes.OK, true},
			}},
			{"zstd mismatch and damage", []blobReq{
				{d("zstd wrong"), zstdCompress(t, []byte("zstd other")), repb.Compressor_ZSTD, codes.InvalidArgument, false},
				{d("not zstd"), []byte("not zstd"), repb.Compressor_ZSTD, codes.InvalidArgument, false},
				{d("zstd bomb!"), zstdCompress(t, bomb), repb.Compressor_ZSTD, codes.InvalidArgument, false},
				{d("zstd ok"), zstdCompress(t, []byte("zstd ok")), repb.Compressor_ZSTD, codes.OK, true},
			}},
			{"unsupported compressor", []blobReq{
				{d("deflate"), []byte("deflate"), repb.Compressor_DEFLATE, codes.InvalidArgument, false},
				{d("enum 99"), []byte("enum 99"), repb.Compressor_Value(99), codes.InvalidArgument, false},
			}},
			{"malformed digests fail alone", []blobReq{
				{&repb.Digest{Hash: "abc", SizeBytes: 3}, []byte("abc"), 0, codes.InvalidArgument, false},
				{nil, []byte("x"), 0, codes.InvalidArgument, false},
				{d("fine"), []byte("fine"), 0, codes.OK, true},
			}},
		}
		for _, tc := range cases {
			t.Run(fn.String()+"/"+tc.name, func(t *testing.T) {
				conn, cfg := startServer(t)
				req := &repb.BatchUpdateBlobsRequest{DigestFunction: fn}
				for _, r := range tc.reqs {
					req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: r.digest, Data: r.data, Compressor: r.compressor})
				}
				resp, err := repb.NewContentAddressableStorageClient(conn).BatchUpdateBlobs(context.Background(), req)
				if err != nil {
					t.Fatal(err)
				}
				if len(resp.GetResponses()) != len(tc.reqs) {
					t.Fatalf("%d responses for %d requests", len(resp.GetResponses()), len(tc.reqs))
				}
				for i, r := range tc.reqs {
					got := resp.GetResponses()[i]
					if codes.Code(got.GetStatus().GetCode()) != r.wantCode {
						t.Errorf("blob %d: status %v, want %v", i, got.GetStatus(), r.wantCode)
					}
					if !proto.Equal(got.GetDigest(), r.digest) {
						t.Errorf("blob %d: response digest %v, want %v", i, got.GetDigest(), r.digest)
					}
					dg, err := digest.FromProto(fn, r.digest)
					if err != nil {
						continue
					}
					missing, err := cfg.CAS.FindMissing(context.Background(), []digest.Digest{dg})
					if err != nil {
						t.Fatal(err)
					}
					if stored := len(missing) == 0; stored != r.stored {
						t.Errorf("blob %d: stored = %v, want %v", i, stored, r.stored)
					}
				}
			})
		}
	}
}

func TestBatchUpdateBlobsRejectsOversizedBatch(t *testing.T) {
	conn, cfg := startServer(t, func(c *Config) { c.MaxBatchTotalSizeBytes = 100 })
	client := repb.NewContentAddressableStorageClient(conn)
	data := bytes.Repeat([]byte("a"), 60)
	d := digest.Compute(digest.SHA256, data)
	req := func(rs ...*repb.BatchUpdateBlobsRequest_Request) *repb.BatchUpdateBlobsRequest {
		return &repb.BatchUpdateBlobsRequest{Requests: rs}
	}
	for name, r := range map[string]*repb.BatchUpdateBlobsRequest{
		"data over the limit": req(
			&repb.BatchUpdateBlobsRequest_Request{Digest: d.Proto(), Data: data},
			&repb.BatchUpdateBlobsRequest_Request{Digest: d.Proto(), Data: data}),
		// A compressed blob counts at its uncompressed size, which bounds the
		// memory its decompression takes.
		"digest sizes over the limit": req(&repb.BatchUpdateBlobsRequest_Request{
			Digest: &repb.Digest{Hash: d.Hash, SizeBytes: 1 << 40}, Data: []byte("x"), Compressor: repb.Compressor_ZSTD}),
		"size overflow": req(
			&repb.BatchUpdateBlobsRequest_Request{Digest: &repb.Digest{Hash: d.Hash, SizeBytes: 1<<63 - 1}},
			&repb.BatchUpdateBlobsRequest_Request{Digest: &repb.Digest{Hash: d.Hash, SizeBytes: 1<<63 - 1}}),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := client.BatchUpdateBlobs(context.Background(), r)
			wantCode(t, err, codes.InvalidArgument)
			if !strings.Contains(err.Error(), "max_batch_total_size_bytes") {
				t.Errorf("error %q does not name the limit", err)
			}
		})
	}
	if missing, _ := cfg.CAS.FindMissing(context.Background(), []digest.Digest{d}); len(missing) != 1 {
		t.Error("a blob of a rejected batch was stored")
	}
	// At the limit exactly is fine.
	resp, err := client.BatchUpdateBlobs(context.Background(), req(&repb.BatchUpdateBlobsRequest_Request{
		Digest: digest.Compute(digest.SHA256, data[:50]).Proto(), Data: data[:50]}, &repb.BatchUpdateBlobsRequest_Request{
		Digest: digest.Compute(digest.SHA256, data[:50]).Proto(), Data: data[:50]}))
	if err != nil || resp.GetResponses()[0].GetStatus().GetCode() != 0 {
		t.Fatalf("batch at the limit: %v %v", resp, err)
	}
}

func TestBatchReadBlobs(t *testing.T) {
	for _, fn := range []digest.Function{digest.SHA256, digest.BLAKE3} {
		t.Run(fn.String(), func(t *testing.T) {
			conn, cfg := startServer(t)
			client := repb.NewContentAddressableStorageClient(conn)
			content := [][]byte{[]byte("first blob"), bytes.Repeat([]byte("second "), 500)}
			ds := putBlobs(t, cfg.CAS, fn, content...)
			absent := blob(fn, "absent")
			req := &repb.BatchReadBlobsRequest{
				DigestFunction: fn,
				Digests:        []*repb.Digest{ds[0].Proto(), absent.Proto(), ds[1].Proto(), digest.Empty(fn).Proto(), {Hash: "bad", SizeBytes: 1}, ds[0].Proto()},
			}
			want := []struct {
				code codes.Code
				data []byte
			}{{codes.OK, content[0]}, {codes.NotFound, nil}, {codes.OK, content[1]}, {codes.OK, nil}, {codes.InvalidArgument, nil}, {codes.OK, content[0]}}
			for _, compressors := range [][]repb.Compressor_Value{nil, {repb.Compressor_DEFLATE}, {repb.Compressor_BROTLI, repb.Compressor_ZSTD}} {
				req.AcceptableCompressors = compressors
				resp, err := client.BatchReadBlobs(context.Background(), req)
				if err != nil {
					t.Fatal(err)
				}
				if len(resp.GetResponses()) != len(want) {
					t.Fatalf("%d responses, want %d", len(resp.GetResponses()), len(want))
				}
				zstdAccepted := len(compressors) == 2
				for i, w := range want {
					r := resp.GetResponses()[i]
					if !proto.Equal(r.GetDigest(), req.Digests[i]) {
						t.Errorf("response %d is for %v, want %v", i, r.GetDigest(), req.Digests[i])
					}
					if codes.Code(r.GetStatus().GetCode()) != w.code {
						t.Errorf("response %d: status %v, want %v", i, r.GetStatus(), w.code)
						continue
					}
					if w.code != codes.OK {
						continue
					}
					data := r.GetData()
					switch {
					case zstdAccepted && r.GetCompressor() == repb.Compressor_ZSTD:
						data = zstdDecompress(t, data)
					case r.GetCompressor() != repb.Compressor_IDENTITY:
						t.Errorf("response %d: compressor %v not acceptable", i, r.GetCompressor())
					case zstdAccepted:
						t.Errorf("response %d: ZSTD accepted but not used", i)
					}
					if !bytes.Equal(data, w.data) {
						t.Errorf("response %d: data %q, want %q", i, data, w.data)
					}
				}
			}
		})
	}
}

func TestBatchReadBlobsRejectsOversizedBatch(t *testing.T) {
	conn, cfg := startServer(t, func(c *Config) { c.MaxBatchTotalSizeBytes = 100 })
	client := repb.NewContentAddressableStorageClient(conn)
	ds := putBlobs(t, cfg.CAS, digest.SHA256, bytes.Repeat([]byte("a"), 60), bytes.Repeat([]byte("b"), 40))
	_, err := client.BatchReadBlobs(context.Background(), &repb.BatchReadBlobsRequest{Digests: protos(ds[0], ds[1], ds[0])})
	wantCode(t, err, codes.InvalidArgument)
	_, err = client.BatchReadBlobs(context.Background(), &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{{Hash: ds[0].Hash, SizeBytes: 1<<63 - 1}, {Hash: ds[0].Hash, SizeBytes: 1<<63 - 1}}})
	wantCode(t, err, codes.InvalidArgument)
	resp, err := client.BatchReadBlobs(context.Background(), &repb.BatchReadBlobsRequest{Digests: protos(ds[0], ds[1])})
	if err != nil || len(resp.GetResponses()) != 2 {
		t.Fatalf("batch at the limit: %v, %v", resp, err)
	}
	_, err = client.BatchReadBlobs(context.Background(), &repb.BatchReadBlobsRequest{DigestFunction: repb.DigestFunction_MD5, Digests: protos(ds[0])})
	wantCode(t, err, codes.InvalidArgument)
}

// The CAS is one namespace for all instance names: a blob uploaded through
// one instance is found through another.
func TestCASIsSharedAcrossInstances(t *testing.T) {
	conn, _ := startServer(t)
	client := repb.NewContentAddressableStorageClient(conn)
	d := blob(digest.SHA256, "shared")
	_, err := client.BatchUpdateBlobs(context.Background(), &repb.BatchUpdateBlobsRequest{
		InstanceName: "one",
		Requests:     []*repb.BatchUpdateBlobsRequest_Request{{Digest: d.Proto(), Data: []byte("shared")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.BatchReadBlobs(context.Background(), &repb.BatchReadBlobsRequest{InstanceName: "two/sub", Digests: protos(d)})
	if err != nil || string(resp.GetResponses()[0].GetData()) != "shared" {
		t.Fatalf("read through another instance: %v, %v", resp, err)
	}
}
