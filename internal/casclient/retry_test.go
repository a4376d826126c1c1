package casclient

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/rpcretry"
)

// replica is a real REAPI storage server on loopback with its own disk CAS
// and action cache, which records the calls it gets and where each
// ByteStream stream started.
type replica struct {
	addr    string
	srv     *grpc.Server
	blobs   cas.Store
	results actioncache.Store

	mu     sync.Mutex
	calls  map[string]int
	starts []streamStart // first request of every ByteStream stream, in order

	// stopAfter, when positive, stops the server once it has received
	// that many bytes of ByteStream Write data.
	stopAfter int64
	received  int64
	stopped   chan struct{}
}

type streamStart struct {
	method string // "Read" or "Write"
	name   string
	offset int64
}

func (r *replica) count(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[method]
}

func (r *replica) streams(method string) []streamStart {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []streamStart
	for _, s := range r.starts {
		if s.method == method {
			out = append(out, s)
		}
	}
	return out
}

// recorder notes the first request of a ByteStream stream.
type recorder struct {
	grpc.ServerStream
	r    *replica
	seen bool
}

func (s *recorder) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req, ok := m.(*bspb.WriteRequest); ok && err == nil && s.r.stopAfter > 0 {
		s.r.mu.Lock()
		s.r.received += int64(len(req.GetData()))
		stop := s.r.received >= s.r.stopAfter && s.r.stopped == nil
		if stop {
			s.r.stopped = make(chan struct{})
			go func(done chan struct{}) { s.r.srv.Stop(); close(done) }(s.r.stopped)
		}
		done := s.r.stopped
		s.r.mu.Unlock()
		if done != nil {
			<-done // killed mid-stream: this message is never handled
			return status.Error(codes.Unavailable, "stopped")
		}
	}
	if err == nil && !s.seen {
		s.seen = true
		s.r.mu.Lock()
		switch req := m.(type) {
		case *bspb.ReadRequest:
			s.r.starts = append(s.r.starts, streamStart{"Read", req.GetResourceName(), req.GetReadOffset()})
		case *bspb.WriteRequest:
			s.r.starts = append(s.r.starts, streamStart{"Write", req.GetResourceName(), req.GetWriteOffset()})
		}
		s.r.mu.Unlock()
	}
	return err
}

func startReplica(t *testing.T) *replica {
	t.Helper()
	dir := t.TempDir()
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	results, err := actioncache.NewDisk(filepath.Join(dir, "ac"))
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{blobs: cas.NewVerifying(disk), results: results, calls: map[string]int{}}
	short := func(full string) string { return full[strings.LastIndexByte(full, '/')+1:] }
	r.srv = grpc.NewServer(
		grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			r.mu.Lock()
			r.calls[short(info.FullMethod)]++
			r.mu.Unlock()
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			r.mu.Lock()
			r.calls[short(info.FullMethod)]++
			r.mu.Unlock()
			return h(srv, &recorder{ServerStream: ss, r: r})
		}),
	)
	reapi.Register(r.srv, reapi.Config{CAS: r.blobs, ActionCache: results})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go r.srv.Serve(lis)
	t.Cleanup(r.srv.Stop)
	r.addr = lis.Addr().String()
	return r
}

