package main

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hearth-build/hearth/internal/casclient"
)

// pingCounter is a TCP proxy in front of addr that counts the HTTP/2 PING
// frames (not acknowledgements) the client sends.
func pingCounter(t *testing.T, addr string) (string, *atomic.Int32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	var pings atomic.Int32
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go io.Copy(c, s)
			go func() {
				// The client preface, then frames: a 9-byte header
				// (length 3, type 1, flags 1, stream 4) and a payload.
				preface := make([]byte, 24)
				if _, err := io.ReadFull(c, preface); err != nil {
					return
				}
				if _, err := s.Write(preface); err != nil {
					return
				}
				hdr := make([]byte, 9)
				for {
					if _, err := io.ReadFull(c, hdr); err != nil {
						return
					}
					n := int(binary.BigEndian.Uint32(append([]byte{0}, hdr[:3]...)))
					payload := make([]byte, n)
					if _, err := io.ReadFull(c, payload); err != nil {
						return
					}
					if hdr[3] == 0x6 && hdr[4]&0x1 == 0 {
						pings.Add(1)
					}
					if _, err := s.Write(append(hdr, payload...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return lis.Addr().String(), &pings
}

// TestKeepaliveTimeHonoured: --keepalive-time=10 makes an idle open stream
// send a keepalive ping within about 10 s; without the flag (casclient's
// 30 s) none is sent in that time.
func TestKeepaliveTimeHonoured(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	for _, tc := range []struct {
		name  string
		args  []string
		pings bool
	}{
		{"keepalive-time=10", []string{"--keepalive-time=10"}, true},
		{"default", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			proxy, pings := pingCounter(t, lis.Addr().String())
			fs, f := newRunFlags()
			if err := parseFlags(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			o, err := f.dialOptions(slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			conn, err := casclient.DialWith(t.Context(), "grpc://"+proxy, o)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			// Watch answers once and then stays open and idle.
			w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Recv(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(12 * time.Second)
			for time.Now().Before(deadline) && pings.Load() == 0 {
				time.Sleep(100 * time.Millisecond)
			}
			if got := pings.Load() > 0; got != tc.pings {
				t.Errorf("keepalive pings within 12 s of idleness: %v, want %v", got, tc.pings)
			}
		})
	}
}
