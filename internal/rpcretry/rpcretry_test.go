package rpcretry

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// flaky is a real health server whose first fails calls fail with code (or,
// for DeadlineExceeded, take longer than slow), counting every call.
type flaky struct {
	healthpb.UnimplementedHealthServer
	faults
	calls atomic.Int32
}

type faults struct {
	fails int32
	code  codes.Code
	slow  time.Duration
}

func (f *flaky) fail(ctx context.Context) error {
	if f.calls.Add(1) > f.fails {
		return nil
	}
	if f.code == codes.DeadlineExceeded {
		select {
		case <-time.After(f.slow):
		case <-ctx.Done():
		}
		return status.Error(codes.DeadlineExceeded, "too slow")
	}
	return status.Error(f.code, "injected")
}

func (f *flaky) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	if err := f.fail(ctx); err != nil {
		return nil, err
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// Watch is server-streaming: it answers once and ends.
func (f *flaky) Watch(req *healthpb.HealthCheckRequest, s healthpb.Health_WatchServer) error {
	if err := f.fail(s.Context()); err != nil {
		return err
	}
	return s.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

func start(t *testing.T, f *flaky, p Policy) healthpb.HealthClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, f)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, p.DialOptions()...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func watchOnce(ctx context.Context, c healthpb.HealthClient) error {
	s, err := c.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if _, err := s.Recv(); err != nil {
		return err
	}
	if _, err := s.Recv(); err != io.EOF {
		return err
	}
	return nil
}

func TestPolicy(t *testing.T) {
	const delay = 40 * time.Millisecond
	for _, tc := range []struct {
		name      string
		srv       faults
		p         Policy
		wantCode  codes.Code
		wantCalls int32
		minTook   time.Duration // the retries' delays
	}{
		{"no policy: one attempt", faults{fails: 1, code: codes.Unavailable}, Policy{}, codes.Unavailable, 1, 0},
		{"retried until it works", faults{fails: 2, code: codes.Unavailable}, Policy{Limit: 3, Delay: delay}, codes.OK, 3, delay + delay*16/10},
		{"limit reached", faults{fails: 5, code: codes.Unavailable}, Policy{Limit: 2, Delay: delay}, codes.Unavailable, 3, delay + delay*16/10},
		{"not retryable by default", faults{fails: 1, code: codes.Internal}, Policy{Limit: 3, Delay: delay}, codes.Internal, 1, 0},
		{"retry-on-code", faults{fails: 1, code: codes.Internal}, Policy{Limit: 3, Delay: delay, Codes: []codes.Code{codes.Internal}}, codes.OK, 2, delay},
		{"retry-on-code replaces UNAVAILABLE", faults{fails: 1, code: codes.Unavailable}, Policy{Limit: 3, Delay: delay, Codes: []codes.Code{codes.Internal}}, codes.Unavailable, 1, 0},
		// The first attempt outlives Timeout; the second, fast, attempt
		// works: the deadline is per attempt, not per call.
		{"timeout per attempt", faults{fails: 1, code: codes.DeadlineExceeded, slow: 5 * time.Second}, Policy{Limit: 1, Delay: delay, Timeout: 300 * time.Millisecond, Codes: []codes.Code{codes.DeadlineExceeded}}, codes.OK, 2, 300*time.Millisecond + delay},
		{"timeout without retry", faults{fails: 1, code: codes.DeadlineExceeded, slow: 5 * time.Second}, Policy{Timeout: 200 * time.Millisecond}, codes.DeadlineExceeded, 1, 200 * time.Millisecond},
	} {
		for _, kind := range []string{"unary", "server-streaming"} {
			t.Run(tc.name+"/"+kind, func(t *testing.T) {
				srv := &flaky{faults: tc.srv}
				c := start(t, srv, tc.p)
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				begin := time.Now()
				var err error
				if kind == "unary" {
					_, err = c.Check(ctx, &healthpb.HealthCheckRequest{})
				} else {
					err = watchOnce(ctx, c)
				}
				took := time.Since(begin)
				if status.Code(err) != tc.wantCode {
					t.Errorf("code %v (%v), want %v", status.Code(err), err, tc.wantCode)
				}
				if got := srv.calls.Load(); got != tc.wantCalls {
					t.Errorf("%d calls reached the server, want %d", got, tc.wantCalls)
				}
				if took < tc.minTook {
					t.Errorf("took %v, less than the retry delays %v", took, tc.minTook)
				}
				if took > tc.minTook+3*time.Second {
					t.Errorf("took %v, far more than %v", took, tc.minTook)
				}
			})
		}
	}
}

// A stream to a server that is not there yet is retried while it opens, and
// works once the server is up.
func TestStreamOpenRetried(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Policy{Limit: 8, Delay: 100 * time.Millisecond}.DialOptions()...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		time.Sleep(300 * time.Millisecond)
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, &flaky{})
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := watchOnce(ctx, healthpb.NewHealthClient(conn)); err != nil {
		t.Fatalf("Watch once the server is up: %v", err)
	}
}

// Without retries the same call fails at once.
func TestNoRetryFailsFast(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Check against nothing: %v, want UNAVAILABLE", err)
	}
}

func TestParseCode(t *testing.T) {
	for in, want := range map[string]codes.Code{"UNAVAILABLE": codes.Unavailable, "internal": codes.Internal, " Unknown ": codes.Unknown, "DEADLINE_EXCEEDED": codes.DeadlineExceeded} {
		if got, err := ParseCode(in); err != nil || got != want {
			t.Errorf("ParseCode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "OK", "NOPE", "14"} {
		if _, err := ParseCode(bad); err == nil {
			t.Errorf("ParseCode(%q) accepted", bad)
		}
	}
}

// A call marked SelfRetried passes the interceptors untouched: its caller
// retries it, and two layers would multiply the attempts.
func TestSelfRetriedIsLeftAlone(t *testing.T) {
	for _, kind := range []string{"unary", "server-streaming"} {
		t.Run(kind, func(t *testing.T) {
			srv := &flaky{faults: faults{fails: 2, code: codes.Unavailable}}
			c := start(t, srv, Policy{Limit: 3, Delay: 10 * time.Millisecond})
			ctx := SelfRetried(t.Context())
			var err error
			if kind == "unary" {
				_, err = c.Check(ctx, &healthpb.HealthCheckRequest{})
			} else {
				err = watchOnce(ctx, c)
			}
			if status.Code(err) != codes.Unavailable || srv.calls.Load() != 1 {
				t.Errorf("%v after %d calls; want UNAVAILABLE after one", err, srv.calls.Load())
			}
			// Unmarked, the same connection retries.
			if err := watchOnce(t.Context(), c); err != nil {
				t.Errorf("unmarked call: %v", err)
			}
		})
	}
}
