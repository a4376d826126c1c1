// Package rwapi serves the Remote Workers API (google.devtools.remoteworkers
// v1test2 Bots) so that buildbox-worker bots execute Hearth's actions. Each
// bot session is one executor session of internal/scheduler (opened through
// the scheduler's public Connect with an in-process stream): the scheduler's
// assignments become PENDING leases carrying the Action digest, its
// cancellations CANCELLED leases, and a COMPLETED lease's ActionResult
// completes the operation (and is written to the action cache, as Hearth's
// own executors do). A bot that stops calling UpdateBotSession for the
// session's TTL loses the session: the scheduler re-queues its action and
// later calls get NOT_FOUND.
package rwapi

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/digest"
	pb "github.com/hearth-build/hearth/internal/rwapi/rwapipb"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// Config configures the Bots service.
type Config struct {
	Scheduler   *scheduler.Scheduler
	ActionCache actioncache.Store
	// SessionTTL is how long a bot session lives without an
	// UpdateBotSession call (the expire_time the bot is told); 30 s if 0.
	SessionTTL time.Duration
	// MaxHold bounds how long UpdateBotSession waits for a change before
	// answering (long poll); 5 s if 0.
	MaxHold time.Duration
	Logger  *slog.Logger
}

// Server implements the Bots service.
type Server struct {
	pb.UnimplementedBotsServer
	cfg Config

	mu       sync.Mutex
	sessions map[string]*botSession // by session name
	byBot    map[string]*botSession
}

type lease struct {
	id, taskID, instance string
	action               digest.Digest
	doNotCache           bool
	state                pb.LeaseState
}

type botSession struct {
	name, botID string
	worker      *pb.Worker
	in          chan *workerapi.ExecutorMessage
	stop        context.CancelFunc
	lease       *lease
	changed     chan struct{}
	calls       int
	expiry      *time.Timer
	gone        bool
}

// New returns the Bots service.
func New(cfg Config) *Server {
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 30 * time.Second
	}
	if cfg.MaxHold <= 0 {
		// A third of the session's life at most, so that a bot that polls
		// again at once after each answer is never near its expiry.
		cfg.MaxHold = min(5*time.Second, cfg.SessionTTL/3)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg, sessions: map[string]*botSession{}, byBot: map[string]*botSession{}}
}

func invalid(format string, a ...any) error {
	return status.Errorf(codes.InvalidArgument, format, a...)
}

// properties are the bot's platform: its worker and device properties
// (buildbox-worker puts each --platform pair in both, so pairs are kept once).
func properties(w *pb.Worker) []*workerapi.Property {
	var props []*workerapi.Property
	seen := map[[2]string]bool{}
	add := func(k, v string) {
		if !seen[[2]string{k, v}] {
			seen[[2]string{k, v}] = true
			props = append(props, &workerapi.Property{Name: k, Value: v})
		}
	}
	for _, p := range w.GetProperties() {
		add(p.GetKey(), p.GetValue())
	}
	for _, d := range w.GetDevices() {
		for _, p := range d.GetProperties() {
			add(p.GetKey(), p.GetValue())
		}
	}
	return props
}

