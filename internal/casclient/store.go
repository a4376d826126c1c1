package casclient

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/grpcbulk"
	"github.com/hearth-build/hearth/internal/rpcretry"
)

// Tunables of the remote store.
const (
	// findMissingChunk is the most digests sent in one FindMissingBlobs
	// call: about 0.8 MB, well under any server's message limit.
	findMissingChunk = 10000
	// batchThreshold is the largest blob written with one BatchUpdateBlobs
	// call; larger blobs are streamed with ByteStream Write. It is under
	// every limit a server may advertise in practice (Hearth's is ~4 MiB),
	// and at this size a streaming call would not be cheaper.
	batchThreshold = 1 << 20
	// chunkSize is the data carried by one ByteStream WriteRequest.
	chunkSize = 1 << 20
	// replayWindow is how much of what a ByteStream Write sent it keeps
	// to send again after the stream broke. It covers what can be in
	// flight unseen by the server (the 4 MiB stream window and a chunk),
	// so that an upload resumes at the server's committed size; and a
	// blob up to this size is held whole, so that its upload can also
	// start over at another server (another replica knows nothing of the
	// upload). At most this plus a chunk per upload. See streamWriter.
	replayWindow = 8 << 20
)

// Store is a cas.Store on a remote server.
type Store struct {
	instance string
	cas      repb.ContentAddressableStorageClient
	bs       bspb.ByteStreamClient
	retry    rpcretry.Policy
}

var _ cas.Store = (*Store)(nil)

// NewStore returns a cas.Store that keeps its blobs on the server at the
// other end of conn, under instance name instance ("" is the default).
// Calls that fail transiently are retried as DefaultRetry says (WithRetry
// changes it): unary calls whole, a ByteStream Read resumed at the offset
// it reached, a ByteStream Write resumed at the server's committed size or
// restarted (see streamWriter). After a DialAny connection moved to another
// server, the retry goes there.
func NewStore(conn grpc.ClientConnInterface, instance string, opts ...Option) *Store {
	return &Store{
		instance: instance,
		cas:      repb.NewContentAddressableStorageClient(conn),
		bs:       bspb.NewByteStreamClient(conn),
		retry:    newOptions(opts).retry,
	}
}

// FindMissing asks the server with FindMissingBlobs, one call per digest
// function and per findMissingChunk digests. The empty blob is never asked
// about: every store holds it.
func (s *Store) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	byFn := map[digest.Function][]*repb.Digest{}
	var fns []digest.Function // in order of first appearance, for determinism
	asked := map[digest.Key]bool{}
	for _, d := range ds {
		if d.IsEmpty() || asked[d.Key()] {
			continue
		}
		asked[d.Key()] = true
		if _, ok := byFn[d.Function]; !ok {
			fns = append(fns, d.Function)
		}
		byFn[d.Function] = append(byFn[d.Function], d.Proto())
	}
	missing := map[digest.Key]bool{}
	for _, fn := range fns {
		all := byFn[fn]
		for start := 0; start < len(all); start += findMissingChunk {
			chunk := all[start:min(start+findMissingChunk, len(all))]
			req := &repb.FindMissingBlobsRequest{
				InstanceName:   s.instance,
				BlobDigests:    chunk,
				DigestFunction: fn,
			}
			what := fmt.Sprintf("FindMissingBlobs (%d %s digests)", len(chunk), fn)
			var resp *repb.FindMissingBlobsResponse
			n, err := do(ctx, s.retry, what, func(ctx context.Context) (err error) {
				resp, err = s.cas.FindMissingBlobs(ctx, req)
				return err
			})
			if err != nil {
				return nil, fromStatus(opOther, tried(what, n), err)
			}
			for _, m := range resp.GetMissingBlobDigests() {
				missing[digest.Key{Function: fn, Hash: m.GetHash(), Size: m.GetSizeBytes()}] = true
			}
		}
	}
	var out []digest.Digest
	for _, d := range ds {
		if missing[d.Key()] {
			out = append(out, d)
			delete(missing, d.Key()) // each reported once
		}
	}
	return out, nil
}

