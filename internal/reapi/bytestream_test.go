package reapi

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// bsEnv is a ByteStream server over a real verifying disk store, reached
// through a real gRPC connection.
type bsEnv struct {
	dir    string
	store  cas.Store
	server *byteStreamServer
	client bspb.ByteStreamClient
}

func startByteStream(t *testing.T, o uploadOptions) *bsEnv {
	t.Helper()
	dir := t.TempDir()
	disk, err := cas.NewDisk(dir, cas.DiskOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	store := cas.NewVerifying(disk)
	bs := newByteStreamServerWith(Config{CAS: store}, o)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(MaxRecvMsgSize))
	bspb.RegisterByteStreamServer(srv, bs)
	lis := bufconn.Listen(1 << 20)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &bsEnv{dir: dir, store: store, server: bs, client: bspb.NewByteStreamClient(conn)}
}

func bsCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func bsRandom(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// bsCompressible is data zstd shrinks, so compressed and uncompressed offsets
// differ in the tests.
func bsCompressible(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		b.WriteString("line ")
		b.WriteString(strings.Repeat("x", i%50))
		b.WriteByte('\n')
	}
	return b.Bytes()[:n]
}

// bsSendChunks sends data as WriteRequests of at most chunk bytes, the first
// carrying name, offsets starting at first; finish marks the last one.
func bsSendChunks(stream bspb.ByteStream_WriteClient, name string, first int64, data []byte, chunk int, finish bool) error {
	off := first
	for i := 0; ; i += chunk {
		end := min(i+chunk, len(data))
		req := &bspb.WriteRequest{WriteOffset: off, Data: data[i:end], FinishWrite: finish && end == len(data)}
		if i == 0 {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			return err
		}
		off += int64(end - i)
		if end == len(data) {
			return nil
		}
	}
}

func (e *bsEnv) write(ctx context.Context, name string, data []byte, chunk int) (*bspb.WriteResponse, error) {
	stream, err := e.client.Write(ctx)
	if err != nil {
		return nil, err
	}
	if err := bsSendChunks(stream, name, 0, data, chunk, true); err != nil && err != io.EOF {
		return nil, err
	}
	return stream.CloseAndRecv()
}

// read returns the data and the size of each ReadResponse.
func (e *bsEnv) read(ctx context.Context, name string, off, limit int64) ([]byte, []int, error) {
	stream, err := e.client.Read(ctx, &bspb.ReadRequest{ResourceName: name, ReadOffset: off, ReadLimit: limit})
	if err != nil {
		return nil, nil, err
	}
	var data []byte
	var sizes []int
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return data, sizes, nil
		}
		if err != nil {
			return data, sizes, err
		}
		data = append(data, resp.GetData()...)
		sizes = append(sizes, len(resp.GetData()))
	}
}

func (e *bsEnv) present(t *testing.T, d digest.Digest) bool {
	t.Helper()
	missing, err := e.store.FindMissing(context.Background(), []digest.Digest{d})
	if err != nil {
		t.Fatal(err)
	}
	return len(missing) == 0
}