// CreateBotSession opens a session (and its executor session).
func (s *Server) CreateBotSession(ctx context.Context, req *pb.CreateBotSessionRequest) (*pb.BotSession, error) {
	bs := req.GetBotSession()
	switch {
	case bs == nil:
		return nil, invalid("bot_session is required")
	case bs.GetBotId() == "":
		return nil, invalid("bot_session.bot_id is empty: give the bot a name unique in the farm (buildbox-worker: its positional BOT Id)")
	case bs.GetName() != "":
		return nil, invalid("bot_session.name %q must be empty: the server chooses the session name", bs.GetName())
	case len(bs.GetLeases()) > 0:
		return nil, invalid("bot_session.leases must be empty in CreateBotSession (%d given)", len(bs.GetLeases()))
	}
	for _, p := range properties(bs.GetWorker()) {
		if p.Name == "" {
			return nil, invalid("bot_session.worker has a property with an empty key")
		}
	}
	name := "botSessions/" + uuid.NewString()
	if p := strings.Trim(req.GetParent(), "/"); p != "" {
		name = p + "/" + name
	}
	b := &botSession{name: name, botID: bs.GetBotId(), worker: bs.GetWorker(), changed: make(chan struct{})}
	s.mu.Lock()
	if old := s.byBot[b.botID]; old != nil {
		// The spec: a new session with the same bot_id invalidates the old.
		s.closeLocked(old, "replaced by a new session of the same bot")
	}
	s.sessions[name] = b
	s.byBot[b.botID] = b
	s.startSlotLocked(b)
	resp := s.viewLocked(b)
	s.armLocked(b)
	s.mu.Unlock()
	s.cfg.Logger.Info("bot session created", "bot", b.botID, "session", name)
	return resp, nil
}

// startSlotLocked opens b's executor session with the scheduler.
func (s *Server) startSlotLocked(b *botSession) {
	ctx, cancel := context.WithCancel(context.Background())
	in := make(chan *workerapi.ExecutorMessage, 16)
	b.in, b.stop = in, cancel
	st := &slotStream{ctx: ctx, in: in, out: func(m *workerapi.SchedulerMessage) { s.fromScheduler(b, in, m) }}
	in <- &workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Register{Register: &workerapi.Register{
		Name: b.botID, Properties: properties(b.worker), MaxInflight: 1,
	}}}
	go func() {
		if err := s.cfg.Scheduler.Connect(st); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("bot executor session ended", "bot", b.botID, "err", err)
		}
	}()
	go func() {
		t := time.NewTicker(20 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				send(ctx, in, &workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Heartbeat{Heartbeat: &workerapi.Heartbeat{Accepting: true}}})
			}
		}
	}()
}

func send(ctx context.Context, in chan *workerapi.ExecutorMessage, m *workerapi.ExecutorMessage) {
	select {
	case in <- m:
	case <-ctx.Done():
	}
}

func (b *botSession) notify() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// fromScheduler turns the scheduler's messages into lease changes; in tells
// which slot they came from, so those of an ended slot are dropped.
func (s *Server) fromScheduler(b *botSession, in chan *workerapi.ExecutorMessage, m *workerapi.SchedulerMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.gone || b.in != in {
		return
	}
	switch msg := m.GetMsg().(type) {
	case *workerapi.SchedulerMessage_Assign:
		a := msg.Assign
		d, err := digest.FromProto(a.GetDigestFunction(), a.GetActionDigest())
		if err != nil {
			return
		}
		b.lease = &lease{
			id:     a.GetInstanceName() + "/" + strings.ReplaceAll(a.GetTaskId(), "/", "."),
			taskID: a.GetTaskId(), instance: a.GetInstanceName(), action: d,
			doNotCache: a.GetDoNotCache() || a.GetAction().GetDoNotCache(), state: pb.LeaseState_PENDING,
		}
		b.notify()
	case *workerapi.SchedulerMessage_Cancel:
		if b.lease != nil && b.lease.taskID == msg.Cancel.GetTaskId() {
			b.lease.state = pb.LeaseState_CANCELLED
			b.notify()
		}
	}
}

// closeLocked ends b: its executor session closes, so the scheduler
// re-queues an action it was running.
func (s *Server) closeLocked(b *botSession, why string) {
	if b.gone {
		return
	}
	b.gone = true
	b.stop()
	if b.expiry != nil {
		b.expiry.Stop()
	}
	delete(s.sessions, b.name)
	if s.byBot[b.botID] == b {
		delete(s.byBot, b.botID)
	}
	b.notify()
	s.cfg.Logger.Warn("bot session closed", "bot", b.botID, "session", b.name, "reason", why)
}

