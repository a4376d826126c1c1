package tlsreload

import (
	"context"
	"crypto/tls"
	"io"
	"os"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/testcerts"
)

// serve accepts TLS connections on loopback with cfg and answers each with
// one byte once the handshake is done.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err == nil {
					c.Write([]byte{1})
				}
			}()
		}
	}()
	return l.Addr().String()
}

// handshake connects and returns the server certificate's common name.
func handshake(addr string, cfg *tls.Config) (string, error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	// With TLS 1.3 a rejected client certificate shows on the first read.
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return "", err
	}
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
}

func mustCA(t *testing.T) *testcerts.CA {
	t.Helper()
	ca, err := testcerts.NewCA(t.TempDir(), "test")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustIssue(t *testing.T) func(testcerts.Pair, error) testcerts.Pair {
	return func(p testcerts.Pair, err error) testcerts.Pair {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
}

// replace copies the certificate and key of src over dst's files.
func replace(t *testing.T, dst, src testcerts.Pair) {
	t.Helper()
	for _, f := range [][2]string{{src.CertFile, dst.CertFile}, {src.KeyFile, dst.KeyFile}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReloadOnCallAndOnChange(t *testing.T) {
	ca := mustCA(t)
	a := mustIssue(t)(ca.Server("server-a"))
	b := mustIssue(t)(ca.Server("server-b"))
	c := mustIssue(t)(ca.Server("server-c"))
	r, err := New(Files{CertFile: a.CertFile, KeyFile: a.KeyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, r.Config())
	client := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	check := func(want string) {
		t.Helper()
		got, err := handshake(addr, client)
		if err != nil || got != want {
			t.Fatalf("server certificate %q (%v), want %q", got, err, want)
		}
	}
	check("server-a")

	replace(t, a, b)
	check("server-a") // nothing reloads by itself without Watch
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	check("server-b")

	// A broken file is refused and the previous certificate stays.
	if err := os.WriteFile(a.KeyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil {
		t.Fatal("Reload accepted a broken key file")
	}
	check("server-b")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Watch(ctx, 10*time.Millisecond)
	replace(t, a, c)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := handshake(addr, client)
		if err == nil && got == "server-c" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Watch did not pick up the changed files: still %q (%v)", got, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMutualTLS(t *testing.T) {
	ca := mustCA(t)
	other := mustCA(t)
	srv := mustIssue(t)(ca.Server("server"))
	good := mustIssue(t)(ca.Client("ci"))
	stranger := mustIssue(t)(other.Client("ci"))
	r, err := New(Files{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: ca.CertFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.MutualTLS() {
		t.Error("MutualTLS() = false with a client CA")
	}
	addr := serve(t, r.Config())
	for _, tc := range []struct {
		name   string
		certs  []tls.Certificate
		wantOK bool
	}{
		{"no client certificate", nil, false},
		{"certificate of another CA", []tls.Certificate{stranger.TLS}, false},
		{"certificate of the client CA", []tls.Certificate{good.TLS}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := handshake(addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: tc.certs})
			if (err == nil) != tc.wantOK {
				t.Fatalf("handshake error %v, want success %v", err, tc.wantOK)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	ca := mustCA(t)
	srv := mustIssue(t)(ca.Server("server"))
	for _, tc := range []struct {
		name  string
		files Files
	}{
		{"no key", Files{CertFile: srv.CertFile}},
		{"missing cert", Files{CertFile: srv.CertFile + ".nope", KeyFile: srv.KeyFile}},
		{"key as CA", Files{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: srv.KeyFile}},
	} {
		if _, err := New(tc.files, nil); err == nil {
			t.Errorf("%s: New accepted %+v", tc.name, tc.files)
		}
	}
}
