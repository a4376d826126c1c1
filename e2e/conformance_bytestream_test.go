package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func (c *conformanceClient) checkByteStreamRead(t *testing.T) {
	ctx := t.Context()
	b := uniqueBlob(strings.Repeat("0123456789", 100))
	if err := c.batchUpload(ctx, []testBlob{b}); err != nil {
		t.Fatal(err)
	}
	name := "blobs/" + b.String()
	size := b.digest.SizeBytes
	absent := uniqueBlob("bs absent")
	empty := newTestBlob(nil)
	tests := []struct {
		name     string
		req      *bspb.ReadRequest
		wantCode codes.Code
		want     []byte
	}{
		{"whole blob", &bspb.ReadRequest{ResourceName: name}, codes.OK, b.data},
		{"offset and limit", &bspb.ReadRequest{ResourceName: name, ReadOffset: 10, ReadLimit: 25}, codes.OK, b.data[10:35]},
		// "If the stream returns fewer bytes than allowed by the read_limit
		// ... the stream includes all data from the read_offset to the end."
		{"limit past the end", &bspb.ReadRequest{ResourceName: name, ReadOffset: size - 5, ReadLimit: 100}, codes.OK, b.data[size-5:]},
		{"offset equal to size", &bspb.ReadRequest{ResourceName: name, ReadOffset: size}, codes.OK, nil},
		// "A read_offset that is negative or greater than the size of the
		// resource will cause an OUT_OF_RANGE error."
		{"offset past size", &bspb.ReadRequest{ResourceName: name, ReadOffset: size + 1}, codes.OutOfRange, nil},
		{"negative offset", &bspb.ReadRequest{ResourceName: name, ReadOffset: -1}, codes.OutOfRange, nil},
		// "a negative read_limit will cause an error" (code unspecified;
		// INVALID_ARGUMENT is the canonical one for a bad argument).
		{"negative limit", &bspb.ReadRequest{ResourceName: name, ReadLimit: -1}, codes.InvalidArgument, nil},
		{"absent blob", &bspb.ReadRequest{ResourceName: "blobs/" + absent.String()}, codes.NotFound, nil},
		// "Servers MUST behave as though empty blobs are always available."
		{"empty blob never uploaded", &bspb.ReadRequest{ResourceName: "blobs/" + empty.String()}, codes.OK, nil},
		// Size is "an integral part of the digest".
		{"right hash, wrong size", &bspb.ReadRequest{ResourceName: fmt.Sprintf("blobs/%s/%d", b.digest.Hash, size+1)}, codes.NotFound, nil},
		{"instance name", &bspb.ReadRequest{ResourceName: "some/instance/" + name}, codes.OK, b.data},
		{"compressed read", &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/" + b.String()}, codes.OK, b.data},
		// "ReadRequest.read_offset refers to the offset in the uncompressed
		// form of the blob."
		{"compressed read with offset", &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/" + b.String(), ReadOffset: 990}, codes.OK, b.data[990:]},
		// "Servers MUST return INVALID_ARGUMENT if ReadRequest.read_limit is
		// non-zero."
		{"compressed read with limit", &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/" + b.String(), ReadLimit: 10}, codes.InvalidArgument, nil},
		{"compressed empty blob", &bspb.ReadRequest{ResourceName: "compressed-blobs/zstd/" + empty.String()}, codes.OK, nil},
		{"not a resource name", &bspb.ReadRequest{ResourceName: "nonsense"}, codes.InvalidArgument, nil},
		{"uppercase hash", &bspb.ReadRequest{ResourceName: fmt.Sprintf("blobs/%s/%d", strings.ToUpper(b.digest.Hash), size)}, codes.InvalidArgument, nil},
		// Dot segments in the instance name: a path normaliser would make
		// "a/../blobs/..." another instance's name, so it has no one meaning.
		{"instance segment ..", &bspb.ReadRequest{ResourceName: "a/../" + name}, codes.InvalidArgument, nil},
		{"instance segment .", &bspb.ReadRequest{ResourceName: "./" + name}, codes.InvalidArgument, nil},
		{"instance of ..", &bspb.ReadRequest{ResourceName: "../" + name}, codes.InvalidArgument, nil},
		{"compressed, instance segment ..", &bspb.ReadRequest{ResourceName: "x/../compressed-blobs/zstd/" + b.String()}, codes.InvalidArgument, nil},
	}
	dec, _ := zstd.NewReader(nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.readAll(ctx, tc.req)
			if codeOf(err) != tc.wantCode {
				t.Fatalf("Read %v: %v, want %v", tc.req, err, tc.wantCode)
			}
			if err != nil {
				return
			}
			if strings.HasPrefix(tc.req.ResourceName, "compressed-blobs/") {
				if got, err = dec.DecodeAll(got, nil); err != nil {
					t.Fatalf("compressed read is not zstd: %v", err)
				}
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("Read %v: %d bytes, want %d", tc.req, len(got), len(tc.want))
			}
		})
	}
	// The optional header "MUST match the resource_name of the request
	// message"; a server may rely on it for routing, so a mismatch is a
	// client error.
	_, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: name}, "build.bazel.remote.execution.v2.resource-name", "blobs/"+absent.String())
	wantCode(t, "Read with a mismatched resource-name header", err, codes.InvalidArgument)
	if got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: name}, "build.bazel.remote.execution.v2.resource-name", name); err != nil || !bytes.Equal(got, b.data) {
		t.Errorf("Read with a matching resource-name header: %v", err)
	}
}

