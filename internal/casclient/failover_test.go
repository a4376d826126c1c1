package casclient

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/testcerts"
)

// casServer is a real REAPI server on loopback with its own disk CAS.
type casServer struct {
	addr  string
	srv   *grpc.Server
	blobs *cas.Disk
}

func startCASServer(t *testing.T) *casServer {
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
	srv := grpc.NewServer()
	reapi.Register(srv, reapi.Config{CAS: disk, ActionCache: results})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return &casServer{addr: lis.Addr().String(), srv: srv, blobs: disk}
}

// answeredBy tells which of the servers answers store's calls: each holds
// its own marker blob, and FindMissing says which marker is present.
func answeredBy(t *testing.T, store *Store, markers map[string]digest.Digest) string {
	t.Helper()
	var all []digest.Digest
	for _, d := range markers {
		all = append(all, d)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		missing, err := store.FindMissing(context.Background(), all)
		if err == nil {
			gone := map[digest.Digest]bool{}
			for _, d := range missing {
				gone[d] = true
			}
			for name, d := range markers {
				if !gone[d] {
					return name
				}
			}
			t.Fatal("no server holds its marker")
		}
		// A call in flight when its server went away fails; the next
		// goes to the next server.
		if time.Now().After(deadline) {
			t.Fatalf("no server answered for 10 s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DialAny uses the first server that accepts, moves to the next when that
// one goes away, and skips a server that is down when it connects.
func TestDialAnyFailsOver(t *testing.T) {
	a, b, c := startCASServer(t), startCASServer(t), startCASServer(t)
	markers := map[string]digest.Digest{}
	for name, s := range map[string]*casServer{"a": a, "b": b, "c": c} {
		data := []byte("marker of " + name)
		d := digest.Compute(digest.SHA256, data)
		if err := cas.Put(context.Background(), s.blobs, d, data); err != nil {
			t.Fatal(err)
		}
		markers[name] = d
	}
	conn, err := DialAny(context.Background(), []string{"grpc://" + a.addr, "grpc://" + b.addr, "grpc://" + c.addr}, DialOptions{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	store := NewStore(conn, "")
	for i := 0; i < 3; i++ { // it stays with the first while it lives
		if got := answeredBy(t, store, markers); got != "a" {
			t.Fatalf("call %d answered by %s, want a (the first listed)", i, got)
		}
	}
	a.srv.Stop()
	if got := answeredBy(t, store, markers); got != "b" {
		t.Fatalf("after a stopped: answered by %s, want b (the next listed)", got)
	}
	b.srv.Stop()
	if got := answeredBy(t, store, markers); got != "c" {
		t.Fatalf("after b stopped: answered by %s, want c", got)
	}

	// A fresh connection whose first server is down starts at the next.
	conn2, err := DialAny(context.Background(), []string{"grpc://" + a.addr, "grpc://" + c.addr}, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	if got := answeredBy(t, NewStore(conn2, ""), markers); got != "c" {
		t.Fatalf("with a down at the start: answered by %s, want c", got)
	}
}

func TestDialAnyRejectsBadLists(t *testing.T) {
	for _, tc := range []struct {
		targets []string
		want    string
	}{
		{nil, "no server address"},
		{[]string{"grpc://a:1", "grpc://a:1"}, `"grpc://a:1" names the same server as "grpc://a:1"`},
		{[]string{"grpcs://a:1", "grpcs://b:2", "grpcs://a:1"}, `"grpcs://a:1" names the same server as "grpcs://a:1"`},
		{[]string{"grpc://a:1", "grpcs://b:2"}, "every server must use TLS (grpcs://) or none"},
		{[]string{"grpc://a:1", "unix:///run/h.sock"}, "each must be grpc://host:port or grpcs://host:port"},
		{[]string{"grpc://a:1", "grpc://b"}, "expected host:port"},
		{[]string{"grpc://a:1", "grpc://b:x"}, "is not a number"},
	} {
		_, err := DialAny(context.Background(), tc.targets, DialOptions{})
		if !errors.Is(err, ErrBadTarget) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("DialAny(%q) = %v, want ErrBadTarget containing %q", tc.targets, err, tc.want)
		}
	}
}

// Over TLS each replica's certificate is checked (against the name of its
// own address) and the connection still moves on when the first goes away.
func TestDialAnyTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcerts.NewCA(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	start := func() (*grpc.Server, string, *cas.Disk) {
		pair, err := ca.Server("server")
		if err != nil {
			t.Fatal(err)
		}
		disk, err := cas.NewDisk(filepath.Join(t.TempDir(), "cas"), cas.DiskOptions{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		results, err := actioncache.NewDisk(filepath.Join(t.TempDir(), "ac"))
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair.TLS}})))
		reapi.Register(srv, reapi.Config{CAS: disk, ActionCache: results})
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		return srv, strconv.Itoa(lis.Addr().(*net.TCPAddr).Port), disk
	}
	a, portA, diskA := start()
	_, portB, diskB := start()
	markers := map[string]digest.Digest{}
	for name, disk := range map[string]*cas.Disk{"a": diskA, "b": diskB} {
		data := []byte("tls marker of " + name)
		d := digest.Compute(digest.SHA256, data)
		if err := cas.Put(context.Background(), disk, d, data); err != nil {
			t.Fatal(err)
		}
		markers[name] = d
	}
	// Two names the certificates hold: localhost and 127.0.0.1.
	targets := []string{"grpcs://localhost:" + portA, "grpcs://127.0.0.1:" + portB}
	conn, err := DialAny(context.Background(), targets, DialOptions{TLS: &tls.Config{RootCAs: ca.Pool()}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	store := NewStore(conn, "")
	if got := answeredBy(t, store, markers); got != "a" {
		t.Fatalf("answered by %s, want a", got)
	}
	a.Stop()
	if got := answeredBy(t, store, markers); got != "b" {
		t.Fatalf("after a stopped: answered by %s, want b", got)
	}

	// A client that does not trust the servers' CA gets nowhere.
	other, err := testcerts.NewCA(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	bad, err := DialAny(context.Background(), targets, DialOptions{TLS: &tls.Config{RootCAs: other.Pool()}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := NewStore(bad, "").FindMissing(context.Background(), []digest.Digest{markers["b"]}); err == nil {
		t.Fatal("a client with the wrong CA was served")
	}
}
