package scheduler

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// Shared is the operation and queue state several replicas share
// (internal/redissched). With Config.Shared set, operations and queues live
// there: Submit writes the operation to the shared queue of its shape, and
// every replica claims from those queues for its own free executors, renews
// the leases of what they run and completes operations with the lease token,
// so each operation gets exactly one result. Policy — platform matching,
// shapes, the warm-affinity choice among this replica's executors — and the
// executor sessions stay here, in each replica's memory. Without Shared the
// scheduler keeps everything in memory as it always did.
type Shared interface {
	SubmitOp(ctx context.Context, o redissched.Submission) (name string, joined bool, err error)
	ClaimWarm(ctx context.Context, shape, self string, warm []string, wait time.Duration) (*redissched.Lease, time.Duration, error)
	AdvertiseWarm(ctx context.Context, self string, warm, gone []string, ttl time.Duration) error
	Release(ctx context.Context, l *redissched.Lease) (bool, error)
	Renew(ctx context.Context, l *redissched.Lease) (bool, error)
	Adopt(ctx context.Context, name, token, self string) (l *redissched.Lease, done bool, err error)
	Complete(ctx context.Context, name, token string, resp *repb.ExecuteResponse) (bool, error)
	GiveUp(ctx context.Context, l *redissched.Lease, resp *repb.ExecuteResponse) (bool, error)
	Record(ctx context.Context, name string, meta []byte, resp *repb.ExecuteResponse) error
	Reap(ctx context.Context, now time.Time) (requeued, failed int, err error)
	Get(ctx context.Context, name string) (redissched.Snapshot, error)
	Shapes(ctx context.Context) ([]string, error)
	Follow(ctx context.Context, done, queued func(string)) error
	LeaseDuration() time.Duration
	Counts(ctx context.Context) (redissched.Counts, error)
}

// sharedTimeout bounds each shared-state call made on a client's behalf.
const sharedTimeout = 10 * time.Second

func encodeRequest(r Request) ([]byte, error) {
	return proto.Marshal(&workerapi.Assign{
		InstanceName: r.Instance, DigestFunction: r.ActionDigest.Function, ActionDigest: r.ActionDigest.Proto(),
		Action: r.Action, DoNotCache: r.DoNotCache, Command: r.Command,
	})
}

func encodeMeta(instance string, d digest.Digest) []byte {
	b, _ := proto.Marshal(&workerapi.Assign{InstanceName: instance, DigestFunction: d.Function, ActionDigest: d.Proto()})
	return b
}

func decodeRequest(data []byte) (Request, error) {
	a := &workerapi.Assign{}
	if err := proto.Unmarshal(data, a); err != nil {
		return Request{}, fmt.Errorf("decoding a shared operation: %w", err)
	}
	d, err := digest.FromProto(a.GetDigestFunction(), a.GetActionDigest())
	if err != nil {
		return Request{}, fmt.Errorf("decoding a shared operation: %w", err)
	}
	r := Request{Instance: a.GetInstanceName(), ActionDigest: d, Action: a.GetAction(), DoNotCache: a.GetDoNotCache(), Command: a.GetCommand()}
	r.Platform = r.Action.GetPlatform()
	if len(r.Platform.GetProperties()) == 0 && r.Command.GetPlatform() != nil {
		r.Platform = r.Command.GetPlatform()
	}
	return r, nil
}

// parseShapeKey is the inverse of appendShapeKey, for shapes a replica first
// hears of from the shared state.
func parseShapeKey(key string) ([]*repb.Platform_Property, time.Duration, bool) {
	var props []*repb.Platform_Property
	rest := key
	for strings.HasPrefix(rest, `"`) {
		var kv [2]string
		for i, sep := range []string{"=", ","} {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil, 0, false
			}
			kv[i], _ = strconv.Unquote(q)
			rest = rest[len(q):]
			if !strings.HasPrefix(rest, sep) {
				return nil, 0, false
			}
			rest = rest[1:]
		}
		props = append(props, &repb.Platform_Property{Name: kv[0], Value: kv[1]})
	}
	t, err := strconv.ParseInt(rest, 10, 64)
	return props, time.Duration(t), err == nil
}

