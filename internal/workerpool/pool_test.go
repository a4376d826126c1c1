package workerpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/sandbox"
	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

var protocols = []workerproto.Protocol{workerproto.Proto, workerproto.JSON}

func TestWorkersAreReusedWithinAKeyOnly(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto.String(), func(t *testing.T) {
			p := newPool(t, Options{MaxWorkersPerKey: 2})
			a, b := workerSpec(t, "a", proto), workerSpec(t, "b", proto, "--distinct")

			l1 := acquire(t, p, a)
			if l1.Warm() || l1.Invocation() != 1 {
				t.Errorf("first lease: warm=%v invocation=%d, want cold and 1", l1.Warm(), l1.Invocation())
			}
			if got := do(t, l1, "--counter", "--say=hello").GetOutput(); got != "1\nhello\n" {
				t.Errorf("first output %q", got)
			}
			l1.Release()
			if got := p.WarmKeys(); !slices.Equal(got, []string{"a"}) {
				t.Errorf("WarmKeys = %v, want [a]", got)
			}

			l2 := acquire(t, p, a)
			if l2.PID() != l1.PID() || !l2.Warm() || l2.Invocation() != 2 {
				t.Errorf("second lease: pid %d (first %d) warm=%v invocation=%d, want the same process, warm, 2",
					l2.PID(), l1.PID(), l2.Warm(), l2.Invocation())
			}
			// The process keeps its state: this is its second request.
			if got := do(t, l2, "--counter").GetOutput(); got != "2\n" {
				t.Errorf("second output %q, want 2", got)
			}
			l2.Release()

			pidB := roundTrip(t, p, b, "--say=x")
			if pidB == l1.PID() {
				t.Errorf("key b was served by key a's process %d", pidB)
			}
			ks := keyStats(p, "a")
			if ks.WarmHits != 1 || ks.ColdStarts != 1 || ks.Idle != 1 || ks.Protocol != proto.String() {
				t.Errorf("key a stats = %+v, want 1 warm hit, 1 cold start, 1 idle", ks)
			}
			if total := p.Stats().Total; total.ColdStarts != 2 || total.Idle != 2 {
				t.Errorf("total stats = %+v, want 2 cold starts, 2 idle", total)
			}
		})
	}
}

func TestNonZeroExitCodeIsNotAFailure(t *testing.T) {
	p := newPool(t, Options{})
	spec := workerSpec(t, "k", workerproto.Proto)
	l := acquire(t, p, spec)
	resp := do(t, l, "--say=compile error", "--exit=1")
	l.Release()
	if resp.GetExitCode() != 1 || !strings.Contains(resp.GetOutput(), "compile error") {
		t.Fatalf("response = %v, want exit 1 with the output", resp)
	}
	if pid := roundTrip(t, p, spec); pid != l.PID() {
		t.Errorf("after exit code 1 the next request ran on pid %d, want the same process %d", pid, l.PID())
	}
	if r := keyStats(p, "k").Recycles; len(r) != 0 {
		t.Errorf("recycles = %v, want none", r)
	}
}

func TestBrokenWorkersAreDiscarded(t *testing.T) {
	tests := []struct {
		name    string
		proto   workerproto.Protocol
		startup []string
		args    []string
		want    string // in the error
	}{
		{"crash", workerproto.Proto, nil, []string{"--crash"}, "exit status 3"},
		{"garbage proto", workerproto.Proto, nil, []string{"--garbage"}, "malformed"},
		{"garbage json", workerproto.JSON, nil, []string{"--garbage"}, "not a work response"},
		{"closed stdout", workerproto.Proto, nil, []string{"--close-stdout", "--say=lost"}, "closed its stdout"},
		{"startup banner proto", workerproto.Proto, []string{"--startup-banner"}, []string{"--say=x"}, "malformed"},
		{"startup banner json", workerproto.JSON, []string{"--startup-banner"}, []string{"--say=x"}, "startup banner"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, Options{})
			spec := workerSpec(t, "k", tc.proto, tc.startup...)
			l := acquire(t, p, spec)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := l.Do(ctx, &pb.WorkRequest{Arguments: tc.args})
			l.Release()
			if !errors.Is(err, ErrWorkerFailed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Do = %v, want ErrWorkerFailed mentioning %q", err, tc.want)
			}
			waitGone(t, l.PID())
			if got := keyStats(p, "k").Recycles[ReasonFailure]; got != 1 {
				t.Errorf("failure recycles = %d, want 1", got)
			}
			l2 := acquire(t, p, spec)
			defer l2.Release()
			if l2.PID() == l.PID() || l2.Warm() {
				t.Errorf("after the failure Acquire gave pid %d warm=%v, want a new process", l2.PID(), l2.Warm())
			}
		})
	}
}

