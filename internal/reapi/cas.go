package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// batchParallelism is how many blobs of one batch call are stored or read at
// once. Storing a blob ends in an fsync, so small batches are bound by disk
// latency, not CPU; a few in flight hide most of it without letting one call
// monopolise the disk.
const batchParallelism = 8

// casServer is the ContentAddressableStorage service. The CAS is shared by all
// instance names: blobs are content addressed, so an instance can neither
// alter nor hide what another reads, and sharing lets instances deduplicate.
// Instance names are still validated, so every accepted name also works in
// ByteStream resource names.
type casServer struct {
	repb.UnimplementedContentAddressableStorageServer
	cfg Config
	// batchDecoder decompresses zstd blobs of BatchUpdateBlobs with
	// DecodeAll, capped at the destination's capacity (the digest's size), so
	// a small "zstd bomb" cannot make the server allocate more than the
	// batch limit.
	batchDecoder *zstd.Decoder
	// batchEncoder compresses BatchReadBlobs responses; EncodeAll is safe for
	// concurrent use.
	batchEncoder *zstd.Encoder
}

func newCASServer(cfg Config) *casServer {
	// No WithDecoderMaxMemory: it would also cap the window size a frame may
	// declare, rejecting valid streams from encoders with large windows.
	// DecodeAll writes into the capped destination, so the declared window
	// costs no memory.
	dec, err := zstd.NewReader(nil, zstd.WithDecodeAllCapLimit(true), zstd.WithDecoderLowmem(true))
	if err != nil {
		panic(fmt.Sprintf("reapi: zstd decoder options: %v", err)) // constant options: a programming error
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		panic(fmt.Sprintf("reapi: zstd encoder options: %v", err))
	}
	return &casServer{cfg: cfg, batchDecoder: dec, batchEncoder: enc}
}

// requestFunction validates the instance name and resolves the digest
// function of a request (UNKNOWN means SHA256, see digest.Resolve).
func requestFunction(instance string, fn repb.DigestFunction_Value) (digest.Function, error) {
	if err := validateInstanceName(instance); err != nil {
		return 0, err
	}
	resolved, err := digest.Resolve(fn)
	if err != nil {
		return 0, invalidf("digest_function: %v", err)
	}
	return resolved, nil
}

// requestAction validates the instance name, digest function and action
// digest that the ActionCache and Execution requests share.
func requestAction(instance string, fn repb.DigestFunction_Value, d *repb.Digest) (digest.Digest, error) {
	resolved, err := requestFunction(instance, fn)
	if err != nil {
		return digest.Digest{}, err
	}
	action, err := digest.FromProto(resolved, d)
	if err != nil {
		return digest.Digest{}, invalidf("action_digest: %v", err)
	}
	return action, nil
}

// blobStatus is the per-blob google.rpc.Status of a batch response.
func blobStatus(err error) *spb.Status {
	if err == nil {
		return &spb.Status{Code: int32(codes.OK)}
	}
	return status.Convert(toStatus(err)).Proto()
}

// forEachBatchItem runs f(i) for i in [0, n) with at most batchParallelism at once.
func forEachBatchItem(n int, f func(i int)) {
	sem := make(chan struct{}, batchParallelism)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(i)
		}()
	}
	wg.Wait()
}

// FindMissingBlobs reports which blobs are absent. Every digest is validated
// first: one malformed digest fails the call, naming it. The empty blob is
// never missing.
func (s *casServer) FindMissingBlobs(ctx context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	fn, err := requestFunction(req.GetInstanceName(), req.GetDigestFunction())
	if err != nil {
		return nil, err
	}
	ds := make([]digest.Digest, 0, len(req.GetBlobDigests()))
	for i, pd := range req.GetBlobDigests() {
		d, err := digest.FromProto(fn, pd)
		if err != nil {
			return nil, invalidf("blob_digests[%d]: %v", i, err)
		}
		if !d.IsEmpty() {
			ds = append(ds, d)
		}
	}
	resp := &repb.FindMissingBlobsResponse{}
	if len(ds) == 0 {
		return resp, nil
	}
	missing, err := s.cfg.CAS.FindMissing(ctx, ds)
	if err != nil {
		return nil, toStatus(err)
	}
	resp.MissingBlobDigests = make([]*repb.Digest, len(missing))
	for i, d := range missing {
		resp.MissingBlobDigests[i] = d.Proto()
	}
	return resp, nil
}

// batchTotal adds up the bytes a batch moves, failing once it passes limit.
// Each blob counts as the larger of its digest's size and its data's length:
// the digest size bounds what a compressed blob expands to (and so the memory
// that decompressing it takes), the data length what a lying digest carries.
type batchTotal struct {
	limit, total int64
}

func (b *batchTotal) add(n int64) bool {
	if n < 0 {
		n = 0
	}
	if n > b.limit-b.total {
		b.total = b.limit + 1
		return false
	}
	b.total += n
	return true
}

