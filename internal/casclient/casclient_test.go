package casclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/reapi"
)

// server is a real Hearth storage server on a loopback TCP port, over a
// verifying disk CAS and a completeness-checking disk action cache.
type server struct {
	addr string
	cas  cas.Store // the server's own store, to check what arrived

	mu    sync.Mutex
	calls map[string]int              // RPCs by full method name
	fns   []repb.DigestFunction_Value // digest_function of each FindMissingBlobs
}

func (s *server) count(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

func startServer(t testing.TB) *server {
	t.Helper()
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	blobs := cas.NewVerifying(disk)
	results, err := actioncache.NewDisk(filepath.Join(dir, "ac"))
	if err != nil {
		t.Fatal(err)
	}
	s := &server{cas: blobs, calls: map[string]int{}}
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			s.mu.Lock()
			s.calls[info.FullMethod]++
			if r, ok := req.(*repb.FindMissingBlobsRequest); ok {
				s.fns = append(s.fns, r.GetDigestFunction())
			}
			s.mu.Unlock()
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			s.mu.Lock()
			s.calls[info.FullMethod]++
			s.mu.Unlock()
			return h(srv, ss)
		}),
	)
	reapi.Register(srv, reapi.Config{CAS: blobs, ActionCache: actioncache.NewCompletenessChecking(results, blobs)})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	s.addr = lis.Addr().String()
	return s
}

// connect dials s the way hearth worker does.
func connect(t *testing.T, s *server) *grpc.ClientConn {
	t.Helper()
	conn, err := Dial(context.Background(), "grpc://"+s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// pattern returns n bytes that differ between positions and seeds.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i>>9) ^ seed
	}
	return b
}

// writeInPieces writes data through a Writer in odd-sized pieces, so that
// the writer's chunking sees writes straddling its boundaries.
func writeInPieces(ctx context.Context, s cas.Store, d digest.Digest, data []byte) error {
	w, err := s.Create(ctx, d)
	if err != nil {
		return err
	}
	defer w.Close()
	for len(data) > 0 {
		n := min(len(data), 300_001)
		if _, err := w.Write(data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return w.Commit()
}

func TestRoundTrip(t *testing.T) {
	srv := startServer(t)
	conn := connect(t, srv)
	ctx := context.Background()
	for _, instance := range []string{"", "main/ci"} {
		store := NewStore(conn, instance)
		for _, fn := range digest.Supported {
			for _, size := range []int{1, 1000, batchThreshold, batchThreshold + 1, 3*chunkSize + 12345} {
				t.Run(fmt.Sprintf("%q/%s/%d", instance, fn, size), func(t *testing.T) {
					data := pattern(size, byte(len(instance))+byte(fn))
					d := digest.Compute(fn, data)
					if err := writeInPieces(ctx, store, d, data); err != nil {
						t.Fatalf("write: %v", err)
					}
					if m, err := srv.cas.FindMissing(ctx, []digest.Digest{d}); err != nil || len(m) != 0 {
						t.Fatalf("server does not hold the blob: %v %v", m, err)
					}
					if m, err := store.FindMissing(ctx, []digest.Digest{d}); err != nil || len(m) != 0 {
						t.Fatalf("FindMissing through the client: %v %v", m, err)
					}
					got, err := cas.Get(ctx, store, d)
					if err != nil {
						t.Fatalf("read: %v", err)
					}
					if !bytes.Equal(got, data) {
						t.Fatalf("read %d bytes, differing from the %d written", len(got), len(data))
					}
				})
			}
		}
	}
	// Small blobs went in batches, large ones through ByteStream.
	if srv.count("/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs") == 0 ||
		srv.count("/google.bytestream.ByteStream/Write") == 0 {
		t.Errorf("calls %v: want both batch and streamed uploads", srv.calls)
	}
}

func TestUploadOfExistingLargeBlob(t *testing.T) {
	srv := startServer(t)
	store := NewStore(connect(t, srv), "")
	ctx := context.Background()
	data := pattern(6*chunkSize, 3)
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(ctx, srv.cas, d, data); err != nil {
		t.Fatal(err)
	}
	// The server answers at once with committed_size = size; the writer
	// must take that as success and swallow the rest of the data.
	if err := writeInPieces(ctx, store, d, data); err != nil {
		t.Fatalf("upload of an existing blob: %v", err)
	}
	// Twice concurrently too: both succeed.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = writeInPieces(ctx, store, d, data) })
	}
	wg.Wait()
	if errors.Join(errs...) != nil {
		t.Fatal(errs)
	}
}

func TestOpenOffsets(t *testing.T) {
	srv := startServer(t)
	store := NewStore(connect(t, srv), "inst")
	ctx := context.Background()
	data := pattern(2*chunkSize+17, 9)
	d := digest.Compute(digest.BLAKE3, data)
	if err := cas.Put(ctx, srv.cas, d, data); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1, chunkSize, d.Size - 1, d.Size} {
		r, err := store.Open(ctx, d, off)
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, data[off:]) {
			t.Fatalf("offset %d: read %d bytes (err %v), want the last %d", off, len(got), err, len(data[off:]))
		}
	}
	for _, off := range []int64{-1, d.Size + 1} {
		if _, err := store.Open(ctx, d, off); !errors.Is(err, cas.ErrOutOfRange) {
			t.Errorf("offset %d: %v, want cas.ErrOutOfRange", off, err)
		}
	}
	// Closing a reader mid-blob ends the stream.
	r, err := store.Open(ctx, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	r.Close()
}