// mirrorLocked returns this replica's handle on shared operation name,
// creating it in stage QUEUED.
func (s *Scheduler) mirrorLocked(name string, r Request) *Operation {
	if o := s.ops[name]; o != nil {
		return o
	}
	o := &Operation{s: s, name: name, instance: r.Instance, action: r.ActionDigest, changed: make(chan struct{}), heapIdx: -1}
	o.state = State{Name: name, Instance: r.Instance, ActionDigest: r.ActionDigest, Stage: repb.ExecutionStage_QUEUED}
	o.req = r
	o.routeKey = workeraction.RoutingKeyOf(r.Platform.GetProperties(), r.Command)
	o.queuedAt = time.Now()
	s.ops[name] = o
	return o
}

func (s *Scheduler) submitShared(r Request) (*Operation, error) {
	key := ""
	if !r.DoNotCache {
		key = mergeKey(r)
	}
	req, err := encodeRequest(r)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
	defer cancel()
	shape := shapeKey(r.Platform.GetProperties(), actionTimeout(r))
	name, _, err := s.shared.SubmitOp(ctx, redissched.Submission{
		Merge: key, Shape: shape, Priority: r.Priority, Request: req, Meta: encodeMeta(r.Instance, r.ActionDigest),
		Route: workeraction.RoutingKeyOf(r.Platform.GetProperties(), r.Command),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", cas.ErrUnavailable, err)
	}
	s.mu.Lock()
	sh := s.shapeForLocked(r)
	sh.lastUsed = time.Now()
	sh.pending = true
	_, known := s.ops[name]
	o := s.mirrorLocked(name, r)
	if !known {
		o.shape = sh
		s.notify(Observer.Queued, o)
	}
	s.mu.Unlock()
	s.kickClaim()
	return o, nil
}

// recordShared makes an operation answered here from the action cache
// known at every replica. A failure costs only that: the client that asked
// has its result on the Execute stream, and this replica still knows the
// name.
func (s *Scheduler) recordShared(o *Operation, resp *repb.ExecuteResponse) {
	ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
	defer cancel()
	if err := s.shared.Record(ctx, o.name, encodeMeta(o.instance, o.action), resp); err != nil {
		s.logger.Warn("recording a cached result's operation in the shared scheduler state; other replicas will not find it", "operation", o.name, "error", err)
	}
}

// getShared finds an operation submitted at another replica.
func (s *Scheduler) getShared(name string) (*Operation, error) {
	ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
	defer cancel()
	snap, err := s.shared.Get(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrNotFound, name, err)
	}
	r, err := decodeRequest(snap.Meta)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.mirrorLocked(name, r)
	s.applySnapshotLocked(o, snap)
	return o, nil
}

// applySnapshotLocked brings o up to the shared state.
func (s *Scheduler) applySnapshotLocked(o *Operation, snap redissched.Snapshot) {
	switch snap.Stage {
	case repb.ExecutionStage_COMPLETED:
		if o.lease != nil && o.executor != nil {
			o.executor.cancel(o.taskID) // completed elsewhere (a cancel): stop ours
		}
		o.lease, o.executor = nil, nil
		s.finishLocked(o, snap.Response)
	case repb.ExecutionStage_EXECUTING:
		if o.executor == nil && o.state.Stage != repb.ExecutionStage_EXECUTING {
			o.setStage(repb.ExecutionStage_EXECUTING, nil)
		}
	case repb.ExecutionStage_QUEUED:
		if o.executor == nil && o.state.Stage != repb.ExecutionStage_QUEUED {
			o.setStage(repb.ExecutionStage_QUEUED, nil)
		}
	}
}

