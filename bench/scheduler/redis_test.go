package scheduler

import (
	"context"
	"slices"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/redistest"
)

// BenchmarkRedisOperationRoundTrip measures what the Redis scheduler state
// adds to one Execute: Submit, Claim, Complete and the waiter's final Get,
// one after the other on one loopback redis-server (p50 and p99 reported as
// metrics). Compare with BenchmarkOneAction, the whole in-memory path.
func BenchmarkRedisOperationRoundTrip(b *testing.B) {
	ctx := context.Background()
	s := redissched.New(redistest.Start(b).Client(b), redissched.Options{})
	done := &repb.ExecuteResponse{Result: &repb.ActionResult{}}
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		name, _, err := s.Submit(ctx, "", "x", 0, []byte("request"))
		if err != nil {
			b.Fatal(err)
		}
		l, err := s.Claim(ctx, "x")
		if err != nil || l == nil {
			b.Fatalf("Claim right after Submit: lease %v, %v", l, err)
		}
		if ok, err := s.Complete(ctx, name, l.Token, done); !ok || err != nil {
			b.Fatalf("Complete with the lease's token: %v, %v", ok, err)
		}
		if _, err := s.Get(ctx, name); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
