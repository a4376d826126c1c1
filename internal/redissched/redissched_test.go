package redissched

import (
	"context"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/hearth-build/hearth/internal/redistest"
)

// replica is one State with its own Redis client, as one `hearth server`
// replica would have.
func replica(t testing.TB, srv *redistest.Server, opts Options) *State {
	t.Helper()
	return New(srv.Client(t), opts)
}

func resp(exit int32) *repb.ExecuteResponse {
	return &repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: exit}}
}

func TestSubmitAtAWaitAtBClaimAtB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := redistest.Start(t)
	a, b := replica(t, srv, Options{}), replica(t, srv, Options{})
	name, joined, err := a.Submit(ctx, "m1", "linux", 0, []byte("req1"))
	if err != nil || joined {
		t.Fatalf("Submit: %v joined=%v", err, joined)
	}
	// Merge across replicas: the same merge key at B joins A's operation.
	name2, joined, err := b.Submit(ctx, "m1", "linux", 0, []byte("req1"))
	if err != nil || !joined || name2 != name {
		t.Fatalf("Submit at B: %q joined=%v %v, want to join %q", name2, joined, err, name)
	}
	waited := make(chan Snapshot, 1)
	go func() {
		s, err := b.Wait(ctx, name, 10*time.Second) // long poll: pub/sub must deliver
		if err != nil {
			t.Error(err)
		}
		waited <- s
	}()
	l, err := b.Claim(ctx, "linux")
	if err != nil || l == nil || l.Name != name || string(l.Request) != "req1" || l.Attempts != 1 {
		t.Fatalf("Claim at B: %+v %v", l, err)
	}
	if l2, err := a.Claim(ctx, "linux"); err != nil || l2 != nil {
		t.Fatalf("second Claim: %+v %v, want an empty queue", l2, err)
	}
	if s, _ := a.Get(ctx, name); s.Stage != repb.ExecutionStage_EXECUTING {
		t.Fatalf("stage at A after the claim: %v", s.Stage)
	}
	ok, err := b.Complete(ctx, name, l.Token, resp(7))
	if err != nil || !ok {
		t.Fatalf("Complete: %v %v", ok, err)
	}
	if ok, _ := a.Complete(ctx, name, l.Token, resp(8)); ok {
		t.Fatal("completed twice")
	}
	select {
	case s := <-waited:
		if s.Response.GetResult().GetExitCode() != 7 {
			t.Fatalf("waiter got %v", s.Response)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter at B did not hear of the completion within 5s (pub/sub)")
	}
	// Completed: the merge key is free again, a new submission is new.
	if n3, joined, _ := a.Submit(ctx, "m1", "linux", 0, []byte("req1")); joined || n3 == name {
		t.Fatalf("Submit after completion joined %q", n3)
	}
}