// refresh re-reads a followed operation after the shared state announced a
// change.
func (s *Scheduler) refresh(name string) {
	s.mu.Lock()
	o := s.ops[name]
	skip := o == nil || o.completedAt != (time.Time{})
	s.mu.Unlock()
	if skip {
		return
	}
	ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
	defer cancel()
	snap, err := s.shared.Get(ctx, name)
	if err != nil {
		return // gone or unreachable: the next poll tries again
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applySnapshotLocked(o, snap)
}

func (s *Scheduler) queuedShape(key string) {
	s.mu.Lock()
	sh := s.shapes[key]
	if sh == nil {
		props, timeout, ok := parseShapeKey(key)
		if !ok {
			s.mu.Unlock()
			return
		}
		sh = s.newShapeLocked(key, props, timeout)
	}
	sh.lastUsed = time.Now()
	sh.pending = true
	s.mu.Unlock()
	s.kickClaim()
}

func (s *Scheduler) kickClaim() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// claimRound claims from the shared queues for this replica's free
// executors until no shape with a free executor has work.
func (s *Scheduler) claimRound() {
	s.advertiseWarm(false)
	for {
		s.mu.Lock()
		var cands []*shape
		var warm [][]string
		for _, sh := range s.shapes {
			if sh.pending && len(sh.free) > 0 {
				cands = append(cands, sh)
				warm = append(warm, freeWarmKeysLocked(sh))
			}
		}
		s.mu.Unlock()
		progress := false
		for i, sh := range cands {
			ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
			l, retry, err := s.shared.ClaimWarm(ctx, sh.key, s.replicaID, warm[i], s.cfg.SharedWarmWait)
			cancel()
			if err != nil {
				s.logger.Warn("claiming from the shared scheduler state", "error", err)
				return
			}
			if l == nil {
				s.mu.Lock()
				sh.pending = false
				s.mu.Unlock()
				if retry > 0 {
					s.retryShapeAfter(sh, retry)
				}
				continue
			}
			progress = true
			s.startClaimed(sh, l)
		}
		if !progress {
			return
		}
	}
}

func (s *Scheduler) startClaimed(sh *shape, l *redissched.Lease) {
	r, err := decodeRequest(l.Request)
	if err != nil {
		s.completeSharedAsync(l.Name, l.Token, &repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_INTERNAL), Message: err.Error()}})
		return
	}
	s.mu.Lock()
	o := s.mirrorLocked(l.Name, r)
	if o.req.Action == nil {
		o.req = r // a mirror made by GetOperation knows only the name
		o.routeKey = workeraction.RoutingKeyOf(r.Platform.GetProperties(), r.Command)
	}
	e := s.pickLocked(sh, o.routeKey)
	if e == nil || o.completedAt != (time.Time{}) {
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
		defer cancel()
		if _, err := s.shared.Release(ctx, l); err != nil {
			s.logger.Warn("releasing a claimed action", "operation", l.Name, "error", err)
		}
		return
	}
	o.shape = sh
	o.lease = l
	o.attempts = l.Attempts - 1 // assignLocked counts this attempt
	s.assignLocked(o, e)
	s.mu.Unlock()
}

func (s *Scheduler) completeSharedAsync(name, token string, resp *repb.ExecuteResponse) {
	go func() {
		ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
		defer cancel()
		if _, err := s.shared.Complete(ctx, name, token, resp); err != nil {
			s.logger.Warn("completing in the shared scheduler state", "operation", name, "error", err)
		}
	}()
}

// completeShared records an executor's result in the shared state before
// the session handles the message; it reports whether this attempt's result
// is the operation's (false: the lease was lost and another attempt owns
// the operation, or the shared state did not answer — then the lease lapses
// and the action runs again).
func (s *Scheduler) completeShared(e *session, f *workerapi.Finished) bool {
	s.mu.Lock()
	o := e.tasks[f.GetTaskId()]
	var l *redissched.Lease
	if o != nil && o.taskID == f.GetTaskId() {
		l = o.lease
	}
	s.mu.Unlock()
	if l == nil {
		return true
	}
	// The warm worker that ran it is idle again: say so before the result
	// is published, so that a client's next action of the same key, sent
	// to another replica as soon as it has this result, is left to it.
	s.mu.Lock()
	s.reportWarmLocked(e, warmCounts(f.GetWarmWorkers(), f.GetWarmKeys()))
	s.mu.Unlock()
	s.advertiseWarm(false)
	ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
	defer cancel()
	ok, err := s.shared.Complete(ctx, l.Name, l.Token, finishedResponse(e, f))
	if err != nil {
		s.logger.Warn("completing in the shared scheduler state", "operation", l.Name, "error", err)
	}
	return ok
}

