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

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/grpcbulk"
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
)

// Store is a cas.Store on a remote server.
type Store struct {
	instance string
	cas      repb.ContentAddressableStorageClient
	bs       bspb.ByteStreamClient
}

var _ cas.Store = (*Store)(nil)

// NewStore returns a cas.Store that keeps its blobs on the server at the
// other end of conn, under instance name instance ("" is the default).
func NewStore(conn grpc.ClientConnInterface, instance string) *Store {
	return &Store{
		instance: instance,
		cas:      repb.NewContentAddressableStorageClient(conn),
		bs:       bspb.NewByteStreamClient(conn),
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
			resp, err := s.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{
				InstanceName:   s.instance,
				BlobDigests:    chunk,
				DigestFunction: fn,
			})
			if err != nil {
				return nil, fromStatus(opOther, fmt.Sprintf("FindMissingBlobs (%d %s digests)", len(chunk), fn), err)
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
// server sends exactly the blob's remaining bytes.
func (s *Store) Open(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, error) {
	if offset < 0 || offset > d.Size {
		return nil, fmt.Errorf("casclient: read %s at offset %d: %w", d, offset, cas.ErrOutOfRange)
	}
	if d.IsEmpty() {
		return io.NopCloser(strings.NewReader("")), nil
	}
	name := s.resourceName("blobs", d)
	ctx, cancel := context.WithCancel(ctx)
	// The responses are received as their frames (grpcbulk.RecvChunk):
	// one copy of each byte, into the caller's buffer, instead of three.
	stream, err := s.bs.Read(ctx, &bspb.ReadRequest{ResourceName: name, ReadOffset: offset}, grpcbulk.ReadCallOptions()...)
	if err != nil {
		cancel()
		return nil, fromStatus(opRead, "read "+name, err)
	}
	r := &reader{name: name, stream: stream, cancel: cancel, remaining: d.Size - offset}
	if err := r.recv(); err != nil {
		r.Close()
		if r.err == nil {
			return nil, fromStatus(opRead, "read "+name, err)
		}
		return nil, err
	}
	if r.eof && r.remaining != 0 {
		r.Close()
		return nil, fmt.Errorf("casclient: read %s: stream ended %d bytes early: %w", name, r.remaining, io.ErrUnexpectedEOF)
	}
	return r, nil
}

// reader is a ByteStream Read stream as an io.ReadCloser.
type reader struct {
	name      string
	stream    bspb.ByteStream_ReadClient
	cancel    context.CancelFunc
	chunk     grpcbulk.RecvChunk // received, not yet returned
	remaining int64              // bytes still expected from the server
	eof       bool
	err       error // sticky, set by recv for what the server sent
}

// recv receives the next response into r.chunk; io.EOF at the end of the
// stream sets r.eof and returns nil. A stream error is returned as it is
// (the caller turns it into the store's error); a server that sends more
// than the blob holds sets r.err.
func (r *reader) recv() error {
	err := r.stream.RecvMsg(&r.chunk)
	if err == io.EOF {
		r.eof = true
		return nil
	}
	if err != nil {
		return err
	}
	if int64(r.chunk.Len()) > r.remaining {
		r.chunk.Close()
		r.err = fmt.Errorf("casclient: read %s: server sent more bytes than the blob holds", r.name)
		return r.err
	}
	r.remaining -= int64(r.chunk.Len())
	return nil
}

func (r *reader) Read(p []byte) (int, error) {
	for r.chunk.Len() == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.eof {
			if r.remaining != 0 {
				r.err = fmt.Errorf("casclient: read %s: stream ended %d bytes early: %w", r.name, r.remaining, io.ErrUnexpectedEOF)
				return 0, r.err
			}
			return 0, io.EOF
		}
		if err := r.recv(); err != nil {
			if r.err == nil {
				r.err = fromStatus(opRead, "read "+r.name, err)
			}
			return 0, r.err
		}
	}
	return r.chunk.Read(p)
}

// Close ends the stream; the server stops sending.
func (r *reader) Close() error {
	r.cancel()
	r.chunk.Close()
	return nil
}