func TestMultiplex(t *testing.T) {
	t.Run("sandboxing: requests overlap on one process", func(t *testing.T) {
		p := newPool(t, Options{MaxWorkersPerKey: 1})
		spec := workerSpec(t, "k", workerproto.Proto, "--multiplex")
		spec.Multiplex, spec.Sandboxing = true, true
		leases := []*Lease{acquire(t, p, spec), acquire(t, p, spec)}
		if leases[0].PID() != leases[1].PID() {
			t.Fatalf("two multiplex leases on pids %d and %d, want one process", leases[0].PID(), leases[1].PID())
		}
		if leases[0].RequestID() == 0 || leases[0].RequestID() == leases[1].RequestID() ||
			leases[0].SandboxDir() == "" || leases[0].Dir() == leases[1].Dir() {
			t.Fatalf("leases share request id %d/%d or dir %s/%s", leases[0].RequestID(), leases[1].RequestID(),
				leases[0].Dir(), leases[1].Dir())
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i, l := range leases {
			wg.Go(func() {
				resp := do(t, l, "--sleep=600ms", "--out=result.txt", "--content=request "+string(rune('A'+i)))
				if resp.GetRequestId() != l.RequestID() {
					t.Errorf("response for request %d carries request_id %d", l.RequestID(), resp.GetRequestId())
				}
			})
		}
		wg.Wait()
		if took := time.Since(start); took > 1100*time.Millisecond {
			t.Errorf("two 600ms requests took %v: they did not overlap", took)
		}
		for i, l := range leases {
			data, err := os.ReadFile(filepath.Join(l.Dir(), "result.txt"))
			if want := "request " + string(rune('A'+i)); err != nil || string(data) != want {
				t.Errorf("lease %d: result %q, %v; want %q in its own sandbox dir", i, data, err, want)
			}
			l.Release()
			if _, err := os.Stat(l.Dir()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("sandbox dir %s survived Release: %v", l.Dir(), err)
			}
		}
	})
	t.Run("work dir: requests overlap in the client's directory", func(t *testing.T) {
		p := newPool(t, Options{MaxWorkersPerKey: 1})
		workDir := t.TempDir()
		spec := workerSpec(t, "k", workerproto.Proto, "--multiplex")
		spec.Multiplex, spec.WorkDir = true, workDir
		leases := []*Lease{acquire(t, p, spec), acquire(t, p, spec)}
		if leases[0].PID() != leases[1].PID() || leases[0].SandboxDir() != "" || leases[0].Dir() != workDir {
			t.Fatalf("leases on pids %d/%d, sandbox dir %q, dir %s; want one process in %s without sandbox dirs",
				leases[0].PID(), leases[1].PID(), leases[0].SandboxDir(), leases[0].Dir(), workDir)
		}
		var wg sync.WaitGroup
		for i, l := range leases {
			wg.Go(func() {
				defer l.Release()
				name := fmt.Sprintf("out%d.txt", i)
				do(t, l, "--sleep=300ms", "--out="+name, "--content=request "+name)
			})
		}
		wg.Wait()
		for i := range leases {
			name := fmt.Sprintf("out%d.txt", i)
			if data, err := os.ReadFile(filepath.Join(workDir, name)); err != nil || string(data) != "request "+name {
				t.Errorf("%s in the work dir: %q, %v", name, data, err)
			}
		}
	})
	t.Run("without sandboxing: one request at a time", func(t *testing.T) {
		p := newPool(t, Options{MaxWorkersPerKey: 1})
		spec := workerSpec(t, "k", workerproto.JSON, "--multiplex")
		spec.Multiplex = true
		l := acquire(t, p, spec)
		defer l.Release()
		if l.RequestID() == 0 || l.SandboxDir() != "" {
			t.Errorf("request id %d, sandbox dir %q; want non-zero and none", l.RequestID(), l.SandboxDir())
		}
		if _, err := p.Acquire(context.Background(), spec); !errors.Is(err, ErrNoCapacity) {
			t.Fatalf("second Acquire = %v, want ErrNoCapacity: the workspace is shared", err)
		}
		if got := do(t, l, "--say=ok").GetOutput(); got != "ok\n" {
			t.Errorf("output %q", got)
		}
	})
}

func TestBusyKeyNeverQueues(t *testing.T) {
	p := newPool(t, Options{MaxWorkersPerKey: 2})
	spec := workerSpec(t, "k", workerproto.Proto)
	l1, l2 := acquire(t, p, spec), acquire(t, p, spec)
	defer l1.Release()
	defer l2.Release()
	if l1.PID() == l2.PID() {
		t.Fatalf("two singleplex leases on one process %d", l1.PID())
	}
	start := time.Now()
	_, err := p.Acquire(context.Background(), spec)
	if !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("third Acquire = %v, want ErrNoCapacity", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("ErrNoCapacity took %v, want immediate", took)
	}
	if ks := keyStats(p, "k"); ks.NoCapacity != 1 || ks.Busy != 2 || ks.InFlight != 2 {
		t.Errorf("stats = %+v, want 1 refusal and 2 busy", ks)
	}
	if got := p.WarmKeys(); len(got) != 0 {
		t.Errorf("WarmKeys = %v with every worker busy, want none", got)
	}
}

func TestMaxInvocationsRecycles(t *testing.T) {
	p := newPool(t, Options{MaxInvocations: 2})
	spec := workerSpec(t, "k", workerproto.Proto)
	first := roundTrip(t, p, spec, "--say=1")
	if second := roundTrip(t, p, spec, "--say=2"); second != first {
		t.Fatalf("second request on pid %d, want %d", second, first)
	}
	waitGone(t, first)
	if third := roundTrip(t, p, spec, "--say=3"); third == first {
		t.Fatalf("third request on the recycled process %d", first)
	}
	if got := keyStats(p, "k").Recycles[ReasonMaxInvocations]; got != 1 {
		t.Errorf("max_invocations recycles = %d, want 1", got)
	}
}

func TestIdleTimeoutStopsWorkers(t *testing.T) {
	p := newPool(t, Options{IdleTimeout: 200 * time.Millisecond, SweepInterval: 20 * time.Millisecond})
	spec := workerSpec(t, "k", workerproto.Proto)
	pid := roundTrip(t, p, spec)
	if !slices.Equal(p.WarmKeys(), []string{"k"}) {
		t.Errorf("WarmKeys right after use = %v, want [k]", p.WarmKeys())
	}
	waitGone(t, pid)
	waitFor(t, "the idle worker to leave the stats", func() bool { return len(p.WarmKeys()) == 0 })
	if got := keyStats(p, "k").Recycles[ReasonIdleTimeout]; got != 1 {
		t.Errorf("idle_timeout recycles = %d, want 1", got)
	}
	if next := roundTrip(t, p, spec); next == pid {
		t.Errorf("served by the stopped process %d", pid)
	}
}

func TestMemoryLimitRecycles(t *testing.T) {
	// Under bwrap the worker is a grandchild of the process the pool
	// started: the limit must apply to the whole tree.
	for _, kind := range []sandbox.Kind{sandbox.None, sandbox.Bwrap} {
		t.Run(kind.String(), func(t *testing.T) {
			spec := workerSpec(t, "k", workerproto.Proto)
			p := newPool(t, Options{MemoryLimitBytes: 40 << 20, Sandbox: kind, Prepare: stageInWorkspace(t, spec)})
			small := roundTrip(t, p, spec, "--say=small")
			if again := roundTrip(t, p, spec, "--grow=64M"); again != small {
				t.Fatalf("a worker under its limit was not reused: %d then %d", small, again)
			}
			waitGone(t, small)
			if got := keyStats(p, "k").Recycles[ReasonMemoryLimit]; got != 1 {
				t.Errorf("memory_limit recycles = %d, want 1", got)
			}
			if next := roundTrip(t, p, spec); next == small {
				t.Errorf("served by the recycled process %d", small)
			}
		})
	}
}

func TestIdleKeysAreForgottenIntoTheTotals(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	p := newPool(t, Options{IdleTimeout: time.Hour, SweepInterval: time.Hour, Now: clock})
	pid := roundTrip(t, p, workerSpec(t, "k", workerproto.Proto))
	p.sweep()
	if ks := keyStats(p, "k"); ks.Idle != 1 {
		t.Fatalf("before the idle timeout: %+v, want 1 idle", ks)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	p.sweep()
	waitGone(t, pid)
	st := p.Stats()
	if len(st.Keys) != 0 || st.Total.ColdStarts != 1 || st.Total.Recycles[ReasonIdleTimeout] != 1 {
		t.Errorf("stats = %+v, want no keys and the totals of the forgotten one", st)
	}
}

func TestMemoryBudgetEvictsOtherKeysIdleWorkers(t *testing.T) {
	p := newPool(t, Options{MaxWorkersPerKey: 2, MaxTotalMemoryBytes: 60 << 20})
	a, b, c := workerSpec(t, "a", workerproto.Proto), workerSpec(t, "b", workerproto.Proto, "--b"),
		workerSpec(t, "c", workerproto.Proto, "--c")
	bigA := roundTrip(t, p, a, "--grow=80M") // idle, over the whole budget
	lb := acquire(t, p, b)
	defer lb.Release()
	waitGone(t, bigA)
	if got := keyStats(p, "a").Recycles[ReasonMemoryBudget]; got != 1 {
		t.Errorf("key a memory_budget recycles = %d, want 1", got)
	}
	// Now the busy worker of b holds the budget: nothing idle can be
	// evicted, so c runs one-shot.
	do(t, lb, "--grow=80M")
	if _, err := p.Acquire(context.Background(), c); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("Acquire(c) over budget with only busy workers = %v, want ErrNoCapacity", err)
	}
	if ks := keyStats(p, "b"); ks.MemoryBytes < 80<<20 {
		t.Errorf("key b memory %d, want the measured 80 MiB+", ks.MemoryBytes)
	}
}

func TestCancellation(t *testing.T) {
	tests := []struct {
		name        string
		cancellable bool
		startup     []string
		wantKept    bool
		maxTook     time.Duration
	}{
		{"honoured", true, []string{"--honor-cancel"}, true, time.Second},
		{"ignored: killed after the grace", true, nil, false, 2 * time.Second},
		{"not cancellable: killed at once", false, []string{"--honor-cancel"}, false, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, Options{CancelGrace: 300 * time.Millisecond})
			spec := workerSpec(t, "k", workerproto.Proto, tc.startup...)
			spec.Cancellable = tc.cancellable
			l := acquire(t, p, spec)
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := l.Do(ctx, &pb.WorkRequest{Arguments: []string{"--sleep=30s"}})
			took := time.Since(start)
			l.Release()
			if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrWorkerFailed) {
				t.Fatalf("Do = %v, want DeadlineExceeded, not ErrWorkerFailed", err)
			}
			if took > tc.maxTook {
				t.Errorf("Do returned after %v, want within %v", took, tc.maxTook)
			}
			if tc.wantKept {
				if !strings.Contains(err.Error(), "was_cancelled=true") {
					t.Errorf("error %q does not report the worker's was_cancelled", err)
				}
				if pid := roundTrip(t, p, spec, "--say=after"); pid != l.PID() {
					t.Errorf("after an honoured cancel the next request ran on %d, want the same process %d", pid, l.PID())
				}
				return
			}
			waitGone(t, l.PID())
			if got := keyStats(p, "k").Recycles[ReasonCancelled]; got != 1 {
				t.Errorf("cancelled recycles = %d, want 1", got)
			}
		})
	}
}