// BatchUpdateBlobs stores each blob independently: a blob whose data does
// not match its digest, or that uses an unsupported compressor, fails in its
// own response status while the others are stored. Only a batch over the
// size limit (or a bad instance name or digest function) fails the call.
func (s *casServer) BatchUpdateBlobs(ctx context.Context, req *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	fn, err := requestFunction(req.GetInstanceName(), req.GetDigestFunction())
	if err != nil {
		return nil, err
	}
	limit := batchTotal{limit: s.cfg.maxBatch()}
	for _, r := range req.GetRequests() {
		if !limit.add(max(r.GetDigest().GetSizeBytes(), int64(len(r.GetData())))) {
			return nil, invalidf("BatchUpdateBlobs of %d blobs exceeds max_batch_total_size_bytes %d; split the batch or use ByteStream.Write",
				len(req.GetRequests()), limit.limit)
		}
	}
	resp := &repb.BatchUpdateBlobsResponse{Responses: make([]*repb.BatchUpdateBlobsResponse_Response, len(req.GetRequests()))}
	forEachBatchItem(len(req.GetRequests()), func(i int) {
		r := req.GetRequests()[i]
		resp.Responses[i] = &repb.BatchUpdateBlobsResponse_Response{
			Digest: r.GetDigest(),
			Status: blobStatus(s.updateBlob(ctx, fn, i, r)),
		}
	})
	if err := ctx.Err(); err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (s *casServer) updateBlob(ctx context.Context, fn digest.Function, i int, r *repb.BatchUpdateBlobsRequest_Request) error {
	d, err := digest.FromProto(fn, r.GetDigest())
	if err != nil {
		return invalidf("requests[%d].digest: %v", i, err)
	}
	data := r.GetData()
	switch r.GetCompressor() {
	case repb.Compressor_IDENTITY:
	case repb.Compressor_ZSTD:
		// Capacity d.Size: DecodeAll fails rather than grow past it.
		data, err = s.batchDecoder.DecodeAll(data, make([]byte, 0, d.Size))
		if err != nil {
			return invalidf("requests[%d] (%s): zstd data does not decompress to at most %d bytes: %v", i, d, d.Size, err)
		}
	default:
		return invalidf("requests[%d] (%s): compressor %s is not supported for BatchUpdateBlobs (supported: IDENTITY, ZSTD)", i, d, r.GetCompressor())
	}
	if int64(len(data)) != d.Size {
		return invalidf("requests[%d]: data of %d bytes does not match digest %s (size %d)", i, len(data), d, d.Size)
	}
	if d.IsEmpty() {
		return nil // always present; nothing to store
	}
	if err := cas.Put(ctx, s.cfg.CAS, d, data); err != nil {
		return fmt.Errorf("requests[%d]: %w", i, err)
	}
	return nil
}

// BatchReadBlobs reads each blob independently: a missing or malformed
// digest fails in its own response status. The call fails only if the blobs
// asked for add up to more than the batch limit. When the client accepts
// ZSTD, every blob is returned zstd-compressed.
func (s *casServer) BatchReadBlobs(ctx context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	fn, err := requestFunction(req.GetInstanceName(), req.GetDigestFunction())
	if err != nil {
		return nil, err
	}
	ds := make([]digest.Digest, len(req.GetDigests()))
	errs := make([]error, len(req.GetDigests()))
	limit := batchTotal{limit: s.cfg.maxBatch()}
	for i, pd := range req.GetDigests() {
		ds[i], errs[i] = digest.FromProto(fn, pd)
		if errs[i] != nil {
			errs[i] = invalidf("digests[%d]: %v", i, errs[i])
			continue
		}
		if !limit.add(ds[i].Size) {
			return nil, invalidf("BatchReadBlobs of %d blobs exceeds max_batch_total_size_bytes %d; split the batch or use ByteStream.Read",
				len(req.GetDigests()), limit.limit)
		}
	}
	compress := slices.Contains(req.GetAcceptableCompressors(), repb.Compressor_ZSTD)
	resp := &repb.BatchReadBlobsResponse{Responses: make([]*repb.BatchReadBlobsResponse_Response, len(ds))}
	forEachBatchItem(len(ds), func(i int) {
		r := &repb.BatchReadBlobsResponse_Response{Digest: req.GetDigests()[i]}
		resp.Responses[i] = r
		err := errs[i]
		if err == nil {
			r.Data, err = readSmallBlob(ctx, s.cfg.CAS, ds[i])
		}
		if err == nil && compress {
			r.Data = s.batchEncoder.EncodeAll(r.Data, nil)
			r.Compressor = repb.Compressor_ZSTD
		}
		r.Status = blobStatus(err)
	})
	if err := ctx.Err(); err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

// readSmallBlob reads all of d, which the caller has bounded in size. A store
// that yields a different number of bytes than the digest says is an internal
// error, not data to pass on.
func readSmallBlob(ctx context.Context, s cas.Store, d digest.Digest) ([]byte, error) {
	if d.IsEmpty() {
		return nil, nil
	}
	r, err := s.Open(ctx, d, 0)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data := make([]byte, d.Size)
	if n, err := io.ReadFull(r, data); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading %s: the store returned %d bytes, want %d", d, n, d.Size)
		}
		return nil, fmt.Errorf("reading %s: %w", d, err)
	}
	var extra [1]byte
	if n, _ := r.Read(extra[:]); n > 0 {
		return nil, fmt.Errorf("reading %s: the store returned more than %d bytes", d, d.Size)
	}
	return data, nil
}
