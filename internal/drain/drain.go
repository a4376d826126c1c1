// Package drain owns the graceful stop of a gRPC server: it counts the RPCs
// in flight, leaving out long-lived sessions that would otherwise hold a
// graceful stop for its whole grace (executor streams), and stops the server
// once the counted ones are done or the grace is over.
package drain

import (
	"context"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// Tracker counts in-flight RPCs.
type Tracker struct {
	skip []string

	mu   sync.Mutex
	n    int
	zero chan struct{} // closed while n == 0
}

// NewTracker leaves out RPCs whose full method name starts with any of
// skip (e.g. "/hearth.workerapi.v1.Scheduler/").
func NewTracker(skip ...string) *Tracker {
	t := &Tracker{skip: skip, zero: make(chan struct{})}
	close(t.zero)
	return t
}

func (t *Tracker) counted(method string) bool {
	for _, s := range t.skip {
		if strings.HasPrefix(method, s) {
			return false
		}
	}
	return true
}

func (t *Tracker) enter() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n == 0 {
		t.zero = make(chan struct{})
	}
	t.n++
}

func (t *Tracker) leave() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 {
		close(t.zero)
	}
}

// InFlight returns how many counted RPCs are running.
func (t *Tracker) InFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.n
}

// ServerOptions are the interceptors that count.
func (t *Tracker) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if !t.counted(info.FullMethod) {
				return h(ctx, req)
			}
			t.enter()
			defer t.leave()
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if !t.counted(info.FullMethod) {
				return h(srv, ss)
			}
			t.enter()
			defer t.leave()
			return h(srv, ss)
		}),
	}
}

// idle returns a channel closed once no counted RPC runs.
func (t *Tracker) idle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.zero
}

// Stop stops srv gracefully: it refuses new connections and RPCs at once,
// lets the counted RPCs in flight finish for up to grace, then closes
// everything still open (the skipped sessions, and whatever outlived the
// grace). beforeStop, if set, runs just before the close. It reports how many
// counted RPCs were cut off.
func Stop(srv *grpc.Server, t *Tracker, grace time.Duration, beforeStop func()) int {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	timer := time.NewTimer(grace)
	defer timer.Stop()
	stop := func() int {
		cut := t.InFlight()
		if beforeStop != nil {
			beforeStop()
		}
		srv.Stop()
		<-done
		return cut
	}
	for {
		select {
		case <-done:
			if beforeStop != nil {
				beforeStop()
			}
			return 0
		case <-timer.C:
			return stop()
		case <-t.idle():
		}
		// Wait for a quiet moment rather than the first: a unary call may
		// follow a finished stream on the same connection.
		select {
		case <-done:
			if beforeStop != nil {
				beforeStop()
			}
			return 0
		case <-timer.C:
			return stop()
		case <-time.After(50 * time.Millisecond):
		}
		if t.InFlight() == 0 {
			return stop()
		}
	}
}
