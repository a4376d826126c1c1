package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// reapiClient is a plain REAPI client of one hearth process, built from the
// generated stubs only, as any third-party client would be.
type reapiClient struct {
	conn *grpc.ClientConn
	cas  repb.ContentAddressableStorageClient
	bs   bspb.ByteStreamClient
	caps repb.CapabilitiesClient
	exec repb.ExecutionClient
}

func dial(t *testing.T, addr string) *reapiClient {
	t.Helper()
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &reapiClient{
		conn: conn,
		cas:  repb.NewContentAddressableStorageClient(conn),
		bs:   bspb.NewByteStreamClient(conn),
		caps: repb.NewCapabilitiesClient(conn),
		exec: repb.NewExecutionClient(conn),
	}
}

// testBlob is a blob with its SHA-256 digest.
type testBlob struct {
	data   []byte
	digest *repb.Digest
}

func newTestBlob(data []byte) testBlob {
	sum := sha256.Sum256(data)
	return testBlob{data: data, digest: &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}}
}

func (b testBlob) String() string { return fmt.Sprintf("%s/%d", b.digest.Hash, b.digest.SizeBytes) }

// maxBatchBytes asks the server what BatchUpdateBlobs accepts.
func (c *reapiClient) maxBatchBytes(ctx context.Context) (int64, error) {
	caps, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		return 0, fmt.Errorf("GetCapabilities: %w", err)
	}
	n := caps.GetCacheCapabilities().GetMaxBatchTotalSizeBytes()
	if n <= 0 {
		return 0, fmt.Errorf("server advertises max_batch_total_size_bytes %d", n)
	}
	return n, nil
}

// batchUpload uploads blobs in one BatchUpdateBlobs call and fails unless
// every blob is acknowledged OK.
func (c *reapiClient) batchUpload(ctx context.Context, blobs []testBlob) error {
	req := &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_SHA256}
	for _, b := range blobs {
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: b.digest, Data: b.data})
	}
	resp, err := c.cas.BatchUpdateBlobs(ctx, req)
	if err != nil {
		return fmt.Errorf("BatchUpdateBlobs: %w", err)
	}
	if len(resp.Responses) != len(blobs) {
		return fmt.Errorf("BatchUpdateBlobs answered %d of %d blobs", len(resp.Responses), len(blobs))
	}
	for _, r := range resp.Responses {
		if r.GetStatus().GetCode() != 0 {
			return fmt.Errorf("BatchUpdateBlobs %s/%d: %v", r.Digest.GetHash(), r.Digest.GetSizeBytes(), r.Status)
		}
	}
	return nil
}

// uploadResource is a fresh ByteStream upload resource name for b.
func uploadResource(b testBlob) string {
	return fmt.Sprintf("uploads/%s/blobs/%s/%d", uuid.NewString(), b.digest.Hash, b.digest.SizeBytes)
}

// byteStreamWrite uploads b in chunks and fails unless the server
// acknowledges the full size.
func (c *reapiClient) byteStreamWrite(ctx context.Context, b testBlob, chunk int) error {
	w, err := c.startWrite(ctx, uploadResource(b), b.data, chunk, true)
	if err != nil {
		return err
	}
	resp, err := w.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("ByteStream.Write %s: %w", b, err)
	}
	if resp.CommittedSize != b.digest.SizeBytes {
		return fmt.Errorf("ByteStream.Write %s: committed_size %d, want %d", b, resp.CommittedSize, b.digest.SizeBytes)
	}
	return nil
}

// startWrite opens a Write stream on resource and sends data from offset 0
// in chunks, with finish_write on the last chunk if finish is set. The
// stream is left open for the caller to close (or abandon).
func (c *reapiClient) startWrite(ctx context.Context, resource string, data []byte, chunk int, finish bool) (bspb.ByteStream_WriteClient, error) {
	w, err := c.bs.Write(ctx)
	if err != nil {
		return nil, fmt.Errorf("ByteStream.Write %s: %w", resource, err)
	}
	for off := 0; off < len(data) || off == 0; off += chunk {
		end := min(off+chunk, len(data))
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: data[off:end], FinishWrite: finish && end == len(data)}
		if off == 0 {
			req.ResourceName = resource
		}
		if err := w.Send(req); err != nil {
			// The server closed the stream early; its reason comes from
			// CloseAndRecv, which the caller reads.
			if errors.Is(err, io.EOF) {
				return w, nil
			}
			return nil, fmt.Errorf("ByteStream.Write %s at offset %d: %w", resource, off, err)
		}
		if end == len(data) {
			break
		}
	}
	return w, nil
}

// byteStreamRead reads the whole blob d.
func (c *reapiClient) byteStreamRead(ctx context.Context, d *repb.Digest) ([]byte, error) {
	name := fmt.Sprintf("blobs/%s/%d", d.Hash, d.SizeBytes)
	r, err := c.bs.Read(ctx, &bspb.ReadRequest{ResourceName: name})
	if err != nil {
		return nil, fmt.Errorf("ByteStream.Read %s: %w", name, err)
	}
	data, err := readStream(r)
	if err != nil {
		return nil, fmt.Errorf("ByteStream.Read %s: %w", name, err)
	}
	return data, nil
}

// readStream collects a ByteStream Read stream until its end, returning
// what arrived before an error too.
func readStream(r bspb.ByteStream_ReadClient) ([]byte, error) {
	var buf bytes.Buffer
	for {
		resp, err := r.Recv()
		if errors.Is(err, io.EOF) {
			return buf.Bytes(), nil
		}
		if err != nil {
			return buf.Bytes(), err
		}
		buf.Write(resp.Data)
	}
}

// batchRead reads ds with BatchReadBlobs and fails unless every blob is
// returned OK.
func (c *reapiClient) batchRead(ctx context.Context, ds []*repb.Digest) (map[string][]byte, error) {
	resp, err := c.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: ds, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		return nil, fmt.Errorf("BatchReadBlobs: %w", err)
	}
	out := map[string][]byte{}
	for _, r := range resp.Responses {
		if r.GetStatus().GetCode() != 0 {
			return nil, fmt.Errorf("BatchReadBlobs %s/%d: %v", r.Digest.GetHash(), r.Digest.GetSizeBytes(), r.Status)
		}
		out[r.Digest.GetHash()] = r.Data
	}
	if len(out) != len(ds) {
		return nil, fmt.Errorf("BatchReadBlobs returned %d of %d blobs", len(out), len(ds))
	}
	return out, nil
}

// findMissing returns the hashes FindMissingBlobs reports missing.
func (c *reapiClient) findMissing(ctx context.Context, ds []*repb.Digest) (map[string]bool, error) {
	resp, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: ds, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		return nil, fmt.Errorf("FindMissingBlobs: %w", err)
	}
	missing := map[string]bool{}
	for _, d := range resp.MissingBlobDigests {
		missing[d.Hash] = true
	}
	return missing, nil
}

// digestsOf returns the digests of blobs.
func digestsOf(blobs []testBlob) []*repb.Digest {
	ds := make([]*repb.Digest, len(blobs))
	for i, b := range blobs {
		ds[i] = b.digest
	}
	return ds
}