// dialReplicas connects to the replicas the way hearth worker does with
// several worker_api_endpoint.uris.
func dialReplicas(t *testing.T, rs ...*replica) *grpc.ClientConn {
	t.Helper()
	var targets []string
	for _, r := range rs {
		targets = append(targets, "grpc://"+r.addr)
	}
	conn, err := DialAny(context.Background(), targets, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func seed(t *testing.T, data []byte, rs ...*replica) digest.Digest {
	t.Helper()
	d := digest.Compute(digest.SHA256, data)
	for _, r := range rs {
		if err := cas.Put(context.Background(), r.blobs, d, data); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// A Read whose server is stopped mid-stream goes on at the next replica
// from the offset it reached: the reader yields the blob's bytes exactly
// once.
func TestReadResumesAtAnotherReplica(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	// Three times the stream window: A cannot have sent it all when it
	// stops.
	data := pattern(3*StreamWindowSize+12345, 5)
	d := seed(t, data, a, b)
	store := NewStore(dialReplicas(t, a, b), "")
	const start = 5
	r, err := store.Open(context.Background(), d, start)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 2<<20)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	a.srv.Stop()
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read after A stopped: %v", err)
	}
	got := append(head, rest...)
	if !bytes.Equal(got, data[start:]) {
		t.Fatalf("read %d bytes that differ from the blob's %d from offset %d", len(got), len(data)-start, start)
	}
	if s := a.streams("Read"); len(s) != 1 || s[0].offset != start {
		t.Errorf("reads at A: %+v, want one from %d", s, start)
	}
	s := b.streams("Read")
	if len(s) != 1 || s[0].offset < start+int64(len(head)) || s[0].offset >= d.Size {
		t.Fatalf("reads at B: %+v, want one resuming past the %d bytes read before the stop", s, start+len(head))
	}
	t.Logf("resumed at B at offset %d of %d", s[0].offset, d.Size)
}

// A Write whose server is stopped mid-stream is restarted at the next
// replica (which knows nothing of the upload) under a new upload name.
func TestWriteRestartsAtAnotherReplica(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	data := pattern(replayWindow-3, 7) // held whole: restartable
	d := digest.Compute(digest.SHA256, data)
	store := NewStore(dialReplicas(t, a, b), "")
	w, err := store.Create(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	half := len(data) / 2
	if _, err := w.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	a.srv.Stop()
	if _, err := w.Write(data[half:]); err != nil {
		t.Fatalf("write after A stopped: %v", err)
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("commit after A stopped: %v", err)
	}
	got, err := cas.Get(context.Background(), b.blobs, d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B holds %d bytes (%v), want the %d written", len(got), err, len(data))
	}
	sa, sb := a.streams("Write"), b.streams("Write")
	if len(sa) != 1 || len(sb) != 1 || sb[0].offset != 0 || sb[0].name == sa[0].name {
		t.Fatalf("writes at A %+v, at B %+v: want one at each, B's from 0 under a new name", sa, sb)
	}
}

// When the next replica already holds the blob (another worker uploaded
// it, or the replicas share their CAS), QueryWriteStatus says so and the
// upload is over, also for a blob too large to restart.
func TestWriteFindsBlobAtAnotherReplica(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	data := pattern(2*replayWindow+chunkSize/2, 9)
	d := seed(t, data, b)
	store := NewStore(dialReplicas(t, a, b), "")
	w, err := store.Create(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cut := replayWindow + 3*chunkSize
	if _, err := w.Write(data[:cut]); err != nil {
		t.Fatal(err)
	}
	a.srv.Stop()
	if _, err := w.Write(data[cut:]); err != nil {
		t.Fatalf("write after A stopped: %v", err)
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("commit after A stopped: %v", err)
	}
	if n := b.count("QueryWriteStatus"); n == 0 || b.count("Write") != 0 {
		t.Errorf("B got %d QueryWriteStatus and %d Write calls, want the query only", n, b.count("Write"))
	}
}

// A large upload that lost its server after more than replayWindow bytes
// cannot restart at a replica that lacks the blob: it fails with the
// UNAVAILABLE it met, saying why, instead of pretending.
func TestWriteTooFarToRestart(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	data := pattern(2*replayWindow, 11)
	d := digest.Compute(digest.SHA256, data)
	store := NewStore(dialReplicas(t, a, b), "")
	w, err := store.Create(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cut := replayWindow + 4*chunkSize
	if _, err := w.Write(data[:cut]); err != nil {
		t.Fatal(err)
	}
	a.srv.Stop()
	_, err = w.Write(data[cut:])
	if err == nil {
		err = w.Commit()
	}
	if status.Code(err) != codes.Unavailable || !errors.Is(err, cas.ErrUnavailable) || !strings.Contains(err.Error(), "no longer held") {
		t.Fatalf("got %v, want UNAVAILABLE (and cas.ErrUnavailable) saying the data is no longer held", err)
	}
	if m, _ := b.blobs.FindMissing(context.Background(), []digest.Digest{d}); len(m) != 1 {
		t.Error("B holds the blob nobody finished uploading")
	}
}

// proxy forwards TCP connections to a server until cut, which breaks them
// all: a network failure, after which the client reconnects to the same
// server.
type proxy struct {
	addr string
	mu   sync.Mutex
	open []net.Conn
}

func startProxy(t *testing.T, backend string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: lis.Addr().String()}
	t.Cleanup(func() { lis.Close(); p.cut() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.open = append(p.open, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.open {
		c.Close()
	}
	p.open = nil
}

// A Write whose connection breaks resumes at the same server at the size
// it committed, under the same name, sending again only what it lacks.
func TestWriteResumesAtCommittedSize(t *testing.T) {
	srv := startReplica(t)
	p := startProxy(t, srv.addr)
	conn, err := Dial(context.Background(), "grpc://"+p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	store := NewStore(conn, "")
	data := pattern(2*replayWindow+chunkSize/3, 13)
	d := digest.Compute(digest.SHA256, data)
	w, err := store.Create(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cut := replayWindow + 4*chunkSize
	if _, err := w.Write(data[:cut]); err != nil {
		t.Fatal(err)
	}
	p.cut()
	if _, err := w.Write(data[cut:]); err != nil {
		t.Fatalf("write after the cut: %v", err)
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("commit after the cut: %v", err)
	}
	got, err := cas.Get(context.Background(), srv.blobs, d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the server holds %d bytes (%v), want the %d written", len(got), err, len(data))
	}
	s := srv.streams("Write")
	if len(s) != 2 || s[1].name != s[0].name || s[1].offset <= 0 || s[1].offset > int64(cut) {
		t.Fatalf("writes %+v: want a second under the same name resuming in (0, %d]", s, cut)
	}
	t.Logf("resumed at %d after %d bytes were written", s[1].offset, cut)
}

// Unary calls after the stop of a replica go to the next, without an error.
func TestUnaryCallsFollowTheFailover(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	ctx := context.Background()
	blob := seed(t, []byte("in both"), a, b)
	action := seed(t, []byte("action"), a, b) // UpdateActionResult wants it stored
	result := &repb.ActionResult{ExitCode: 3}
	for _, r := range []*replica{a, b} {
		if err := r.results.Put(ctx, "", action, result); err != nil {
			t.Fatal(err)
		}
	}
	conn := dialReplicas(t, a, b)
	store, ac := NewStore(conn, ""), NewActionCache(conn)
	if _, err := ac.Get(ctx, "", action); err != nil {
		t.Fatal(err)
	}
	a.srv.Stop()
	if res, err := ac.Get(ctx, "", action); err != nil || res.GetExitCode() != 3 {
		t.Fatalf("GetActionResult after A stopped: %v, %v", res, err)
	}
	if m, err := store.FindMissing(ctx, []digest.Digest{blob}); err != nil || len(m) != 0 {
		t.Fatalf("FindMissingBlobs after A stopped: %v, %v", m, err)
	}
	small := []byte("a small output")
	sd := digest.Compute(digest.SHA256, small)
	if err := cas.Put(ctx, store, sd, small); err != nil {
		t.Fatalf("BatchUpdateBlobs after A stopped: %v", err)
	}
	if err := ac.Put(ctx, "", action, &repb.ActionResult{ExitCode: 4}); err != nil {
		t.Fatalf("UpdateActionResult after A stopped: %v", err)
	}
	if res, err := b.results.Get(ctx, "", action); err != nil || res.GetExitCode() != 4 {
		t.Errorf("B's result %v, %v; want the update", res, err)
	}
	if b.count("GetActionResult") != 1 || b.count("BatchUpdateBlobs") != 1 {
		t.Errorf("B got %v", b.calls)
	}
}

// A permanent failure is reported at once: one call, no retry.
func TestPermanentErrorsAreNotRetried(t *testing.T) {
	srv := startReplica(t)
	conn, err := Dial(context.Background(), "grpc://"+srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	store, ac := NewStore(conn, ""), NewActionCache(conn)

	absent := digest.Compute(digest.SHA256, pattern(3*chunkSize, 1))
	if _, err := store.Open(ctx, absent, 0); !errors.Is(err, cas.ErrNotFound) || strings.Contains(err.Error(), "attempts") {
		t.Errorf("Open of an absent blob: %v", err)
	}
	if _, err := ac.Get(ctx, "", absent); !errors.Is(err, actioncache.ErrNotFound) {
		t.Errorf("GetActionResult of an absent action: %v", err)
	}
	big := pattern(3*chunkSize, 2)
	if err := writeInPieces(ctx, store, absent, big); !errors.Is(err, cas.ErrMismatch) {
		t.Errorf("stream write of wrong bytes: %v", err)
	}
	small := []byte("not what the digest says")
	if err := cas.Put(ctx, store, digest.Compute(digest.SHA256, []byte("other")), small[:5]); !errors.Is(err, cas.ErrMismatch) {
		t.Errorf("batch write of wrong bytes: %v", err)
	}
	for method, want := range map[string]int{"Read": 1, "GetActionResult": 1, "Write": 1, "BatchUpdateBlobs": 1, "QueryWriteStatus": 0} {
		if got := srv.count(method); got != want {
			t.Errorf("%s called %d times, want %d", method, got, want)
		}
	}
}

// With no server, every call gives up after its retries and says which
// call failed after how many attempts, with the status it met.
func TestFinalErrorNamesCallAndAttempts(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	conn, err := Dial(context.Background(), "grpc://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p := rpcretry.Policy{Limit: 2, Delay: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}
	store, ac := NewStore(conn, "", WithRetry(p)), NewActionCache(conn, WithRetry(p))
	ctx := context.Background()
	d := digest.Compute(digest.SHA256, pattern(2*chunkSize, 3))
	small := []byte("small")
	checks := map[string]error{}
	_, checks["FindMissingBlobs"] = store.FindMissing(ctx, []digest.Digest{d})
	_, checks["GetActionResult"] = ac.Get(ctx, "", d)
	checks["UpdateActionResult"] = ac.Put(ctx, "", d, &repb.ActionResult{})
	_, checks["read blobs/"] = store.Open(ctx, d, 0)
	checks["BatchUpdateBlobs"] = cas.Put(ctx, store, digest.Compute(digest.SHA256, small), small)
	checks["write uploads/"] = writeInPieces(ctx, store, d, pattern(2*chunkSize, 3))
	for call, err := range checks {
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), call) || !strings.Contains(err.Error(), "(3 attempts)") {
			t.Errorf("%s: %v; want UNAVAILABLE naming the call and its 3 attempts", call, err)
		}
	}
}

// A large output file whose upload lost its server too far in for the
// writer to restart it is sent again from the file by outputs, and lands
// at the next replica.
func TestLostLargeUploadIsSentAgainFromTheFile(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	a.stopAfter = replayWindow + 4*chunkSize
	data := pattern(2*replayWindow+12345, 17)
	path := filepath.Join(t.TempDir(), "out.jar")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	store := NewStore(dialReplicas(t, a, b), "")
	d, err := outputs.UploadFile(context.Background(), store, digest.SHA256, path)
	if err != nil {
		t.Fatalf("upload across the stop of A: %v", err)
	}
	got, err := cas.Get(context.Background(), b.blobs, d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B holds %d bytes (%v), want the file's %d", len(got), err, len(data))
	}
	if s := b.streams("Write"); len(s) != 1 || s[0].offset != 0 {
		t.Errorf("writes at B %+v: want one, from 0", s)
	}
}

// A server that dies on the last request, the one with finish_write, never
// answers the Commit: the writer sends the whole upload again, finish_write
// included, to the next replica.
func TestCommitCutAtFinishWrite(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	data := pattern(5*chunkSize+777, 19)
	a.stopAfter = int64(len(data)) // reached by the last request only
	d := digest.Compute(digest.SHA256, data)
	store := NewStore(dialReplicas(t, a, b), "")
	if err := writeInPieces(context.Background(), store, d, data); err != nil {
		t.Fatalf("upload across the stop of A: %v", err)
	}
	if got, err := cas.Get(context.Background(), b.blobs, d); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("B holds %d bytes (%v), want the %d written", len(got), err, len(data))
	}
	if m, _ := a.blobs.FindMissing(context.Background(), []digest.Digest{d}); len(m) != 1 {
		t.Error("A committed the blob although it died before handling finish_write")
	}
}
