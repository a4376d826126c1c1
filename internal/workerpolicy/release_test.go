package workerpolicy

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// A lease ended in the background holds its worker until the release ends;
// Settle and Close wait for it.
func TestReleaseLater(t *testing.T) {
	w := newWorkers(t, Options{})
	spec := &workerpool.Spec{Key: "k", Argv: []string{"/bin/sh", "-c", "exec sleep 60"}, Protocol: workerproto.Proto}
	lease, err := w.pool.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	var ended atomic.Bool
	w.ReleaseLater(lease, func() {
		time.Sleep(100 * time.Millisecond)
		ended.Store(true)
		lease.Release()
	})
	if st := w.pool.Stats().Total; st.InFlight != 1 {
		t.Fatalf("in flight while being released: %d, want 1", st.InFlight)
	}
	w.Settle()
	if !ended.Load() {
		t.Fatal("Settle returned before the release ended")
	}
	if st := w.pool.Stats().Total; st.InFlight != 0 || st.Idle != 1 {
		t.Fatalf("after the release: %+v, want one idle worker", st)
	}

	lease, err = w.pool.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	ended.Store(false)
	w.ReleaseLater(lease, func() {
		time.Sleep(100 * time.Millisecond)
		ended.Store(true)
		lease.Release()
	})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !ended.Load() {
		t.Fatal("Close returned before the release ended")
	}
}
