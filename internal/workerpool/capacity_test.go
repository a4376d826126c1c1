package workerpool

import (
	"maps"
	"testing"

	"github.com/hearth-build/hearth/internal/workerproto"
)

// WarmCapacity counts idle workers per key, not just whether one exists: the
// scheduler spreads a burst by it.
func TestWarmCapacityCountsIdleWorkers(t *testing.T) {
	p := newPool(t, Options{MaxWorkersPerKey: 3})
	spec := workerSpec(t, "k", workerproto.Proto)
	if got := p.WarmCapacity(); len(got) != 0 {
		t.Fatalf("empty pool: %v", got)
	}
	l1, l2 := acquire(t, p, spec), acquire(t, p, spec)
	if got := p.WarmCapacity(); len(got) != 0 {
		t.Fatalf("every worker busy: %v", got)
	}
	l1.Release()
	if got := p.WarmCapacity(); !maps.Equal(got, map[string]int{"k": 1}) {
		t.Fatalf("one idle: %v", got)
	}
	l2.Release()
	if got := p.WarmCapacity(); !maps.Equal(got, map[string]int{"k": 2}) {
		t.Fatalf("two idle: %v", got)
	}
}
