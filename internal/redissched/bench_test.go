package redissched

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/redistest"
)

// BenchmarkOperationRoundTrip measures what the Redis state adds to one
// Execute: Submit, Claim, Complete and the waiter's final Get, one after the
// other on one loopback Redis (p50 and p99 reported as metrics).
func BenchmarkOperationRoundTrip(b *testing.B) {
	ctx := context.Background()
	s := replica(b, redistest.Start(b), Options{})
	lat := make([]time.Duration, 0, b.N)
	r := resp(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		name, _, err := s.Submit(ctx, "", "x", 0, []byte("request"))
		if err != nil {
			b.Fatal(err)
		}
		l, err := s.Claim(ctx, "x")
		if err != nil || l == nil {
			b.Fatal(l, err)
		}
		if ok, err := s.Complete(ctx, name, l.Token, r); !ok || err != nil {
			b.Fatal(ok, err)
		}
		if _, err := s.Get(ctx, name); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