// tempFiles counts uploads in progress in the disk store.
func (e *bsEnv) tempFiles(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(e.dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func bsWantCode(t *testing.T, err error, code codes.Code, inMsg string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
	if !strings.Contains(status.Convert(err).Message(), inMsg) {
		t.Fatalf("message %q does not contain %q", status.Convert(err).Message(), inMsg)
	}
}

func bsUploadName(instance string, d digest.Digest, c repb.Compressor_Value) string {
	return UploadResourceName(instance, uuid.NewString(), d, c)
}

func TestByteStreamRoundTrip(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(5<<20+123, 1)
	for _, instance := range []string{"", "main", "a/b/c"} {
		for _, fn := range []digest.Function{digest.SHA256, digest.BLAKE3} {
			d := digest.Compute(fn, data)
			t.Run(instance+"/"+digest.Lower(fn), func(t *testing.T) {
				resp, err := e.write(ctx, bsUploadName(instance, d, repb.Compressor_IDENTITY), data, 64<<10)
				if err != nil {
					t.Fatalf("Write: %v", err)
				}
				if resp.GetCommittedSize() != d.Size {
					t.Fatalf("committed_size %d, want %d", resp.GetCommittedSize(), d.Size)
				}
				got, sizes, err := e.read(ctx, ReadResourceName(instance, d, repb.Compressor_IDENTITY), 0, 0)
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes that differ from the %d written", len(got), len(data))
				}
				if len(sizes) < 2 {
					t.Errorf("a %d-byte blob came in %d message(s); want it chunked", len(data), len(sizes))
				}
				for _, n := range sizes {
					if n > readChunkSize || n == 0 {
						t.Fatalf("chunk of %d bytes; want 1..%d", n, readChunkSize)
					}
				}
			})
		}
	}
	if n := e.tempFiles(t); n != 0 {
		t.Errorf("%d upload temp files left behind", n)
	}
	if n := e.server.uploads.len(); n != 0 {
		t.Errorf("%d upload sessions left after finished uploads", n)
	}
}

func TestByteStreamReadWindows(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(600<<10, 2)
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(ctx, e.store, d, data); err != nil {
		t.Fatal(err)
	}
	name := ReadResourceName("", d, repb.Compressor_IDENTITY)
	size := int64(len(data))
	tests := []struct {
		off, limit int64
		want       []byte
	}{
		{0, 0, data},
		{1, 0, data[1:]},
		{size - 1, 0, data[size-1:]},
		{size, 0, nil},
		{0, 1, data[:1]},
		{100, 1000, data[100:1100]},
		{300 << 10, 300 << 10, data[300<<10 : 600<<10]},
		{size - 10, 1000, data[size-10:]},
		{0, size + 1, data},
	}
	for _, tt := range tests {
		got, _, err := e.read(ctx, name, tt.off, tt.limit)
		if err != nil {
			t.Fatalf("Read(offset %d, limit %d): %v", tt.off, tt.limit, err)
		}
		if !bytes.Equal(got, tt.want) {
			t.Errorf("Read(offset %d, limit %d) = %d bytes, want %d", tt.off, tt.limit, len(got), len(tt.want))
		}
	}

	_, _, err := e.read(ctx, name, size+1, 0)
	bsWantCode(t, err, codes.OutOfRange, "read_offset")
	_, _, err = e.read(ctx, name, -1, 0)
	bsWantCode(t, err, codes.OutOfRange, "read_offset")
	_, _, err = e.read(ctx, name, 0, -1)
	bsWantCode(t, err, codes.InvalidArgument, "read_limit")

	// Offsets of compressed reads are uncompressed offsets; limits are refused.
	zname := ReadResourceName("", d, repb.Compressor_ZSTD)
	for _, off := range []int64{0, 12345, size} {
		z, _, err := e.read(ctx, zname, off, 0)
		if err != nil {
			t.Fatalf("compressed Read(offset %d): %v", off, err)
		}
		if got := zstdDecompress(t, z); !bytes.Equal(got, data[off:]) {
			t.Errorf("compressed Read(offset %d) decompresses to %d bytes, want %d", off, len(got), size-off)
		}
	}
	_, _, err = e.read(ctx, zname, 0, 10)
	bsWantCode(t, err, codes.InvalidArgument, "read_limit")
	_, _, err = e.read(ctx, zname, size+1, 0)
	bsWantCode(t, err, codes.OutOfRange, "read_offset")
}

func TestByteStreamReadMissingAndEmpty(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	missing := digest.Compute(digest.BLAKE3, []byte("never stored"))
	for _, c := range []repb.Compressor_Value{repb.Compressor_IDENTITY, repb.Compressor_ZSTD} {
		_, _, err := e.read(ctx, ReadResourceName("x", missing, c), 0, 0)
		bsWantCode(t, err, codes.NotFound, missing.Hash)
	}
	for _, fn := range digest.Supported {
		got, _, err := e.read(ctx, ReadResourceName("", digest.Empty(fn), repb.Compressor_IDENTITY), 0, 0)
		if err != nil || len(got) != 0 {
			t.Errorf("Read of the empty %s blob = %d bytes, %v", fn, len(got), err)
		}
		z, _, err := e.read(ctx, ReadResourceName("", digest.Empty(fn), repb.Compressor_ZSTD), 0, 0)
		if err != nil || len(zstdDecompress(t, z)) != 0 {
			t.Errorf("compressed Read of the empty %s blob: %v", fn, err)
		}
		resp, err := e.write(ctx, bsUploadName("", digest.Empty(fn), repb.Compressor_IDENTITY), nil, 1)
		if err != nil || resp.GetCommittedSize() != 0 {
			t.Errorf("Write of the empty %s blob = %v, %v", fn, resp, err)
		}
	}
}

func TestByteStreamBadNames(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	h := rnHash
	bad := []string{
		"",
		"blobs/" + h,
		"blobs/" + h + "/x",
		"blobs/" + h + "/-1",
		"blobs/sha256/" + h + "/1",
		"blobs/sha1/" + h[:40] + "/1",
		"blobs/" + h[:40] + "/1",
		"blobs/sha384/" + h + "/1",
		"blobs/" + strings.ToUpper(h) + "/1",
		"compressed-blobs/identity/" + h + "/1",
		"compressed-blobs/brotli/" + h + "/1",
		"compressed-blobs/deflate/" + h + "/1",
		"compressed-blobs/lz4/" + h + "/1",
		"a//blobs/" + h + "/1",
		"operations/blobs/" + h + "/1",
		"a/capabilities/blobs/" + h + "/1",
		"main",
		"uploads/blobs/" + h + "/1",
	}
	uploadOnly := []string{
		"uploads/" + rnUUID + "/blobs/" + h + "/1",
		"x/uploads/" + rnUUID + "/compressed-blobs/zstd/" + h + "/1/meta",
	}
	readOnly := []string{
		"blobs/" + h + "/1",
		"x/y/compressed-blobs/zstd/blake3/" + h + "/1",
	}
	check := func(t *testing.T, err error, name string) {
		t.Helper()
		bsWantCode(t, err, codes.InvalidArgument, "")
		if name != "" && !strings.Contains(status.Convert(err).Message(), name) {
			t.Errorf("message %q does not name %q", status.Convert(err).Message(), name)
		}
	}
	for _, name := range append(bad, uploadOnly...) {
		_, _, err := e.read(ctx, name, 0, 0)
		check(t, err, name)
	}
	for _, name := range append(bad, readOnly...) {
		_, err := e.write(ctx, name, []byte("x"), 1)
		check(t, err, name)
		_, err = e.client.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
		check(t, err, name)
	}
	for _, name := range bad {
		name = strings.Replace(name, "blobs/", "uploads/"+rnUUID+"/blobs/", 1)
		_, err := e.write(ctx, name, []byte("x"), 1)
		check(t, err, name)
	}

	// The optional routing header must match the resource name.
	d := digest.Compute(digest.SHA256, []byte("hdr"))
	name := ReadResourceName("", d, repb.Compressor_IDENTITY)
	hctx := metadata.AppendToOutgoingContext(ctx, resourceNameHeader, "other/"+name)
	_, _, err := e.read(hctx, name, 0, 0)
	bsWantCode(t, err, codes.InvalidArgument, resourceNameHeader)
	hctx = metadata.AppendToOutgoingContext(ctx, resourceNameHeader, name)
	_, _, err = e.read(hctx, name, 0, 0)
	bsWantCode(t, err, codes.NotFound, "")
}

func TestByteStreamWriteProtocolErrors(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(1000, 3)
	d := digest.Compute(digest.SHA256, data)
	tests := []struct {
		desc string
		reqs func(name string) []*bspb.WriteRequest
		msg  string
	}{
		{"no resource name", func(string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{Data: data, FinishWrite: true}}
		}, "no resource_name"},
		{"first offset beyond a fresh upload", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, WriteOffset: 10, Data: data[10:], FinishWrite: true}}
		}, "write_offset 10"},
		{"negative offset", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, WriteOffset: -1, Data: data}}
		}, "write_offset -1"},
		{"gap", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, Data: data[:100]}, {WriteOffset: 101, Data: data[101:], FinishWrite: true}}
		}, "write_offset 101"},
		{"rewind", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, Data: data[:100]}, {WriteOffset: 50, Data: data[50:], FinishWrite: true}}
		}, "write_offset 50"},
		{"other name later", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, Data: data[:100]}, {ResourceName: n + "x", WriteOffset: 100, Data: data[100:], FinishWrite: true}}
		}, "first request named"},
		{"request after finish_write", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, Data: data, FinishWrite: true}, {WriteOffset: 1000}}
		}, "finish_write"},
		{"wrong hash", func(n string) []*bspb.WriteRequest {
			other := append([]byte{}, data...)
			other[500] ^= 1
			return []*bspb.WriteRequest{{ResourceName: n, Data: other, FinishWrite: true}}
		}, "hash"},
		{"short", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, Data: data[:999], FinishWrite: true}}
		}, "after 999 bytes"},
		{"long", func(n string) []*bspb.WriteRequest {
			return []*bspb.WriteRequest{{ResourceName: n, Data: data}, {WriteOffset: 1000, Data: []byte("!"), FinishWrite: true}}
		}, "more than the 1000 bytes"},
		{"empty stream", func(string) []*bspb.WriteRequest { return nil }, "before its first WriteRequest"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			name := bsUploadName("inst", d, repb.Compressor_IDENTITY)
			stream, err := e.client.Write(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range tt.reqs(name) {
				if err := stream.Send(r); err != nil {
					break // the server already answered; CloseAndRecv has it
				}
			}
			_, err = stream.CloseAndRecv()
			bsWantCode(t, err, codes.InvalidArgument, tt.msg)
			if e.present(t, d) {
				t.Fatal("the blob was stored")
			}
			// A failed upload is gone, not resumable with bad data in it.
			_, err = e.client.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: name})
			bsWantCode(t, err, codes.NotFound, "")
		})
	}
	if n := e.tempFiles(t); n != 0 {
		t.Errorf("%d temp files left by failed uploads", n)
	}
}

