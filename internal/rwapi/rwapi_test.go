package rwapi

import (
	"context"
	"net"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hearth-build/hearth/internal/digest"
	pb "github.com/hearth-build/hearth/internal/rwapi/rwapipb"
	"github.com/hearth-build/hearth/internal/scheduler"
)

func start(t *testing.T, ttl time.Duration) (pb.BotsClient, *scheduler.Scheduler) {
	t.Helper()
	return startHolding(t, ttl, 200*time.Millisecond)
}

// startHolding is start with UpdateBotSession's long poll set to hold.
func startHolding(t *testing.T, ttl, hold time.Duration) (pb.BotsClient, *scheduler.Scheduler) {
	t.Helper()
	sched := scheduler.New(scheduler.Config{})
	t.Cleanup(sched.Close)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterBotsServer(g, New(Config{Scheduler: sched, SessionTTL: ttl, MaxHold: hold}))
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewBotsClient(conn), sched
}

func bot(t *testing.T, c pb.BotsClient, id, os string) *pb.BotSession {
	t.Helper()
	s, err := c.CreateBotSession(context.Background(), &pb.CreateBotSessionRequest{BotSession: &pb.BotSession{
		BotId: id, Status: pb.BotStatus_OK,
		Worker: &pb.Worker{Devices: []*pb.Device{{Handle: id, Properties: []*pb.Device_Property{{Key: "OSFamily", Value: os}}}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func waitExecutors(t *testing.T, sched *scheduler.Scheduler, n int) {
	t.Helper()
	for i := 0; len(sched.Status().Executors) != n; i++ {
		if i > 200 {
			t.Fatalf("want %d executors, have %d", n, len(sched.Status().Executors))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func submit(t *testing.T, sched *scheduler.Scheduler, os string) (*scheduler.Operation, digest.Digest) {
	t.Helper()
	d := digest.Compute(repb.DigestFunction_SHA256, []byte("action "+os+time.Now().String()))
	op, err := sched.Submit(scheduler.Request{ActionDigest: d, Action: &repb.Action{},
		Platform: &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: os}}}})
	if err != nil {
		t.Fatal(err)
	}
	return op, d
}

func update(t *testing.T, c pb.BotsClient, s *pb.BotSession) *pb.BotSession {
	t.Helper()
	r, err := c.UpdateBotSession(context.Background(), &pb.UpdateBotSessionRequest{Name: s.GetName(), BotSession: s})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// pollLease polls until a lease is offered.
func pollLease(t *testing.T, c pb.BotsClient, s *pb.BotSession) *pb.BotSession {
	t.Helper()
	for i := 0; i < 20; i++ {
		s = update(t, c, s)
		if len(s.GetLeases()) > 0 {
			return s
		}
	}
	t.Fatal("no lease offered")
	return nil
}

func TestLeaseLifecycle(t *testing.T) {
	c, sched := start(t, 5*time.Second)
	s := bot(t, c, "bot1", "linux")
	waitExecutors(t, sched, 1)
	op, d := submit(t, sched, "Linux")
	s = pollLease(t, c, s)
	l := s.Leases[0]
	got := &repb.Digest{}
	if l.GetState() != pb.LeaseState_PENDING || l.GetPayload().UnmarshalTo(got) != nil || got.GetHash() != d.Proto().GetHash() {
		t.Fatalf("lease %v, want PENDING with the action digest %s", l, d)
	}
	l.State = pb.LeaseState_ACTIVE
	s = update(t, c, s)
	if s.Leases[0].GetState() != pb.LeaseState_ACTIVE {
		t.Fatalf("accepted lease is %v", s.Leases[0].GetState())
	}
	res, _ := anypb.New(&repb.ActionResult{ExitCode: 3, StdoutRaw: []byte("hi")})
	s.Leases[0].State, s.Leases[0].Result = pb.LeaseState_COMPLETED, res
	s = update(t, c, s)
	if len(s.Leases) != 0 {
		t.Fatalf("completed lease still offered: %v", s.Leases)
	}
	st := waitDone(t, op)
	if st.Response.GetResult().GetExitCode() != 3 || string(st.Response.GetResult().GetStdoutRaw()) != "hi" {
		t.Fatalf("response %v", st.Response)
	}
}

// TestAcceptedLeaseIsAnsweredAtOnce: buildbox-worker starts a job only once
// the update that reports it ACTIVE is answered, so that answer must not
// wait out the long poll (it did: every action started MaxHold late).
func TestAcceptedLeaseIsAnsweredAtOnce(t *testing.T) {
	c, sched := startHolding(t, 5*time.Minute, time.Minute)
	s := bot(t, c, "bot1", "linux")
	waitExecutors(t, sched, 1)
	submit(t, sched, "linux")
	s = pollLease(t, c, s)
	s.Leases[0].State = pb.LeaseState_ACTIVE
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	r, err := c.UpdateBotSession(ctx, &pb.UpdateBotSessionRequest{Name: s.GetName(), BotSession: s})
	if err != nil {
		t.Fatal(err)
	}
	// Held, the call would last until a second before its deadline (19 s).
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the ACTIVE report was answered after %s: held by the long poll", took)
	}
	if r.GetLeases()[0].GetState() != pb.LeaseState_ACTIVE {
		t.Errorf("lease %v, want ACTIVE", r.GetLeases()[0])
	}
}

func waitDone(t *testing.T, op *scheduler.Operation) scheduler.State {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		st, ch := op.Watch()
		if st.Done() {
			return st
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("operation not done: %v", st.Stage)
		}
	}
}

func TestPlatformMismatchGetsNoLease(t *testing.T) {
	c, sched := start(t, 5*time.Second)
	s := bot(t, c, "mac", "macos")
	bot(t, c, "lin", "linux")
	waitExecutors(t, sched, 2)
	submit(t, sched, "linux")
	for i := 0; i < 3; i++ {
		if s = update(t, c, s); len(s.Leases) != 0 {
			t.Fatalf("macos bot was offered a linux action: %v", s.Leases)
		}
	}
}

func TestExpiryRequeuesAndLateCompletionIgnored(t *testing.T) {
	c, sched := start(t, 300*time.Millisecond)
	a := bot(t, c, "a", "linux")
	waitExecutors(t, sched, 1)
	op, _ := submit(t, sched, "linux")
	a = pollLease(t, c, a)
	a.Leases[0].State = pb.LeaseState_ACTIVE
	a = update(t, c, a)
	time.Sleep(time.Second) // a stops polling: its session expires
	b := bot(t, c, "b", "linux")
	b = pollLease(t, c, b)
	res, _ := anypb.New(&repb.ActionResult{ExitCode: 7})
	a.Leases[0].State, a.Leases[0].Result = pb.LeaseState_COMPLETED, res
	if _, err := c.UpdateBotSession(context.Background(), &pb.UpdateBotSessionRequest{Name: a.Name, BotSession: a}); status.Code(err) != codes.NotFound {
		t.Fatalf("late update of an expired session: %v, want NOT_FOUND", err)
	}
	res, _ = anypb.New(&repb.ActionResult{ExitCode: 0})
	b.Leases[0].State, b.Leases[0].Result = pb.LeaseState_COMPLETED, res
	update(t, c, b)
	if st := waitDone(t, op); st.Response.GetResult().GetExitCode() != 0 || st.Response.GetStatus().GetCode() != 0 {
		t.Fatalf("response %v, want the second bot's", st.Response)
	}
}

func TestCancelledOperationCancelsLease(t *testing.T) {
	c, sched := start(t, 5*time.Second)
	s := bot(t, c, "a", "linux")
	waitExecutors(t, sched, 1)
	op, _ := submit(t, sched, "linux")
	s = pollLease(t, c, s)
	s.Leases[0].State = pb.LeaseState_ACTIVE
	update(t, c, s)
	if err := sched.Cancel(op.Name()); err != nil {
		t.Fatal(err)
	}
	s = update(t, c, s)
	if len(s.Leases) != 1 || s.Leases[0].GetState() != pb.LeaseState_CANCELLED {
		t.Fatalf("leases after cancel: %v", s.Leases)
	}
}

func TestBadInput(t *testing.T) {
	c, _ := start(t, 5*time.Second)
	ctx := context.Background()
	s := bot(t, c, "a", "linux")
	for name, req := range map[string]*pb.UpdateBotSessionRequest{
		"no name":       {BotSession: s},
		"no session":    {Name: s.Name},
		"name mismatch": {Name: s.Name, BotSession: &pb.BotSession{Name: "x", BotId: "a"}},
		"bad lease":     {Name: s.Name, BotSession: &pb.BotSession{Name: s.Name, BotId: "a", Leases: []*pb.Lease{{}}}},
		"other bot":     {Name: s.Name, BotSession: &pb.BotSession{Name: s.Name, BotId: "b"}},
	} {
		if _, err := c.UpdateBotSession(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want INVALID_ARGUMENT", name, err)
		}
	}
	if _, err := c.CreateBotSession(ctx, &pb.CreateBotSessionRequest{BotSession: &pb.BotSession{}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no bot_id: %v", err)
	}
	if _, err := c.UpdateBotSession(ctx, &pb.UpdateBotSessionRequest{Name: "botSessions/nope", BotSession: &pb.BotSession{Name: "botSessions/nope", BotId: "a"}}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown session: %v", err)
	}
}