// resourceName is the ByteStream name of d: "{instance}/{kind}/{fn/}{hash}/{size}"
// where kind is "blobs" or "uploads/{uuid}/blobs", and the digest function
// segment is the lower-case name, omitted for SHA256 as REAPI requires.
func (s *Store) resourceName(kind string, d digest.Digest) string {
	var b strings.Builder
	if s.instance != "" {
		b.WriteString(s.instance)
		b.WriteByte('/')
	}
	b.WriteString(kind)
	b.WriteByte('/')
	if d.Function != digest.SHA256 {
		b.WriteString(digest.Lower(d.Function))
		b.WriteByte('/')
	}
	b.WriteString(d.Hash)
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(d.Size, 10))
	return b.String()
}

// Open reads the blob with ByteStream Read from offset. The first response
// is awaited here, so that a missing blob is reported by Open (wrapping
// cas.ErrNotFound) rather than by the first Read. The reader checks that the
// server sends exactly the blob's remaining bytes, and when a stream breaks
// transiently it reads on from where it stopped with a new one (at the same
// server, or at the next after a fail-over): every byte is delivered once.
func (s *Store) Open(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, error) {
	if offset < 0 || offset > d.Size {
		return nil, fmt.Errorf("casclient: read %s at offset %d: %w", d, offset, cas.ErrOutOfRange)
	}
	if d.IsEmpty() {
		return io.NopCloser(strings.NewReader("")), nil
	}
	name := s.resourceName("blobs", d)
	ctx, cancel := context.WithCancel(rpcretry.SelfRetried(ctx))
	r := &reader{s: s, ctx: ctx, closeAll: cancel, name: name, size: d.Size, remaining: d.Size - offset}
	if err := r.fill(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// reader is a ByteStream Read stream as an io.ReadCloser, reopened at the
// offset reached when it breaks transiently.
type reader struct {
	s        *Store
	ctx      context.Context // the reader's, marked SelfRetried
	closeAll context.CancelFunc
	name     string
	size     int64

	stream    bspb.ByteStream_ReadClient // nil: none open
	cancel    context.CancelFunc         // ends stream's attempt
	n         int                        // attempts since bytes last arrived, minus one
	chunk     grpcbulk.RecvChunk         // received, not yet returned
	remaining int64                      // bytes still expected from the server
	eof       bool
	err       error // sticky
}

// fill receives the next response into buf (or sets eof), opening a stream
// at the offset reached when there is none and retrying transient failures.
func (r *reader) fill() error {
	for {
		err := r.recv()
		if err == nil {
			return nil
		}
		r.dropStream()
		if _, ok := status.FromError(err); !ok {
			return err // ours (the server broke the protocol), final
		}
		if !r.s.retry.Again(r.ctx, "read "+r.name, r.n, err) {
			return fromStatus(opRead, tried("read "+r.name, r.n+1), err)
		}
		r.n++
	}
}

// recv is one step of fill on the current stream.
func (r *reader) recv() error {
	if r.stream == nil {
		actx, cancel := r.s.retry.Attempt(r.ctx)
		// The responses are received as their frames (grpcbulk.RecvChunk):
		// one copy of each byte, into the caller's buffer, instead of three.
		stream, err := r.s.bs.Read(actx, &bspb.ReadRequest{ResourceName: r.name, ReadOffset: r.size - r.remaining}, grpcbulk.ReadCallOptions()...)
		if err != nil {
			cancel()
			return err
		}
		r.stream, r.cancel = stream, cancel
	}
	err := r.stream.RecvMsg(&r.chunk)
	if err == io.EOF {
		r.eof = true
		r.dropStream()
		if r.remaining != 0 {
			return fmt.Errorf("casclient: read %s: stream ended %d bytes early: %w", r.name, r.remaining, io.ErrUnexpectedEOF)
		}
		return nil
	}
	if err != nil {
		return err
	}
	n := r.chunk.Len()
	if int64(n) > r.remaining {
		r.chunk.Close()
		return fmt.Errorf("casclient: read %s: server sent more bytes than the blob holds", r.name)
	}
	if n > 0 {
		r.n = 0 // progress: a later break gets a fresh set of retries
	}
	r.remaining -= int64(n)
	return nil
}

func (r *reader) dropStream() {
	if r.stream != nil {
		r.cancel()
		r.stream, r.cancel = nil, nil
	}
}

func (r *reader) Read(p []byte) (int, error) {
	for r.chunk.Len() == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.eof {
			return 0, io.EOF
		}
		if err := r.fill(); err != nil {
			r.err = err
			return 0, err
		}
	}
	return r.chunk.Read(p)
}

// Close ends the stream; the server stops sending.
func (r *reader) Close() error {
	r.dropStream()
	r.closeAll()
	r.chunk.Close()
	return nil
}