func TestCloseStopsEverything(t *testing.T) {
	p, err := New(Options{Dir: t.TempDir(), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	idle := roundTrip(t, p, workerSpec(t, "idle", workerproto.Proto))
	busy := acquire(t, p, workerSpec(t, "busy", workerproto.JSON, "--busy"))
	done := make(chan error, 1)
	go func() {
		_, err := busy.Do(context.Background(), &pb.WorkRequest{Arguments: []string{"--sleep=30s"}})
		done <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the request reach the worker
	p.Close()
	for _, pid := range []int{idle, busy.PID()} {
		if alive(pid) {
			t.Errorf("process %d survived Close", pid)
		}
	}
	if err := <-done; !errors.Is(err, ErrWorkerFailed) {
		t.Errorf("the in-flight request got %v, want ErrWorkerFailed", err)
	}
	busy.Release()
	if _, err := p.Acquire(context.Background(), workerSpec(t, "idle", workerproto.Proto)); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
	entries, _ := os.ReadDir(p.workspaces)
	if len(entries) != 0 {
		t.Errorf("%d workspaces left after Close", len(entries))
	}
	p.Close() // twice is harmless
}

func TestToolChangeStopsTheOutdatedFamily(t *testing.T) {
	p := newPool(t, Options{})
	v1 := workerSpec(t, "javac-v1", workerproto.Proto, "--v1")
	v2 := workerSpec(t, "javac-v2", workerproto.Proto, "--v2")
	v1.Family, v2.Family = "javac", "javac"
	old := roundTrip(t, p, v1)
	roundTrip(t, p, v2)
	waitGone(t, old)
	if got := keyStats(p, "javac-v1").Recycles[ReasonToolChange]; got != 1 {
		t.Errorf("tool_change recycles = %d, want 1", got)
	}
}

func TestPrewarmKeepsAnIdleWorkerReady(t *testing.T) {
	p := newPool(t, Options{MaxWorkersPerKey: 2, Prewarm: 1})
	spec := workerSpec(t, "k", workerproto.Proto)
	l1 := acquire(t, p, spec)
	defer l1.Release()
	waitFor(t, "a prewarmed worker", func() bool { return keyStats(p, "k").Idle == 1 })
	l2 := acquire(t, p, spec)
	defer l2.Release()
	if l2.PID() == l1.PID() || !l2.Warm() || l2.Invocation() != 1 {
		t.Errorf("second lease pid %d warm=%v invocation %d, want the prewarmed process, warm, first request",
			l2.PID(), l2.Warm(), l2.Invocation())
	}
	do(t, l2, "--say=x")
	if ks := keyStats(p, "k"); ks.Prewarmed != 1 || ks.ColdStarts != 1 || ks.WarmHits != 1 {
		t.Errorf("stats = %+v, want 1 prewarmed, 1 cold start, 1 warm hit", ks)
	}
}

func TestLeaseIsSingleUse(t *testing.T) {
	p := newPool(t, Options{})
	l := acquire(t, p, workerSpec(t, "k", workerproto.Proto))
	do(t, l, "--say=once")
	if _, err := l.Do(context.Background(), &pb.WorkRequest{}); !errors.Is(err, ErrLeaseDone) {
		t.Errorf("second Do = %v, want ErrLeaseDone", err)
	}
	l.Release()
	l.Release()
	if ks := keyStats(p, "k"); ks.Idle != 1 || ks.InFlight != 0 {
		t.Errorf("after a double Release stats = %+v, want 1 idle, 0 in flight", ks)
	}
}

func TestDiscardStopsTheWorker(t *testing.T) {
	p := newPool(t, Options{})
	spec := workerSpec(t, "k", workerproto.Proto)
	l := acquire(t, p, spec)
	do(t, l, "--say=suspicious")
	l.Discard()
	waitGone(t, l.PID())
	if got := keyStats(p, "k").Recycles[ReasonDiscarded]; got != 1 {
		t.Errorf("discarded recycles = %d, want 1", got)
	}
}

func TestPrewarmDoesNotRestartABrokenToolForever(t *testing.T) {
	p := newPool(t, Options{MaxWorkersPerKey: 2, Prewarm: 1})
	// Every process of this key breaks the protocol as soon as it starts.
	spec := workerSpec(t, "k", workerproto.JSON, "--startup-banner")
	l := acquire(t, p, spec)
	if _, err := l.Do(context.Background(), &pb.WorkRequest{}); !errors.Is(err, ErrWorkerFailed) {
		t.Fatalf("Do = %v, want ErrWorkerFailed", err)
	}
	l.Release()
	time.Sleep(300 * time.Millisecond)
	settled := keyStats(p, "k")
	time.Sleep(300 * time.Millisecond)
	now := keyStats(p, "k")
	if settled.Prewarmed > 2 || now.Prewarmed != settled.Prewarmed || now.Starting+now.Idle+now.Busy != 0 {
		t.Errorf("prewarmed %d then %d, live %+v: want at most 2 attempts and then none", settled.Prewarmed, now.Prewarmed, now)
	}
}