func TestNotFoundAndMismatch(t *testing.T) {
	srv := startServer(t)
	store := NewStore(connect(t, srv), "")
	ctx := context.Background()
	for _, size := range []int{10, batchThreshold + 10} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := pattern(size, 1)
			d := digest.Compute(digest.SHA256, data)
			_, err := store.Open(ctx, d, 0)
			if !errors.Is(err, cas.ErrNotFound) || status.Code(err) != codes.NotFound {
				t.Fatalf("Open of an absent blob: %v, want cas.ErrNotFound carrying NOT_FOUND", err)
			}

			wrong := bytes.Clone(data)
			wrong[size/2] ^= 1
			if err := writeInPieces(ctx, store, d, wrong); !errors.Is(err, cas.ErrMismatch) {
				t.Fatalf("write of wrong bytes: %v, want cas.ErrMismatch", err)
			}
			if err := writeInPieces(ctx, store, d, data[:size-1]); !errors.Is(err, cas.ErrMismatch) {
				t.Fatalf("short write: %v, want cas.ErrMismatch", err)
			}
			if err := writeInPieces(ctx, store, d, append(bytes.Clone(data), 0)); !errors.Is(err, cas.ErrMismatch) {
				t.Fatalf("long write: %v, want cas.ErrMismatch", err)
			}
			if m, _ := srv.cas.FindMissing(ctx, []digest.Digest{d}); len(m) != 1 {
				t.Fatal("a rejected write left the blob stored")
			}
			// A writer closed without Commit stores nothing.
			w, err := store.Create(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(data)
			w.Close()
			if m, _ := srv.cas.FindMissing(ctx, []digest.Digest{d}); len(m) != 1 {
				t.Fatal("an uncommitted write stored the blob")
			}
		})
	}
}

