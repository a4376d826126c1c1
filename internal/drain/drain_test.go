package drain

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// slowHealth answers Check after delay, and Watch never ends (a long-lived
// session, left out of the count).
type slowHealth struct {
	healthpb.UnimplementedHealthServer
	delay time.Duration
}

func (s slowHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	select {
	case <-time.After(s.delay):
		return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s slowHealth) Watch(_ *healthpb.HealthCheckRequest, w healthpb.Health_WatchServer) error {
	<-w.Context().Done()
	return nil
}

func start(t *testing.T, delay time.Duration) (*grpc.Server, *Tracker, healthpb.HealthClient) {
	t.Helper()
	tr := NewTracker("/grpc.health.v1.Health/Watch")
	srv := grpc.NewServer(tr.ServerOptions()...)
	healthpb.RegisterHealthServer(srv, slowHealth{delay: delay})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return srv, tr, healthpb.NewHealthClient(conn)
}

func TestStop(t *testing.T) {
	for _, tc := range []struct {
		name      string
		delay     time.Duration
		grace     time.Duration
		wantOK    bool
		wantCut   int
		maxStopIn time.Duration
	}{
		{"finishes within the grace", 300 * time.Millisecond, 5 * time.Second, true, 0, 3 * time.Second},
		{"cut off after the grace", 5 * time.Second, 300 * time.Millisecond, false, 1, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, tr, client := start(t, tc.delay)
			// A session that never ends must not hold the stop.
			if _, err := client.Watch(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
			result := make(chan error, 1)
			go func() {
				_, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{})
				result <- err
			}()
			for tr.InFlight() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			began := time.Now()
			before := false
			cut := Stop(srv, tr, tc.grace, func() { before = true })
			if took := time.Since(began); took > tc.maxStopIn {
				t.Errorf("Stop took %v", took)
			}
			if cut != tc.wantCut || !before {
				t.Errorf("Stop cut %d calls (want %d), beforeStop ran: %v", cut, tc.wantCut, before)
			}
			if err := <-result; (err == nil) != tc.wantOK {
				t.Errorf("the call in flight ended with %v, want success %v", err, tc.wantOK)
			}
		})
	}
}