func TestByteStreamWriteExistingReturnsEarly(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsRandom(100<<10, 4)
	d := digest.Compute(digest.BLAKE3, data)
	if err := cas.Put(ctx, e.store, d, data); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		c    repb.Compressor_Value
		want int64
	}{{repb.Compressor_IDENTITY, d.Size}, {repb.Compressor_ZSTD, -1}} {
		stream, err := e.client.Write(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Only the first request, without finish_write: the answer must
		// come from the blob's existence, not from the data.
		if err := stream.Send(&bspb.WriteRequest{ResourceName: bsUploadName("", d, tt.c), Data: data[:10]}); err != nil {
			t.Fatal(err)
		}
		var resp bspb.WriteResponse
		if err := stream.RecvMsg(&resp); err != nil {
			t.Fatalf("%s: waiting for the early answer: %v", tt.c, err)
		}
		if resp.GetCommittedSize() != tt.want {
			t.Errorf("%s: committed_size %d, want %d", tt.c, resp.GetCommittedSize(), tt.want)
		}
	}
	// QueryWriteStatus of any upload of an existing blob reports it complete.
	qs, err := e.client.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: bsUploadName("", d, 0)})
	if err != nil || !qs.GetComplete() || qs.GetCommittedSize() != d.Size {
		t.Fatalf("QueryWriteStatus = %v, %v; want complete, %d", qs, err, d.Size)
	}
}