func TestPriorityThenArrival(t *testing.T) {
	ctx := context.Background()
	s := replica(t, redistest.Start(t), Options{})
	var names []string
	for _, p := range []int32{5, 0, 5, -1} {
		n, _, err := s.Submit(ctx, "", "x", p, nil)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	want := []string{names[3], names[1], names[0], names[2]}
	for i, w := range want {
		l, err := s.Claim(ctx, "x")
		if err != nil || l == nil || l.Name != w {
			t.Fatalf("claim %d: %+v %v, want %s", i, l, err, w)
		}
	}
}

func TestLeaseExpiryRequeuesAndLateResultIgnored(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	opts := Options{Lease: 200 * time.Millisecond, MaxAttempts: 2}
	a, b := replica(t, srv, opts), replica(t, srv, opts)
	name, _, _ := a.Submit(ctx, "m", "x", 0, []byte("r"))
	l1, err := a.Claim(ctx, "x")
	if err != nil || l1 == nil {
		t.Fatal(l1, err)
	}
	// Renewal keeps it.
	if ok, err := a.Renew(ctx, l1); !ok || err != nil {
		t.Fatalf("Renew: %v %v", ok, err)
	}
	if rq, _, _ := b.Reap(ctx, time.Now()); rq != 0 {
		t.Fatalf("reaped a live lease")
	}
	// Replica A dies: no renewal; B's reaper re-queues after the deadline.
	rq, _, err := b.Reap(ctx, time.Now().Add(time.Second))
	if err != nil || rq != 1 {
		t.Fatalf("Reap: %d %v, want 1 re-queued", rq, err)
	}
	if rq, _, _ := a.Reap(ctx, time.Now().Add(time.Second)); rq != 0 {
		t.Fatal("reaping twice re-queued twice")
	}
	if ok, _ := a.Renew(ctx, l1); ok {
		t.Fatal("the lapsed lease renewed")
	}
	l2, err := b.Claim(ctx, "x")
	if err != nil || l2 == nil || l2.Name != name || l2.Attempts != 2 {
		t.Fatalf("re-claim: %+v %v", l2, err)
	}
	if ok, _ := a.Complete(ctx, name, l1.Token, resp(1)); ok {
		t.Fatal("the abandoned attempt's late result was accepted")
	}
	// Out of attempts: the next lapse fails the operation with UNAVAILABLE.
	if _, failed, _ := b.Reap(ctx, time.Now().Add(time.Second)); failed != 1 {
		t.Fatalf("failed = %d, want 1", failed)
	}
	s, err := a.Get(ctx, name)
	if err != nil || s.Stage != repb.ExecutionStage_COMPLETED || s.Response.GetStatus().GetCode() != int32(code.Code_UNAVAILABLE) {
		t.Fatalf("after the last lapse: %+v %v", s, err)
	}
	if ok, _ := b.Complete(ctx, name, l2.Token, resp(0)); ok {
		t.Fatal("completed twice")
	}
}

func TestConcurrentClaimsTakeEachOnce(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a, b := replica(t, srv, Options{}), replica(t, srv, Options{})
	const n = 200
	for i := 0; i < n; i++ {
		if _, _, err := a.Submit(ctx, "", "x", 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for _, s := range []*State{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				l, err := s.Claim(ctx, "x")
				if err != nil {
					t.Error(err)
					return
				}
				if l == nil {
					return
				}
				mu.Lock()
				seen[l.Name]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		t.Fatalf("claimed %d distinct operations, want %d", len(seen), n)
	}
	for name, c := range seen {
		if c != 1 {
			t.Fatalf("%s claimed %d times", name, c)
		}
	}
}

func TestRedisRestartOperationsResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := redistest.Start(t)
	a := replica(t, srv, Options{})
	queued, _, _ := a.Submit(ctx, "q", "x", 0, []byte("q"))
	running, _, _ := a.Submit(ctx, "r", "y", 0, []byte("r"))
	l, err := a.Claim(ctx, "y")
	if err != nil || l == nil {
		t.Fatal(l, err)
	}
	srv.Restart()
	var got *Lease
	for deadline := time.Now().Add(10 * time.Second); ; {
		got, err = a.Claim(ctx, "x")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || got == nil || got.Name != queued {
		t.Fatalf("queued operation after restart: %+v %v", got, err)
	}
	if ok, err := a.Renew(ctx, l); !ok || err != nil {
		t.Fatalf("lease after restart: %v %v", ok, err)
	}
	if ok, err := a.Complete(ctx, running, l.Token, resp(0)); !ok || err != nil {
		t.Fatalf("Complete after restart: %v %v", ok, err)
	}
}

func TestUnknownOperation(t *testing.T) {
	s := replica(t, redistest.Start(t), Options{})
	if _, err := s.Get(context.Background(), "nope"); err == nil {
		t.Fatal("Get of an unknown operation succeeded")
	}
	if ok, err := s.Complete(context.Background(), "nope", "", resp(0)); ok || err != nil {
		t.Fatalf("Complete of an unknown operation: %v %v", ok, err)
	}
}

// A recorded operation (a cache hit at one replica) is readable at another,
// completed, for OperationTTL, and nothing can complete or claim it again.
func TestRecordedOperationIsCompletedEverywhere(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a, b := replica(t, srv, Options{OperationTTL: time.Minute}), replica(t, srv, Options{OperationTTL: time.Minute})
	cached := &repb.ExecuteResponse{Result: &repb.ActionResult{ExitCode: 0, StdoutRaw: []byte("hi")}, CachedResult: true}
	if err := a.Record(ctx, "hit-1", []byte("meta"), cached); err != nil {
		t.Fatal(err)
	}
	snap, err := b.Get(ctx, "hit-1")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Stage != repb.ExecutionStage_COMPLETED || !snap.Response.GetCachedResult() || string(snap.Response.GetResult().GetStdoutRaw()) != "hi" || string(snap.Meta) != "meta" {
		t.Errorf("at B: %+v", snap)
	}
	if ttl := srv.Client(t).PTTL(ctx, "{hearth}:s:op:hit-1").Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("TTL %v, want (0, 1m]", ttl)
	}
	if ok, err := b.Complete(ctx, "hit-1", "", resp(9)); ok || err != nil {
		t.Errorf("Complete of a recorded operation: %v %v, want refused", ok, err)
	}
	if snap, _ := b.Wait(ctx, "hit-1", time.Second); !snap.Response.GetCachedResult() {
		t.Errorf("Wait at B: %+v", snap)
	}
}

// Counts sees every replica's queued and leased operations, per shape.
func TestCounts(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a, b := replica(t, srv, Options{}), replica(t, srv, Options{})
	if c, err := b.Counts(ctx); err != nil || len(c.Queued) != 0 || c.Leased != 0 {
		t.Fatalf("empty state: %+v %v", c, err)
	}
	for _, m := range []string{"m1", "m2", "m3"} {
		if _, _, err := a.Submit(ctx, m, "linux", 0, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := a.Submit(ctx, "w1", "windows", 0, []byte("w1")); err != nil {
		t.Fatal(err)
	}
	if l, err := b.Claim(ctx, "linux"); err != nil || l == nil {
		t.Fatalf("Claim: %v %v", l, err)
	}
	c, err := b.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Queued["linux"] != 2 || c.Queued["windows"] != 1 || len(c.Queued) != 2 || c.Leased != 1 {
		t.Errorf("Counts = %+v, want linux 2, windows 1, 1 leased", c)
	}
}

// ClaimWarm leaves an operation of a routing key to a replica that
// advertises a warm worker for it (for the wait), takes the ones behind it,
// and does not defer to its own or to a lapsed advertisement.
func TestClaimWarmDefersToAdvertisedReplica(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a, b := replica(t, srv, Options{}), replica(t, srv, Options{})
	submit := func(merge, route string) string {
		t.Helper()
		name, _, err := a.SubmitOp(ctx, Submission{Merge: merge, Shape: "linux", Request: []byte(merge), Route: route})
		if err != nil {
			t.Fatal(err)
		}
		return name
	}
	k1 := submit("k1", "K")
	plain := submit("plain", "")
	if err := b.AdvertiseWarm(ctx, "b", []string{"K"}, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	l, _, err := a.ClaimWarm(ctx, "linux", "a", nil, time.Second)
	if err != nil || l == nil || l.Name != plain {
		t.Fatalf("A's claim: %+v %v, want %s (K left to b)", l, err, plain)
	}
	l, retry, err := a.ClaimWarm(ctx, "linux", "a", nil, time.Second)
	if err != nil || l != nil || retry <= 0 || retry > time.Second {
		t.Fatalf("A's second claim: %+v retry %s %v, want nothing and a retry within 1s", l, retry, err)
	}
	l, _, err = b.ClaimWarm(ctx, "linux", "b", []string{"K"}, time.Second)
	if err != nil || l == nil || l.Name != k1 {
		t.Fatalf("B's claim: %+v %v, want %s", l, err, k1)
	}
	// Its own advertisement does not hold a replica back.
	k2 := submit("k2", "K2")
	if err := a.AdvertiseWarm(ctx, "a", []string{"K2"}, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if l, _, err := a.ClaimWarm(ctx, "linux", "a", nil, time.Second); err != nil || l == nil || l.Name != k2 {
		t.Fatalf("claim with only its own advertisement: %+v %v, want %s", l, err, k2)
	}
	// Withdrawn, or lapsed, advertisements hold nobody back.
	k3 := submit("k3", "K")
	if err := b.AdvertiseWarm(ctx, "b", nil, []string{"K"}, time.Second); err != nil {
		t.Fatal(err)
	}
	if l, _, err := a.ClaimWarm(ctx, "linux", "a", nil, time.Second); err != nil || l == nil || l.Name != k3 {
		t.Fatalf("claim after b withdrew: %+v %v, want %s", l, err, k3)
	}
	k4 := submit("k4", "K")
	if err := b.AdvertiseWarm(ctx, "b", []string{"K"}, nil, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if l, _, err := a.ClaimWarm(ctx, "linux", "a", nil, time.Second); err != nil || l == nil || l.Name != k4 {
		t.Fatalf("claim after b's advertisement lapsed: %+v %v, want %s", l, err, k4)
	}
	// Plain Claim never defers.
	k5 := submit("k5", "K")
	if err := b.AdvertiseWarm(ctx, "b", []string{"K"}, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if l, err := a.Claim(ctx, "linux"); err != nil || l == nil || l.Name != k5 {
		t.Fatalf("Claim: %+v %v, want %s", l, err, k5)
	}
}

// A replica other than the claimer adopts a running attempt with its token:
// the lease is extended (a reap at the old deadline leaves it), the request
// and attempt count come back, and the adopter's Complete with that token is
// the result. A lost token (wrong, reaped, completed) adopts nothing.
func TestAdoptTakesOverALiveLease(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	opts := Options{Lease: 2 * time.Second}
	a, b := replica(t, srv, opts), replica(t, srv, opts)
	name, _, _ := a.Submit(ctx, "m", "x", 0, []byte("the request"))
	l, err := a.Claim(ctx, "x")
	if err != nil || l == nil {
		t.Fatal(l, err)
	}
	if got, done, err := b.Adopt(ctx, name, "not-the-token", "b"); err != nil || got != nil || done {
		t.Fatalf("Adopt with a wrong token: %+v %v %v", got, done, err)
	}
	if got, done, err := b.Adopt(ctx, "no-such-op", l.Token, "b"); err != nil || got != nil || done {
		t.Fatalf("Adopt of an unknown operation: %+v %v %v", got, done, err)
	}
	got, done, err := b.Adopt(ctx, name, l.Token, "b")
	if err != nil || done || got == nil || got.Name != name || got.Token != l.Token || string(got.Request) != "the request" || got.Attempts != 1 {
		t.Fatalf("Adopt: %+v %v", got, err)
	}
	// A's lease would have lapsed 1.5 s from now; adopted, it lives on.
	if rq, failed, err := b.Reap(ctx, time.Now().Add(opts.Lease-500*time.Millisecond)); err != nil || rq+failed != 0 {
		t.Fatalf("Reap after the adoption: %d %d %v, want nothing reaped", rq, failed, err)
	}
	if ok, err := b.Complete(ctx, name, got.Token, resp(4)); err != nil || !ok {
		t.Fatalf("Complete by the adopter: %v %v", ok, err)
	}
	if got, done, err := b.Adopt(ctx, name, l.Token, "b"); err != nil || got != nil || !done {
		t.Fatalf("Adopt of a completed operation: %+v done=%v %v", got, done, err)
	}
	if s, _ := a.Get(ctx, name); s.Response.GetResult().GetExitCode() != 4 || s.Attempts != 1 {
		t.Fatalf("after the adopter's completion: %+v", s)
	}
	// Reaped and re-queued: the old token adopts nothing.
	name2, _, _ := a.Submit(ctx, "m2", "x", 0, []byte("r2"))
	l2, _ := a.Claim(ctx, "x")
	if rq, _, _ := b.Reap(ctx, time.Now().Add(time.Minute)); rq != 1 {
		t.Fatalf("reaped %d, want 1", rq)
	}
	if got, done, err := b.Adopt(ctx, name2, l2.Token, "b"); err != nil || got != nil || done {
		t.Fatalf("Adopt of a re-queued operation: %+v %v %v", got, done, err)
	}
}

// Once B adopted A's lease, A (which notices its executor gone only now)
// cannot release it; B can, and then the operation is queued again.
func TestAdoptedLeaseReleasedByAdopterOnly(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a, b := replica(t, srv, Options{}), replica(t, srv, Options{})
	name, _, _ := a.Submit(ctx, "m", "x", 0, []byte("r"))
	claimed, err := a.Claim(ctx, "x")
	if err != nil || claimed == nil {
		t.Fatal(claimed, err)
	}
	adopted, _, err := b.Adopt(ctx, name, claimed.Token, "replica-b")
	if err != nil || adopted == nil || adopted.Adopter != "replica-b" {
		t.Fatalf("Adopt: %+v %v", adopted, err)
	}
	if ok, err := a.Release(ctx, claimed); err != nil || ok {
		t.Fatalf("the claimer released an adopted lease: %v %v", ok, err)
	}
	if s, _ := a.Get(ctx, name); s.Stage != repb.ExecutionStage_EXECUTING {
		t.Fatalf("stage after the claimer's release: %v", s.Stage)
	}
	if ok, err := b.Release(ctx, adopted); err != nil || !ok {
		t.Fatalf("the adopter's release: %v %v", ok, err)
	}
	again, err := a.Claim(ctx, "x")
	if err != nil || again == nil || again.Name != name || again.Attempts != 2 {
		t.Fatalf("claim after the adopter's release: %+v %v", again, err)
	}
	// A fresh claim is the claimer's own again.
	if ok, err := a.Release(ctx, again); err != nil || !ok {
		t.Fatalf("release of the new claim: %v %v", ok, err)
	}
}

// A claimer out of attempts gives up only an attempt no other replica
// adopted: once B adopted it, A's GiveUp is refused and B's result stands;
// an attempt nobody adopted is failed by its claimer.
func TestGiveUpRefusedOnceAdopted(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a, b := replica(t, srv, Options{}), replica(t, srv, Options{})
	failure := &repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_UNAVAILABLE), Message: "executor went away"}}

	name, _, _ := a.Submit(ctx, "m", "x", 0, []byte("r"))
	claimed, err := a.Claim(ctx, "x")
	if err != nil || claimed == nil {
		t.Fatal(claimed, err)
	}
	adopted, _, err := b.Adopt(ctx, name, claimed.Token, "replica-b")
	if err != nil || adopted == nil {
		t.Fatalf("Adopt: %+v %v", adopted, err)
	}
	if ok, err := a.GiveUp(ctx, claimed, failure); err != nil || ok {
		t.Fatalf("the claimer gave up an adopted attempt: %v %v", ok, err)
	}
	if ok, err := b.Complete(ctx, name, adopted.Token, resp(7)); err != nil || !ok {
		t.Fatalf("the adopter's result: %v %v", ok, err)
	}
	if s, _ := a.Get(ctx, name); s.Response.GetResult().GetExitCode() != 7 || s.Response.GetStatus().GetCode() != 0 {
		t.Fatalf("after the adopter's result: %+v", s.Response)
	}

	name2, _, _ := a.Submit(ctx, "m2", "x", 0, []byte("r2"))
	claimed2, _ := a.Claim(ctx, "x")
	if ok, err := a.GiveUp(ctx, claimed2, failure); err != nil || !ok {
		t.Fatalf("the claimer's give-up of its own attempt: %v %v", ok, err)
	}
	if s, _ := b.Get(ctx, name2); s.Stage != repb.ExecutionStage_COMPLETED || s.Response.GetStatus().GetCode() != int32(code.Code_UNAVAILABLE) {
		t.Fatalf("after the give-up: %v %+v", s.Stage, s.Response)
	}
}