// armLocked starts b's expiry clock once no call of it is in flight.
func (s *Server) armLocked(b *botSession) {
	if b.calls > 0 || b.gone {
		return
	}
	if b.expiry != nil {
		b.expiry.Stop()
	}
	b.expiry = time.AfterFunc(s.cfg.SessionTTL, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if b.calls == 0 {
			s.closeLocked(b, fmt.Sprintf("no UpdateBotSession for %s", s.cfg.SessionTTL))
		}
	})
}

func (s *Server) viewLocked(b *botSession) *pb.BotSession {
	v := &pb.BotSession{
		Name: b.name, BotId: b.botID, Status: pb.BotStatus_OK, Worker: b.worker,
		ExpireTime: timestamppb.New(time.Now().Add(s.cfg.SessionTTL)),
	}
	if l := b.lease; l != nil {
		payload, _ := anypb.New(l.action.Proto())
		v.Leases = append(v.Leases, &pb.Lease{Id: l.id, State: l.state, Payload: payload})
	}
	return v
}

var updatable = map[string]bool{"name": true, "bot_id": true, "status": true, "worker": true, "leases": true, "expire_time": true, "version": true}

// UpdateBotSession takes the bot's lease reports and answers with the
// leases it should work on, waiting up to MaxHold for news.
func (s *Server) UpdateBotSession(ctx context.Context, req *pb.UpdateBotSessionRequest) (*pb.BotSession, error) {
	bs := req.GetBotSession()
	switch {
	case req.GetName() == "":
		return nil, invalid("name is empty: give the session name CreateBotSession returned")
	case bs == nil:
		return nil, invalid("bot_session is required")
	case bs.GetName() != req.GetName():
		return nil, invalid("bot_session.name %q differs from name %q", bs.GetName(), req.GetName())
	}
	for _, p := range req.GetUpdateMask().GetPaths() {
		if !updatable[p] {
			return nil, invalid("update_mask path %q is not a BotSession field", p)
		}
	}
	seen := map[string]bool{}
	for i, l := range bs.GetLeases() {
		switch {
		case l.GetId() == "":
			return nil, invalid("bot_session.leases[%d].id is empty", i)
		case seen[l.GetId()]:
			return nil, invalid("bot_session.leases[%d].id %q appears twice", i, l.GetId())
		case l.GetState() == pb.LeaseState_LEASE_STATE_UNSPECIFIED || pb.LeaseState_name[int32(l.GetState())] == "":
			return nil, invalid("bot_session.leases[%d] (%q) has no valid state", i, l.GetId())
		}
		seen[l.GetId()] = true
	}
	s.mu.Lock()
	b := s.sessions[req.GetName()]
	if b == nil {
		s.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "bot session %q does not exist (expired after %s without UpdateBotSession, or replaced): create a new one", req.GetName(), s.cfg.SessionTTL)
	}
	if bs.GetBotId() != b.botID {
		s.mu.Unlock()
		return nil, invalid("bot_session.bot_id %q is not the session's bot %q", bs.GetBotId(), b.botID)
	}
	b.calls++
	if b.expiry != nil {
		b.expiry.Stop()
	}
	reported := pb.LeaseState_LEASE_STATE_UNSPECIFIED
	accepted := false
	for _, l := range bs.GetLeases() {
		if b.lease != nil && l.GetId() == b.lease.id {
			reported = l.GetState()
			accepted = s.reportLocked(ctx, b, l)
		}
		// Other ids are leases the server abandoned: late reports are ignored.
	}
	// Answer at once when the bot's view differs from ours, or when it has
	// just accepted a lease: buildbox-worker starts the job only once this
	// call answers, so holding it would delay every action by the long poll.
	// Else hold.
	if !accepted && (b.lease == nil && reported == pb.LeaseState_LEASE_STATE_UNSPECIFIED || b.lease != nil && b.lease.state == reported) {
		hold := s.cfg.MaxHold
		if dl, ok := ctx.Deadline(); ok && time.Until(dl)-time.Second < hold {
			hold = time.Until(dl) - time.Second
		}
		ch := b.changed
		s.mu.Unlock()
		if hold > 0 {
			t := time.NewTimer(hold)
			select {
			case <-ch:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		s.mu.Lock()
	}
	b.calls--
	defer s.mu.Unlock()
	if b.gone {
		return nil, status.Errorf(codes.NotFound, "bot session %q was closed: create a new one", b.name)
	}
	resp := s.viewLocked(b)
	s.armLocked(b)
	return resp, nil
}

// reportLocked applies the bot's report on its current lease.
func (s *Server) reportLocked(ctx context.Context, b *botSession, l *pb.Lease) (accepted bool) {
	cur := b.lease
	switch l.GetState() {
	case pb.LeaseState_ACTIVE:
		if cur.state == pb.LeaseState_PENDING {
			cur.state = pb.LeaseState_ACTIVE
			return true
		}
	case pb.LeaseState_COMPLETED, pb.LeaseState_CANCELLED:
		resp := s.responseOf(b, l)
		if cur.state != pb.LeaseState_CANCELLED && resp.GetStatus().GetCode() == 0 && resp.GetResult().GetExitCode() == 0 && resp.GetResult() != nil && !cur.doNotCache && s.cfg.ActionCache != nil {
			if err := s.cfg.ActionCache.Put(context.WithoutCancel(ctx), cur.instance, cur.action, resp.GetResult()); err != nil {
				s.cfg.Logger.Warn("writing the action cache failed", "action", cur.action.String(), "err", err)
			}
		}
		s.cfg.Logger.Info("lease completed", "bot", b.botID, "lease", cur.id, "state", l.GetState().String(),
			"exit", resp.GetResult().GetExitCode(), "status", resp.GetStatus().GetCode(), "do_not_cache", cur.doNotCache)
		b.lease = nil
		send(ctx, b.in, &workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Finished{Finished: &workerapi.Finished{TaskId: cur.taskID, Response: resp}}})
	}
	return false
}