func TestByteStreamCompressed(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	data := bsCompressible(3 << 20)
	d := digest.Compute(digest.SHA256, data)
	z := zstdCompress(t, data)
	if len(z) >= len(data)/2 {
		t.Fatalf("test data compresses to %d of %d bytes; want it well bsCompressible", len(z), len(data))
	}

	t.Run("compressed write, plain read", func(t *testing.T) {
		resp, err := e.write(ctx, bsUploadName("ci", d, repb.Compressor_ZSTD), z, 16<<10)
		if err != nil {
			t.Fatalf("Write: %v", err)
		}
		if resp.GetCommittedSize() != int64(len(z)) {
			t.Errorf("committed_size %d, want the %d compressed bytes sent", resp.GetCommittedSize(), len(z))
		}
		got, _, err := e.read(ctx, ReadResourceName("ci", d, repb.Compressor_IDENTITY), 0, 0)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Read = %d bytes, %v; want the %d uncompressed bytes", len(got), err, len(data))
		}
	})

	t.Run("plain write, compressed read", func(t *testing.T) {
		other := bsCompressible(2<<20 + 7)
		od := digest.Compute(digest.BLAKE3, other)
		if _, err := e.write(ctx, bsUploadName("", od, 0), other, 1<<20); err != nil {
			t.Fatal(err)
		}
		zgot, sizes, err := e.read(ctx, ReadResourceName("", od, repb.Compressor_ZSTD), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(zgot) >= len(other) {
			t.Errorf("compressed read sent %d bytes for %d bytes of bsCompressible data", len(zgot), len(other))
		}
		for _, n := range sizes {
			if n > readChunkSize {
				t.Fatalf("chunk of %d bytes", n)
			}
		}
		if !bytes.Equal(zstdDecompress(t, zgot), other) {
			t.Fatal("compressed read does not decompress to the blob")
		}
	})

	bad := []struct {
		desc string
		z    []byte
		msg  string
	}{
		{"not zstd", []byte("this is not a zstd frame at all"), "zstd"},
		{"other content", zstdCompress(t, bsCompressible(3<<20 + 1)[1:]), "hash"},
		{"too much", zstdCompress(t, append(append([]byte{}, data...), 'x')), "more than"},
		{"too little", zstdCompress(t, data[:1000]), "after 1000 bytes"},
		{"truncated", z[:len(z)/2], "zstd"},
		{"trailing garbage", append(append([]byte{}, z...), "garbage"...), "zstd"},
	}
	// A digest not yet in the store: every upload below must fail.
	bd := digest.Compute(digest.BLAKE3, data)
	for _, tt := range bad {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := e.write(ctx, bsUploadName("", bd, repb.Compressor_ZSTD), tt.z, 8<<10)
			bsWantCode(t, err, codes.InvalidArgument, tt.msg)
			if e.present(t, bd) {
				t.Fatal("stored")
			}
		})
	}
	if n := e.tempFiles(t); n != 0 {
		t.Errorf("%d temp files left by failed uploads", n)
	}
}

