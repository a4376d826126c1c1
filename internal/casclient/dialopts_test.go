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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/rpcretry"
	"github.com/hearth-build/hearth/internal/testcerts"
)

func TestDialWithTLSNeedsSecureTarget(t *testing.T) {
	if _, err := DialWith(context.Background(), "grpc://127.0.0.1:1", DialOptions{TLS: &tls.Config{}}); !errors.Is(err, ErrBadTarget) {
		t.Fatalf("err = %v, want ErrBadTarget", err)
	}
}

// A server that accepts connections but never answers must not hang a
// unary call past the endpoint timeout.
func TestDialWithTimeoutBoundsUnaryCalls(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	conn, err := DialWith(context.Background(), lis.Addr().String(), DialOptions{Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	// Each attempt is bounded, and one that ran out of time is retried
	// (the caller's own context has no deadline).
	p := rpcretry.Policy{Limit: 1, Delay: 10 * time.Millisecond, Codes: []codes.Code{codes.DeadlineExceeded}, Logger: slog.New(slog.DiscardHandler)}
	_, err = NewStore(conn, "", WithRetry(p)).FindMissing(context.Background(), []digest.Digest{digest.Compute(digest.SHA256, []byte("x"))})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "(2 attempts)") || time.Since(start) > 5*time.Second {
		t.Fatalf("FindMissing = %v after %v", err, time.Since(start))
	}
	if took := time.Since(start); took < 600*time.Millisecond {
		t.Fatalf("two attempts of 300 ms took %v", took)
	}
	// Once the caller's own deadline has passed, nothing is retried.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	p.Limit = 5
	_, err = NewStore(conn, "", WithRetry(p)).FindMissing(ctx, []digest.Digest{digest.Compute(digest.SHA256, []byte("x"))})
	if status.Code(err) != codes.DeadlineExceeded || strings.Contains(err.Error(), "attempts") {
		t.Fatalf("FindMissing past the caller's deadline = %v", err)
	}
}

// A token and TLS settings given to DialWith reach a server that requires
// both: calls with them pass its policy, the same calls without the token
// are refused as UNAUTHENTICATED.
func TestDialWithTokenAndTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcerts.NewCA(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Server("server")
	if err != nil {
		t.Fatal(err)
	}
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	results, err := actioncache.NewDisk(filepath.Join(dir, "ac"))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := auth.New(auth.Config{Principals: []auth.PrincipalConfig{
		{Name: "ci", TokenSHA256: []string{auth.HashToken("s3cret")}, Grants: []auth.Grant{{Rights: auth.Read | auth.Write}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srvCert.TLS}})),
		grpc.UnaryInterceptor(policy.UnaryInterceptor()), grpc.StreamInterceptor(policy.StreamInterceptor()))
	blobs := cas.NewVerifying(disk)
	reapi.Register(srv, reapi.Config{CAS: blobs, ActionCache: actioncache.NewCompletenessChecking(results, blobs)})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	target := "grpcs://localhost:" + strconv.Itoa(lis.Addr().(*net.TCPAddr).Port)
	clientTLS := &tls.Config{RootCAs: ca.Pool()}
	data := pattern(3<<20, 9) // several ByteStream chunks
	d := digest.Compute(digest.SHA256, data)
	for _, tc := range []struct {
		token string
		want  codes.Code
	}{{"", codes.Unauthenticated}, {"wrong", codes.Unauthenticated}, {"s3cret", codes.OK}} {
		conn, err := DialWith(context.Background(), target, DialOptions{TLS: clientTLS, Token: tc.token})
		if err != nil {
			t.Fatal(err)
		}
		store := NewStore(conn, "")
		err = cas.Put(context.Background(), store, d, data)
		if status.Code(err) != tc.want {
			t.Errorf("token %q: upload error %v, want code %v", tc.token, err, tc.want)
		}
		if _, err := store.FindMissing(context.Background(), []digest.Digest{d}); status.Code(err) != tc.want {
			t.Errorf("token %q: FindMissing error %v, want code %v", tc.token, err, tc.want)
		}
		conn.Close()
	}
	if missing, _ := disk.FindMissing(context.Background(), []digest.Digest{d}); len(missing) != 0 {
		t.Error("the authorized upload did not arrive")
	}
}
