package casclient

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
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
	_, err = NewStore(conn, "").FindMissing(context.Background(), []digest.Digest{digest.Compute(digest.SHA256, []byte("x"))})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("FindMissing = %v after %v", err, time.Since(start))
	}
}