func (c *conformanceClient) checkByteStreamWrite(t *testing.T) {
	ctx := t.Context()
	up := func(b testBlob) string { return uploadResource(b) }

	t.Run("complete upload", func(t *testing.T) {
		b := uniqueBlob(strings.Repeat("w", 3000))
		name := up(b)
		resp, err := c.write(ctx,
			&bspb.WriteRequest{ResourceName: name, WriteOffset: 0, Data: b.data[:1000]},
			&bspb.WriteRequest{WriteOffset: 1000, Data: b.data[1000:2000]},
			// "If it is set on subsequent calls, it must match the value of
			// the first request."
			&bspb.WriteRequest{ResourceName: name, WriteOffset: 2000, Data: b.data[2000:], FinishWrite: true})
		if err != nil || resp.GetCommittedSize() != b.digest.SizeBytes {
			t.Fatalf("Write: %v, %v", resp, err)
		}
		// "complete is true only if the client has sent a WriteRequest with
		// finish_write set to true, and the server has processed that request."
		q, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err != nil || !q.GetComplete() || q.GetCommittedSize() != b.digest.SizeBytes {
			t.Errorf("QueryWriteStatus after the upload: %v, %v", q, err)
		}
		got, err := c.byteStreamRead(ctx, b.digest)
		if err != nil || !bytes.Equal(got, b.data) {
			t.Errorf("reading the uploaded blob: %v", err)
		}
	})

	t.Run("digest mismatch", func(t *testing.T) {
		// "If the client completes the upload but the Digest does not match,
		// an INVALID_ARGUMENT error will be returned."
		b := uniqueBlob("mismatch")
		wrong := append([]byte(nil), b.data...)
		wrong[0] ^= 1
		_, err := c.write(ctx, &bspb.WriteRequest{ResourceName: up(b), Data: wrong, FinishWrite: true})
		wantCode(t, "Write of data that does not match the digest", err, codes.InvalidArgument)
		if m, _ := c.findMissing(ctx, []*repb.Digest{b.digest}); !m[b.digest.Hash] {
			t.Errorf("mismatched data was stored")
		}
		// Fewer bytes than the name declares.
		_, err = c.write(ctx, &bspb.WriteRequest{ResourceName: up(b), Data: b.data[:3], FinishWrite: true})
		wantCode(t, "Write finishing short of the size", err, codes.InvalidArgument)
		// More bytes than the name declares.
		_, err = c.write(ctx, &bspb.WriteRequest{ResourceName: up(b), Data: append(append([]byte(nil), b.data...), 'x'), FinishWrite: true})
		wantCode(t, "Write of more bytes than the size", err, codes.InvalidArgument)
	})

	t.Run("blob already present", func(t *testing.T) {
		// "if another client has already completed the upload ... the request
		// will terminate immediately without error, and with a response whose
		// committed_size is the value -1 if this is a compressed upload, or
		// with the full size of the uploaded file if this is an uncompressed
		// upload (regardless of how much data was transmitted by the client)."
		b := uniqueBlob("already there")
		if err := c.batchUpload(ctx, []testBlob{b}); err != nil {
			t.Fatal(err)
		}
		resp, err := c.write(ctx, &bspb.WriteRequest{ResourceName: up(b), Data: b.data[:2]})
		if err != nil || resp.GetCommittedSize() != b.digest.SizeBytes {
			t.Errorf("uncompressed Write of a present blob: %v, %v; want committed_size %d", resp, err, b.digest.SizeBytes)
		}
		zname := fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), b)
		resp, err = c.write(ctx, &bspb.WriteRequest{ResourceName: zname, Data: []byte{0x28}})
		if err != nil || resp.GetCommittedSize() != -1 {
			t.Errorf("compressed Write of a present blob: %v, %v; want committed_size -1", resp, err)
		}
	})

	t.Run("compressed upload", func(t *testing.T) {
		b := uniqueBlob(strings.Repeat("zstd upload ", 500))
		enc, _ := zstd.NewWriter(nil)
		z := enc.EncodeAll(b.data, nil)
		name := fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), b)
		// "In subsequent requests, WriteRequest.write_offset MUST be the sum
		// of the first request's WriteRequest.write_offset and the total size
		// of all the compressed data bundles in the previous requests."
		half := len(z) / 2
		_, err := c.write(ctx,
			&bspb.WriteRequest{ResourceName: name, Data: z[:half]},
			&bspb.WriteRequest{WriteOffset: int64(half), Data: z[half:], FinishWrite: true})
		if err != nil {
			t.Fatalf("compressed Write: %v", err)
		}
		got, err := c.byteStreamRead(ctx, b.digest)
		if err != nil || !bytes.Equal(got, b.data) {
			t.Errorf("reading the compressed upload: %v", err)
		}
		// "Servers MUST verify that these match the uploaded data once
		// uncompressed, and MUST return an INVALID_ARGUMENT error in the
		// case of mismatch."
		other := uniqueBlob(strings.Repeat("zstd upload ", 500))
		_, err = c.write(ctx, &bspb.WriteRequest{ResourceName: fmt.Sprintf("uploads/%s/compressed-blobs/zstd/%s", uuid.NewString(), other), Data: z, FinishWrite: true})
		wantCode(t, "compressed Write whose data does not match", err, codes.InvalidArgument)
	})

	t.Run("stream rules", func(t *testing.T) {
		b := uniqueBlob(strings.Repeat("rules", 100))
		// "Sending any requests on a stream after sending a request with
		// finish_write set to true will cause an error."
		_, err := c.write(ctx,
			&bspb.WriteRequest{ResourceName: up(b), Data: b.data, FinishWrite: true},
			&bspb.WriteRequest{WriteOffset: b.digest.SizeBytes})
		if codeOf(err) == codes.OK {
			// The blob was committed at finish_write; the extra request must
			// still be an error.
			t.Errorf("a request after finish_write was accepted")
		}
		b2 := uniqueBlob(strings.Repeat("rules2", 100))
		// "On subsequent calls, this value must be set and must be equal to
		// the sum of the first write_offset and the sizes of all data bundles
		// sent previously on this stream. An incorrect value will cause an
		// error."
		_, err = c.write(ctx,
			&bspb.WriteRequest{ResourceName: up(b2), Data: b2.data[:10]},
			&bspb.WriteRequest{WriteOffset: 11, Data: b2.data[10:], FinishWrite: true})
		if codeOf(err) == codes.OK {
			t.Errorf("a non-contiguous write_offset was accepted")
		}
		// The first request must name the resource.
		_, err = c.write(ctx, &bspb.WriteRequest{Data: b2.data, FinishWrite: true})
		wantCode(t, "Write without resource_name", err, codes.InvalidArgument)
		// A read name is not an upload name.
		_, err = c.write(ctx, &bspb.WriteRequest{ResourceName: "blobs/" + b2.String(), Data: b2.data, FinishWrite: true})
		wantCode(t, "Write to a read resource name", err, codes.InvalidArgument)
	})

	t.Run("resumable upload", func(t *testing.T) {
		b := uniqueBlob(strings.Repeat("resume", 500))
		name := up(b)
		// "If the resource does not exist (i.e., ... the first Write() has not
		// yet reached the service), this method returns the error NOT_FOUND."
		_, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
		wantCode(t, "QueryWriteStatus before any Write", err, codes.NotFound)
		// "When the client closes the request channel, the service will
		// respond with a WriteResponse. The service will not view the
		// resource as complete until the client has sent a WriteRequest with
		// finish_write set to true."
		resp, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: b.data[:1000]})
		if err != nil || resp.GetCommittedSize() != 1000 {
			t.Fatalf("Write without finish_write: %v, %v", resp, err)
		}
		q, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
		if err != nil || q.GetComplete() || q.GetCommittedSize() != 1000 {
			t.Fatalf("QueryWriteStatus of a partial upload: %v, %v", q, err)
		}
		if m, _ := c.findMissing(ctx, []*repb.Digest{b.digest}); !m[b.digest.Hash] {
			t.Errorf("a partial upload is visible in the CAS")
		}
		// The first write_offset "must be equal to the committed_size that a
		// call to QueryWriteStatus() would return".
		resp, err = c.write(ctx, &bspb.WriteRequest{ResourceName: name, WriteOffset: q.GetCommittedSize(), Data: b.data[1000:], FinishWrite: true})
		if err != nil || resp.GetCommittedSize() != b.digest.SizeBytes {
			t.Fatalf("resumed Write: %v, %v", resp, err)
		}
		got, err := c.byteStreamRead(ctx, b.digest)
		if err != nil || !bytes.Equal(got, b.data) {
			t.Errorf("reading the resumed upload: %v", err)
		}
	})

	t.Run("empty blob", func(t *testing.T) {
		b := newTestBlob(nil)
		resp, err := c.write(ctx, &bspb.WriteRequest{ResourceName: up(b), FinishWrite: true})
		if err != nil || resp.GetCommittedSize() != 0 {
			t.Errorf("Write of the empty blob: %v, %v", resp, err)
		}
	})

	t.Run("dot segments", func(t *testing.T) {
		// Instance-name and upload-id segments "." and ".." are refused by
		// Write and QueryWriteStatus, and nothing is stored.
		b := uniqueBlob("dot segment upload")
		for _, name := range []string{
			"../uploads/" + uuid.NewString() + "/blobs/" + b.String(),
			"a/./uploads/" + uuid.NewString() + "/blobs/" + b.String(),
			"a/../uploads/" + uuid.NewString() + "/compressed-blobs/zstd/" + b.String(),
			"uploads/../blobs/" + b.String(),
			"uploads/./blobs/" + b.String(),
			"inst/uploads/../blobs/" + b.String(),
		} {
			_, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: b.data, FinishWrite: true})
			if codeOf(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), name) {
				t.Errorf("Write %s: %v, want INVALID_ARGUMENT naming it", name, err)
			}
			_, err = c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
			wantCode(t, "QueryWriteStatus "+name, err, codes.InvalidArgument)
		}
		if m, _ := c.findMissing(ctx, []*repb.Digest{b.digest}); !m[b.digest.Hash] {
			t.Errorf("a Write under a dot-segment name stored the blob")
		}
		// The instance-name rule is the same for every service.
		_, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: "a/..", BlobDigests: []*repb.Digest{b.digest}})
		wantCode(t, "FindMissingBlobs under instance a/..", err, codes.InvalidArgument)
		_, err = c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: "."})
		wantCode(t, "GetCapabilities under instance .", err, codes.InvalidArgument)
	})

	t.Run("instance name", func(t *testing.T) {
		b := uniqueBlob("instance upload")
		name := fmt.Sprintf("my/instance/uploads/%s/blobs/%s/some/metadata", uuid.NewString(), b)
		// "optional_metadata is implementation specific data ... Servers MAY
		// ignore this metadata."
		if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: name, Data: b.data, FinishWrite: true}); err != nil {
			t.Fatalf("Write %s: %v", name, err)
		}
		got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: "my/instance/blobs/" + b.String()})
		if err != nil || !bytes.Equal(got, b.data) {
			t.Errorf("Read under the instance: %v", err)
		}
	})
}