// requeueSharedLocked gives back the lease of an action whose executor went
// away: put back in the shared queue, or failed once out of attempts.
func (s *Scheduler) requeueSharedLocked(o *Operation, why string) {
	l := o.lease
	o.lease, o.executor, o.taskID = nil, nil, ""
	o.released = l.Token
	o.setStage(repb.ExecutionStage_QUEUED, nil)
	if o.attempts >= s.cfg.MaxAttempts {
		resp := &repb.ExecuteResponse{Status: &status.Status{
			Code:    int32(code.Code_UNAVAILABLE),
			Message: fmt.Sprintf("action was started %d times and each time its executor went away (last: %s)", o.attempts, why),
		}}
		go func() {
			ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
			defer cancel()
			// Refused once another replica adopted the attempt: its
			// executor is still running it there.
			if _, err := s.shared.GiveUp(ctx, l, resp); err != nil {
				s.logger.Warn("failing an action out of attempts in the shared scheduler state", "operation", l.Name, "error", err)
			}
		}()
		return
	}
	s.logger.Warn("re-queueing action", "operation", o.name, "action", o.action.String(), "attempt", o.attempts, "reason", why)
	go func() {
		ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
		defer cancel()
		if _, err := s.shared.Release(ctx, l); err != nil {
			s.logger.Warn("re-queueing in the shared scheduler state (its lease will lapse)", "operation", l.Name, "error", err)
		}
	}()
}

// runShared follows the shared state, claims for free executors, renews
// leases, reaps lapsed ones and polls the operations clients wait for here.
func (s *Scheduler) runShared() {
	go func() {
		for s.sharedCtx.Err() == nil {
			err := s.shared.Follow(s.sharedCtx, s.refresh, s.queuedShape)
			if s.sharedCtx.Err() == nil {
				s.logger.Warn("following the shared scheduler state", "error", err)
				time.Sleep(time.Second)
			}
		}
	}()
	go func() {
		for {
			select {
			case <-s.sharedCtx.Done():
				return
			case <-s.kick:
				s.claimRound()
			}
		}
	}()
	poll := s.cfg.SharedPoll
	t := time.NewTicker(poll)
	defer t.Stop()
	lastRenew := time.Now()
	for {
		select {
		case <-s.sharedCtx.Done():
			return
		case now := <-t.C:
			s.pollShared(now, now.Sub(lastRenew) >= s.shared.LeaseDuration()/3)
			if now.Sub(lastRenew) >= s.shared.LeaseDuration()/3 {
				lastRenew = now
			}
		}
	}
}

func (s *Scheduler) pollShared(now time.Time, renew bool) {
	s.advertiseWarm(true)
	ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
	defer cancel()
	requeued, failed, err := s.shared.Reap(ctx, now)
	if err != nil {
		s.logger.Warn("reaping the shared scheduler state", "error", err)
		return
	}
	if requeued+failed > 0 {
		s.logger.Warn("actions whose lease lapsed (their replica or executor went away)", "requeued", requeued, "failed", failed)
	}
	// Shapes queued while a notification was missed.
	if shapes, err := s.shared.Shapes(ctx); err == nil {
		for _, k := range shapes {
			s.queuedShape(k)
		}
	}
	var leased []*Operation
	var followed []string
	s.mu.Lock()
	for name, o := range s.ops {
		switch {
		case o.lease != nil:
			leased = append(leased, o)
		case o.completedAt == (time.Time{}):
			followed = append(followed, name)
		}
	}
	s.mu.Unlock()
	if renew {
		for _, o := range leased {
			s.mu.Lock()
			l := o.lease
			s.mu.Unlock()
			if l == nil {
				continue
			}
			if ok, err := s.shared.Renew(ctx, l); err == nil && !ok {
				s.mu.Lock()
				if o.lease == l {
					s.logger.Warn("lease lost, abandoning the attempt", "operation", o.name)
					if o.executor != nil {
						o.executor.cancel(o.taskID)
					}
					o.lease, o.executor = nil, nil
				}
				s.mu.Unlock()
			}
		}
	}
	for _, name := range followed {
		s.refresh(name)
	}
}
