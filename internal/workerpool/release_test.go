package workerpool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/workerproto"
)

// An Acquire that finds the key's worker being released waits for it
// (bounded) instead of starting another process or refusing; what the
// release decides (recycle, discard) still holds.
func TestAcquireWaitsForAWorkerBeingReleased(t *testing.T) {
	const delay = 150 * time.Millisecond
	tests := []struct {
		name    string
		opts    Options
		request []string
		end     func(l *Lease) // ends the first lease, after delay
		wait    time.Duration  // Options.ReleaseWait
		// what the second Acquire gets
		sameProcess bool
		wantErr     error
		waited      bool // it returned only after the release (or the bound)
	}{
		{name: "one worker per key: waits, same process", opts: Options{MaxWorkersPerKey: 1}, end: (*Lease).Release, sameProcess: true, waited: true},
		{name: "room for another: waits, starts none", opts: Options{MaxWorkersPerKey: 2}, end: (*Lease).Release, sameProcess: true, waited: true},
		{name: "discarded while being released: new process", opts: Options{MaxWorkersPerKey: 1}, end: (*Lease).Discard, waited: true},
		{name: "over its memory limit: recycled, new process", opts: Options{MaxWorkersPerKey: 1, MemoryLimitBytes: 40 << 20},
			request: []string{"--grow=64M"}, end: (*Lease).Release, waited: true},
		{name: "at max_invocations: no wait, no capacity", opts: Options{MaxWorkersPerKey: 1, MaxInvocations: 1}, end: (*Lease).Release, wantErr: ErrNoCapacity},
		{name: "release slower than the bound, one worker: no capacity", opts: Options{MaxWorkersPerKey: 1, ReleaseWait: 50 * time.Millisecond},
			end: (*Lease).Release, wantErr: ErrNoCapacity, waited: true, wait: 50 * time.Millisecond},
		{name: "release slower than the bound, room: new process", opts: Options{MaxWorkersPerKey: 2, ReleaseWait: 50 * time.Millisecond},
			end: (*Lease).Release, waited: true, wait: 50 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, tc.opts)
			spec := workerSpec(t, "k", workerproto.Proto)
			first := acquire(t, p, spec)
			do(t, first, append([]string{"--say=1"}, tc.request...)...)
			first.Releasing()
			if tc.opts.MaxInvocations == 0 && len(p.WarmKeys()) != 1 {
				t.Errorf("WarmKeys = %v while the only worker is being released, want [k]", p.WarmKeys())
			}
			slow := delay
			if tc.wait > 0 {
				slow = 10 * tc.wait
			}
			ended := make(chan struct{})
			go func() { time.Sleep(slow); tc.end(first); close(ended) }()
			defer func() { <-ended }()

			start := time.Now()
			second, err := p.Acquire(context.Background(), spec)
			took := time.Since(start)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("second Acquire = %v, want %v", err, tc.wantErr)
			}
			minWait := slow
			if tc.wait > 0 {
				minWait = tc.wait
			}
			if tc.waited && took < minWait-10*time.Millisecond {
				t.Errorf("second Acquire returned after %v, before the release (%v)", took, minWait)
			}
			if !tc.waited && took > delay/2 {
				t.Errorf("second Acquire took %v, want no wait", took)
			}
			if err != nil {
				return
			}
			defer second.Release()
			do(t, second, "--say=2")
			if same := second.PID() == first.PID(); same != tc.sameProcess {
				t.Errorf("second request on the first's process: %v, want %v", same, tc.sameProcess)
			}
			ks := keyStats(p, "k")
			if wantCold := int64(2 - btoi(tc.sameProcess)); ks.ColdStarts != wantCold || ks.NoCapacity != 0 {
				t.Errorf("stats %+v: want %d cold starts, no refusal", ks, wantCold)
			}
			if ks.ReleaseWaits != 1 {
				t.Errorf("release_waits = %d, want 1", ks.ReleaseWaits)
			}
		})
	}
}

// A cancelled Acquire stops waiting for a worker being released.
func TestAcquireWaitingForAReleaseIsCancellable(t *testing.T) {
	p := newPool(t, Options{MaxWorkersPerKey: 1})
	spec := workerSpec(t, "k", workerproto.Proto)
	first := acquire(t, p, spec)
	defer first.Release()
	do(t, first, "--say=1")
	first.Releasing()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := p.Acquire(ctx, spec); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire = %v, want the context's error", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("the cancelled Acquire returned after %v", took)
	}
	if got := p.WarmCapacity()["k"]; got != 1 {
		t.Errorf("WarmCapacity = %d for the worker being released, want 1", got)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