// putDirectory uploads dir and returns its blob.
func (c *conformanceClient) putDirectory(t *testing.T, dir *repb.Directory) testBlob {
	t.Helper()
	b := marshalBlob(t, dir)
	if err := c.batchUpload(t.Context(), []testBlob{b}); err != nil {
		t.Fatal(err)
	}
	return b
}

// getTree returns every page of a GetTree call.
func (c *conformanceClient) getTree(ctx context.Context, req *repb.GetTreeRequest) ([]*repb.GetTreeResponse, error) {
	s, err := c.cas.GetTree(ctx, req)
	if err != nil {
		return nil, err
	}
	var pages []*repb.GetTreeResponse
	for {
		p, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return pages, nil
		}
		if err != nil {
			return pages, err
		}
		pages = append(pages, p)
	}
}

func (c *conformanceClient) checkGetTree(t *testing.T) {
	ctx := t.Context()
	f := uniqueBlob("tree file")
	leaf := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: f.digest}}}
	leafB := c.putDirectory(t, leaf)
	lost := marshalBlob(t, &repb.Directory{Files: []*repb.FileNode{{Name: uuid.NewString(), Digest: f.digest}}}) // never uploaded
	mid := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "leaf", Digest: leafB.digest}, {Name: "lost", Digest: lost.digest}}}
	midB := c.putDirectory(t, mid)
	root := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "a", Digest: midB.digest}, {Name: "b", Digest: leafB.digest}}}
	rootB := c.putDirectory(t, root)

	// "The server will enumerate the Directory tree recursively and return
	// every node descended from the root." "If part of the tree is missing
	// from the CAS, the server will return the portion present and omit the
	// rest."
	pages, err := c.getTree(ctx, &repb.GetTreeRequest{RootDigest: rootB.digest})
	if err != nil {
		t.Fatalf("GetTree: %v", err)
	}
	got := map[string]bool{}
	for _, p := range pages {
		for _, d := range p.GetDirectories() {
			got[marshalBlob(t, d).String()] = true
		}
	}
	for _, want := range []testBlob{rootB, midB, leafB} {
		if !got[want.String()] {
			t.Errorf("GetTree did not return directory %s", want)
		}
	}
	if got[lost.String()] {
		t.Errorf("GetTree returned a directory that is not in the CAS")
	}
	// "If empty, signifies that this is the last page of results."
	if last := pages[len(pages)-1]; last.GetNextPageToken() != "" {
		t.Errorf("last page has next_page_token %q", last.GetNextPageToken())
	}

	// page_size: "the server will request no more than this many items"; a
	// next_page_token resumes "returning only that page and the ones that
	// succeed it".
	first, err := c.getTree(ctx, &repb.GetTreeRequest{RootDigest: rootB.digest, PageSize: 1})
	if err != nil || len(first) == 0 {
		t.Fatalf("GetTree page_size 1: %v", err)
	}
	seen := 0
	for _, p := range first {
		if len(p.GetDirectories()) > 1 {
			t.Errorf("a page of page_size 1 has %d directories", len(p.GetDirectories()))
		}
		seen += len(p.GetDirectories())
	}
	if first[0].GetNextPageToken() != "" {
		rest, err := c.getTree(ctx, &repb.GetTreeRequest{RootDigest: rootB.digest, PageSize: 1, PageToken: first[0].GetNextPageToken()})
		if err != nil {
			t.Fatalf("GetTree with page_token: %v", err)
		}
		n := 0
		for _, p := range rest {
			n += len(p.GetDirectories())
		}
		if n != seen-len(first[0].GetDirectories()) {
			t.Errorf("resuming at the second page gave %d directories, want %d", n, seen-len(first[0].GetDirectories()))
		}
	}

	// "NOT_FOUND: The requested tree root is not present in the CAS."
	_, err = c.getTree(ctx, &repb.GetTreeRequest{RootDigest: lost.digest})
	wantCode(t, "GetTree of a missing root", err, codes.NotFound)
	// The empty Directory encodes as the empty blob, which is always present.
	pages, err = c.getTree(ctx, &repb.GetTreeRequest{RootDigest: newTestBlob(nil).digest})
	if err != nil || len(pages) == 0 || len(pages[0].GetDirectories()) != 1 {
		t.Errorf("GetTree of the empty Directory: %v, %v", pages, err)
	}
	_, err = c.getTree(ctx, &repb.GetTreeRequest{RootDigest: &repb.Digest{Hash: "xyz", SizeBytes: 1}})
	wantCode(t, "GetTree of a malformed root digest", err, codes.InvalidArgument)
}