// responseOf reads a finished lease: its result is an ActionResult
// (buildbox-worker) or an ExecuteResponse.
func (s *Server) responseOf(b *botSession, l *pb.Lease) *repb.ExecuteResponse {
	if l.GetState() == pb.LeaseState_CANCELLED {
		return &repb.ExecuteResponse{Status: &rpcstatus.Status{Code: int32(codes.Canceled), Message: "the lease was cancelled"}}
	}
	resp := &repb.ExecuteResponse{}
	if r := l.GetResult(); r != nil {
		ar := &repb.ActionResult{}
		switch {
		case r.MessageIs(ar):
			if err := r.UnmarshalTo(ar); err != nil {
				return internalf("bot %s sent an unreadable ActionResult: %v", b.botID, err)
			}
			resp.Result = ar
			// buildbox-worker names an empty stderr by the empty blob's
			// digest without uploading it (REAPI treats that blob as always
			// present); Hearth's action cache completeness check would
			// reject the cached result, so an empty stream is left unset.
			if ar.GetStdoutDigest().GetSizeBytes() == 0 {
				ar.StdoutDigest = nil
			}
			if ar.GetStderrDigest().GetSizeBytes() == 0 {
				ar.StderrDigest = nil
			}
		case r.MessageIs(resp):
			if err := r.UnmarshalTo(resp); err != nil {
				return internalf("bot %s sent an unreadable ExecuteResponse: %v", b.botID, err)
			}
		default:
			return internalf("bot %s completed its lease with a result of type %s; want an ActionResult", b.botID, r.GetTypeUrl())
		}
	}
	if st := l.GetStatus(); st.GetCode() != 0 {
		resp.Status = st
	} else if resp.Result == nil && resp.GetStatus().GetCode() == 0 {
		return internalf("bot %s completed its lease without a result", b.botID)
	}
	return resp
}

func internalf(format string, a ...any) *repb.ExecuteResponse {
	return &repb.ExecuteResponse{Status: &rpcstatus.Status{Code: int32(codes.Internal), Message: fmt.Sprintf(format, a...)}}
}