func TestEmptyBlobIsNeverTransferred(t *testing.T) {
	srv := startServer(t)
	store := NewStore(connect(t, srv), "")
	ctx := context.Background()
	for _, fn := range digest.Supported {
		e := digest.Empty(fn)
		if err := cas.Put(ctx, store, e, nil); err != nil {
			t.Fatalf("%s: put empty: %v", fn, err)
		}
		if got, err := cas.Get(ctx, store, e); err != nil || len(got) != 0 {
			t.Fatalf("%s: get empty: %q %v", fn, got, err)
		}
		if m, err := store.FindMissing(ctx, []digest.Digest{e}); err != nil || len(m) != 0 {
			t.Fatalf("%s: FindMissing of empty: %v %v", fn, m, err)
		}
		w, _ := store.Create(ctx, e)
		if _, err := w.Write([]byte("x")); !errors.Is(err, cas.ErrMismatch) {
			t.Fatalf("%s: writing into the empty blob: %v", fn, err)
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.calls) != 0 {
		t.Errorf("calls for the empty blob: %v", srv.calls)
	}
}

func TestFindMissingChunksAndGroups(t *testing.T) {
	srv := startServer(t)
	store := NewStore(connect(t, srv), "x")
	ctx := context.Background()
	var ds []digest.Digest
	for i := range 25000 {
		ds = append(ds, digest.Compute(digest.SHA256, fmt.Appendf(nil, "blob %d", i)))
	}
	b3 := digest.Compute(digest.BLAKE3, []byte("blob 0")) // same bytes, other namespace
	ds = append(ds, b3, ds[7], digest.Empty(digest.SHA256))
	present := map[int]bool{5: true, 12000: true, 24999: true}
	for i := range present {
		if err := cas.Put(ctx, srv.cas, ds[i], fmt.Appendf(nil, "blob %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	missing, err := store.FindMissing(ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	var want []digest.Digest
	for i := range 25000 {
		if !present[i] {
			want = append(want, ds[i])
		}
	}
	want = append(want, b3) // ds[7] again and the empty blob: not reported
	if len(missing) != len(want) {
		t.Fatalf("%d missing, want %d", len(missing), len(want))
	}
	for i := range want {
		if missing[i] != want[i] {
			t.Fatalf("missing[%d] = %s, want %s (order of the request, no duplicates)", i, missing[i], want[i])
		}
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	wantFns := []repb.DigestFunction_Value{digest.SHA256, digest.SHA256, digest.SHA256, digest.BLAKE3}
	if fmt.Sprint(srv.fns) != fmt.Sprint(wantFns) {
		t.Errorf("FindMissingBlobs calls with digest functions %v, want %v (25000 in chunks of %d, then BLAKE3)", srv.fns, wantFns, findMissingChunk)
	}
}

func TestActionCache(t *testing.T) {
	srv := startServer(t)
	conn := connect(t, srv)
	ac := NewActionCache(conn)
	ctx := context.Background()
	out := []byte("output file")
	outD := digest.Compute(digest.BLAKE3, out)
	if err := cas.Put(ctx, NewStore(conn, ""), outD, out); err != nil {
		t.Fatal(err)
	}
	action := digest.Compute(digest.BLAKE3, []byte("an action"))
	// Clients upload the Action before its result (REAPI requires it).
	if err := cas.Put(ctx, NewStore(conn, ""), action, []byte("an action")); err != nil {
		t.Fatal(err)
	}
	result := &repb.ActionResult{
		ExitCode:    3,
		OutputFiles: []*repb.OutputFile{{Path: "out", Digest: outD.Proto(), IsExecutable: true}},
	}
	if _, err := ac.Get(ctx, "ci", action); !errors.Is(err, actioncache.ErrNotFound) {
		t.Fatalf("Get before Put: %v, want actioncache.ErrNotFound", err)
	}
	if err := ac.Put(ctx, "ci", action, result); err != nil {
		t.Fatalf("Put: %v", err)
	}
	got, err := ac.Get(ctx, "ci", action)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if !proto.Equal(got, result) {
		t.Fatalf("Get = %v, want %v", got, result)
	}
	if _, err := ac.Get(ctx, "other", action); !errors.Is(err, actioncache.ErrNotFound) {
		t.Errorf("Get in another instance: %v, want actioncache.ErrNotFound", err)
	}
	sha := digest.Digest{Function: digest.SHA256, Hash: action.Hash, Size: action.Size}
	if _, err := ac.Get(ctx, "ci", sha); !errors.Is(err, actioncache.ErrNotFound) {
		t.Errorf("Get under another digest function: %v, want actioncache.ErrNotFound", err)
	}
	if err := ac.Put(ctx, "blobs", action, result); err == nil || status.Code(err) != codes.InvalidArgument {
		t.Errorf("Put with a reserved instance name: %v, want INVALID_ARGUMENT", err)
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in, addr, security string
	}{
		{"grpc://localhost:8980", "dns:///localhost:8980", "insecure"},
		{"127.0.0.1:8980", "dns:///127.0.0.1:8980", "insecure"},
		{"grpcs://cas.example.com:443", "dns:///cas.example.com:443", "tls"},
		{"[::1]:8980", "dns:///[::1]:8980", "insecure"},
		{"unix:///run/hearth.sock", "unix:///run/hearth.sock", "insecure"},
		{"http://localhost:8980", "", ""},
		{"localhost", "", ""},
		{"localhost:", "", ""},
		{"localhost:http", "", ""},
		{"grpc://localhost:1/path", "", ""},
		{"::1:8980", "", ""},
		{"unix://relative.sock", "", ""},
		{"", "", ""},
	} {
		addr, creds, err := parseTarget(tc.in)
		if tc.addr == "" {
			if !errors.Is(err, ErrBadTarget) {
				t.Errorf("%q: got %q, %v; want ErrBadTarget", tc.in, addr, err)
			}
			if _, derr := Dial(context.Background(), tc.in); !errors.Is(derr, ErrBadTarget) {
				t.Errorf("Dial(%q): %v, want ErrBadTarget", tc.in, derr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if addr != tc.addr || creds.Info().SecurityProtocol != tc.security {
			t.Errorf("%q: got %q %s; want %q %s", tc.in, addr, creds.Info().SecurityProtocol, tc.addr, tc.security)
		}
	}
}