// TestByteStreamDotSegments: resource names whose instance or upload uuid
// segments are "." or ".." are refused by Read, Write and QueryWriteStatus,
// even when the blob exists or the data is right, and a refused Write stores
// nothing.
func TestByteStreamDotSegments(t *testing.T) {
	e := startByteStream(t, uploadOptions{})
	ctx := bsCtx(t)
	stored := []byte("a blob that exists")
	ds := digest.Compute(digest.SHA256, stored)
	if err := cas.Put(ctx, e.store, ds, stored); err != nil {
		t.Fatal(err)
	}
	fresh := []byte("a blob nobody may store under a dot name")
	df := digest.Compute(digest.SHA256, fresh)
	for _, inst := range []string{".", "..", "a/.", "a/..", "../a", "a/./b"} {
		name := ReadResourceName(inst, ds, repb.Compressor_IDENTITY)
		data, _, err := e.read(ctx, name, 0, 0)
		bsWantCode(t, err, codes.InvalidArgument, inst)
		if len(data) > 0 {
			t.Errorf("Read %q served %d bytes", name, len(data))
		}
		up := UploadResourceName(inst, rnUUID, df, repb.Compressor_IDENTITY)
		_, err = e.write(ctx, up, fresh, 4)
		bsWantCode(t, err, codes.InvalidArgument, inst)
		_, err = e.client.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: up})
		bsWantCode(t, err, codes.InvalidArgument, inst)
	}
	for _, id := range []string{".", ".."} {
		for _, inst := range []string{"", "main"} {
			up := UploadResourceName(inst, id, df, repb.Compressor_IDENTITY)
			_, err := e.write(ctx, up, fresh, 4)
			bsWantCode(t, err, codes.InvalidArgument, "uuid")
			_, err = e.client.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: UploadResourceName(inst, id, ds, repb.Compressor_IDENTITY)})
			bsWantCode(t, err, codes.InvalidArgument, "uuid")
		}
	}
	if e.present(t, df) {
		t.Errorf("a Write under a dot-segment name stored the blob")
	}
	if n := e.server.uploads.len(); n != 0 {
		t.Errorf("%d upload sessions were opened for refused names", n)
	}
}
