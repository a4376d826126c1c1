// Package scheduler owns operations and executors: the queues of actions
// waiting to run (one per platform shape, ordered by priority, then arrival),
// the merging of identical in-flight actions, platform matching, the sessions
// of connected executors (Hearth's worker API stream) and their warm-worker
// capacity for affinity, re-queueing of actions whose executor disappeared,
// adoption of the running actions an executor reports when it reconnects
// (adopt.go: from a replica that went away, with shared state), cancellation of actions nobody waits for, and the expiry of finished
// operations.
package scheduler

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// ErrUnschedulable is wrapped when no connected executor can ever run an
// action; the edge answers FAILED_PRECONDITION.
var ErrUnschedulable = errors.New("action cannot be scheduled")

// ErrTimeoutTooLong is wrapped when an action asks for a longer timeout than
// any executor allows; the edge answers INVALID_ARGUMENT.
var ErrTimeoutTooLong = errors.New("action timeout exceeds the maximum")

// shapeIdleTTL is how long a shape with nothing queued is remembered.
const shapeIdleTTL = 10 * time.Minute

// ErrNotFound is wrapped when an operation is unknown or has expired.
var ErrNotFound = errors.New("operation not found")

// Config tunes the scheduler. Zero values take the defaults.
type Config struct {
	// OperationTTL is how long a finished operation stays visible to
	// WaitExecution and GetOperation.
	OperationTTL time.Duration
	// OrphanGrace is how long an operation that no client waits for keeps
	// running before it is cancelled.
	OrphanGrace time.Duration
	// MaxAttempts bounds how often an action is started on an executor that
	// then disappears before the client sees an error.
	MaxAttempts int
	// HeartbeatTimeout drops an executor that sent nothing for this long.
	HeartbeatTimeout time.Duration
	// NoExecutorTimeout fails queued actions with UNAVAILABLE once no
	// executor at all has been connected for this long, so that clients of
	// a server whose executors are gone get an error instead of waiting
	// forever.
	NoExecutorTimeout time.Duration
	Logger            *slog.Logger
	// Observer, if set, is told of every operation's moves.
	Observer Observer
	// Shared, if set, holds operations and queues shared with other
	// replicas (see Shared); SharedPoll is how often this replica reaps
	// lapsed leases and re-reads what it follows (default 1 s).
	Shared     Shared
	SharedPoll time.Duration
	// Replica names this replica in Status (shared mode; empty otherwise)
	// and in the shared state's warm-worker advertisements (a random name
	// when empty).
	Replica string
	// SharedWarmWait is how long a replica leaves a persistent worker
	// action to another replica that advertises an idle warm worker for
	// it, before starting it cold itself (default 50 ms; negative: never).
	SharedWarmWait time.Duration
	// ReattachGrace is how long the running actions of an executor whose
	// session ended stay its own before they are re-queued (default 3 s;
	// negative: re-queued at once). The executor keeps running them
	// through a broken stream and reports them when it reconnects, usually
	// within 100 ms, so a network blip or a restarted proxy costs no rerun.
	ReattachGrace time.Duration
}

func (c *Config) applyDefaults() {
	if c.OperationTTL == 0 {
		c.OperationTTL = 15 * time.Minute
	}
	if c.OrphanGrace == 0 {
		c.OrphanGrace = 10 * time.Second
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = time.Minute
	}
	if c.NoExecutorTimeout == 0 {
		c.NoExecutorTimeout = 5 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ReattachGrace == 0 {
		c.ReattachGrace = 3 * time.Second
	}
	if c.SharedPoll == 0 {
		c.SharedPoll = time.Second
	}
	if c.SharedWarmWait == 0 {
		c.SharedWarmWait = 50 * time.Millisecond
	}
}

// Request is an action to execute.
type Request struct {
	Instance     string
	ActionDigest digest.Digest
	Action       *repb.Action
	// Platform is the Action's platform, or the Command's for clients older
	// than REAPI v2.2 that only set it there.
	Platform   *repb.Platform
	Priority   int32
	DoNotCache bool
	// Command, when set, travels with the action to the executor.
	Command *repb.Command
}

// Scheduler is safe for concurrent use.
type Scheduler struct {
	workerapi.UnimplementedSchedulerServer

	cfg    Config
	logger *slog.Logger

	mu        sync.Mutex
	ops       map[string]*Operation
	inflight  map[string]*Operation // merge key → operation not yet done
	shapes    map[string]*shape     // shape key → its queue and executors
	queued    int                   // actions waiting in all shapes
	seq       uint64
	executors map[*session]bool
	// warm indexes, per routing key, the executors whose view has idle
	// warm workers left for it (session.warm[key] > 0).
	warm map[string]map[*session]struct{}
	// noExecutorsSince is when the last executor left (or the scheduler
	// started without any).
	noExecutorsSince time.Time
	stop             chan struct{}

	// With Config.Shared (shared.go): sharedCtx ends at Close; kick wakes
	// the claimer.
	shared       Shared
	sharedCtx    context.Context
	sharedCancel context.CancelFunc
	kick         chan struct{}
	closeOnce    sync.Once
	replicaID    string
	// advertised is the set of routing keys last advertised as warm here
	// (guarded by advertiseMu, held across the Redis call).
	advertiseMu sync.Mutex
	advertised  map[string]bool

	// adopted, alreadyDone and refused count the attempts executors
	// reported at Register that this replica took over, found completed,
	// or cancelled otherwise (adopt.go).
	adopted, alreadyDone, refused int64
}

// New returns a scheduler; Close stops its sweeper.
func New(cfg Config) *Scheduler {
	cfg.applyDefaults()
	s := &Scheduler{
		cfg:       cfg,
		logger:    cfg.Logger,
		ops:       map[string]*Operation{},
		inflight:  map[string]*Operation{},
		shapes:    map[string]*shape{},
		executors: map[*session]bool{},
		warm:      map[string]map[*session]struct{}{},
		stop:      make(chan struct{}),

		noExecutorsSince: time.Now(),
	}
	go s.sweep()
	if cfg.Shared != nil {
		s.shared = cfg.Shared
		s.sharedCtx, s.sharedCancel = context.WithCancel(context.Background())
		s.kick = make(chan struct{}, 1)
		s.replicaID = cfg.Replica
		if s.replicaID == "" {
			s.replicaID = uuid.NewString()
		}
		go s.runShared()
	}
	return s
}

// Close stops background work.
func (s *Scheduler) Close() {
	s.closeOnce.Do(func() {
		close(s.stop)
		if s.sharedCancel != nil {
			s.sharedCancel()
		}
	})
}

func mergeKey(r Request) string {
	return fmt.Sprintf("%s\x00%d\x00%s", r.Instance, r.ActionDigest.Function, r.ActionDigest.String())
}

func (s *Scheduler) newOperation(instance string, action digest.Digest) *Operation {
	o := &Operation{s: s, name: uuid.NewString(), instance: instance, action: action, changed: make(chan struct{}), heapIdx: -1}
	o.state = State{Name: o.name, Instance: instance, ActionDigest: action, Stage: repb.ExecutionStage_QUEUED}
	s.ops[o.name] = o
	return o
}

// Submit queues an action, or joins the identical action already in flight
// (unless DoNotCache). It fails fast when no connected executor could ever
// run the action.
func (s *Scheduler) Submit(r Request) (*Operation, error) {
	if s.shared != nil {
		// The executors that could run it may be at another replica, so
		// a replica cannot tell an action unschedulable: it waits.
		return s.submitShared(r)
	}
	key := ""
	if !r.DoNotCache {
		key = mergeKey(r)
	}
	routeKey := workeraction.RoutingKeyOf(r.Platform.GetProperties(), r.Command)
	s.mu.Lock()
	defer s.mu.Unlock()
	sh := s.shapeForLocked(r)
	if sh.matching == 0 && len(s.executors) > 0 {
		return nil, s.unschedulableLocked(r)
	}
	if key != "" {
		if o, ok := s.inflight[key]; ok {
			if r.Priority < o.req.Priority && o.heapIdx >= 0 {
				o.req.Priority = r.Priority // a more urgent client speeds up the shared run
				heap.Fix(&o.shape.queue, o.heapIdx)
			}
			return o, nil
		}
	}
	sh.lastUsed = time.Now()
	o := s.newOperation(r.Instance, r.ActionDigest)
	o.req = r
	o.mergeKey = key
	o.routeKey = routeKey
	o.queuedAt = sh.lastUsed
	if key != "" {
		s.inflight[key] = o
	}
	s.placeLocked(o, sh)
	return o, nil
}

// Completed registers an operation that is already done (an action cache hit),
// so that WaitExecution and GetOperation can find it — with Shared, at every
// replica.
func (s *Scheduler) Completed(instance string, action digest.Digest, resp *repb.ExecuteResponse) *Operation {
	s.mu.Lock()
	o := s.newOperation(instance, action)
	s.finishLocked(o, resp)
	s.mu.Unlock()
	if s.shared != nil {
		s.recordShared(o, resp)
	}
	return o
}

// Get returns an operation by name.
func (s *Scheduler) Get(name string) (*Operation, error) {
	s.mu.Lock()
	o, ok := s.ops[name]
	s.mu.Unlock()
	if !ok && s.shared != nil {
		return s.getShared(name)
	}
	if !ok {
		return nil, fmt.Errorf("%w: %q (unknown, or finished more than %s ago)", ErrNotFound, name, s.cfg.OperationTTL)
	}
	return o, nil
}

// Cancel cancels an operation: a queued action is dropped, a running one is
// told to stop. Cancelling a finished operation does nothing.
func (s *Scheduler) Cancel(name string) error {
	o, err := s.Get(name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cancelLocked(o, "the operation was cancelled by a client")
	return nil
}

func (s *Scheduler) cancelLocked(o *Operation, why string) {
	if o.completedAt != (time.Time{}) {
		return
	}
	s.removeFromQueueLocked(o)
	if o.executor != nil {
		o.executor.cancel(o.taskID)
	}
	resp := &repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_CANCELLED), Message: why}}
	if s.shared != nil {
		o.lease = nil
		s.completeSharedAsync(o.name, "", resp)
	}
	s.finishLocked(o, resp)
}

// finishLocked publishes the final response and forgets the operation's
// scheduling state. The executor slot, if any, is freed by the session when
// the executor confirms (or disconnects).
func (s *Scheduler) finishLocked(o *Operation, resp *repb.ExecuteResponse) {
	if !o.setStage(repb.ExecutionStage_COMPLETED, resp) {
		return
	}
	o.completedAt = time.Now()
	if o.mergeKey != "" && s.inflight[o.mergeKey] == o {
		delete(s.inflight, o.mergeKey)
	}
	if o.orphanTimer != nil {
		o.orphanTimer.Stop()
		o.orphanTimer = nil
	}
	s.notify(Observer.Finished, o)
}

func actionTimeout(r Request) time.Duration {
	return r.Action.GetTimeout().AsDuration()
}

// unschedulableLocked explains why none of the connected executors can take
// an action whose shape no executor matches. (With no executor connected at
// all, actions wait instead: executors of a split deployment may still be
// starting.) It scans every executor, which is fine on this error path.
func (s *Scheduler) unschedulableLocked(r Request) error {
	var caps []*capabilities
	timeoutOK := false
	var maxTimeout time.Duration
	for e := range s.executors {
		if e.caps.acceptsTimeout(actionTimeout(r)) {
			timeoutOK = true
		}
		if e.caps.maxTimeout > maxTimeout {
			maxTimeout = e.caps.maxTimeout
		}
		caps = append(caps, &e.caps)
	}
	if !timeoutOK {
		return fmt.Errorf("%w: timeout %s is longer than the %s that executors allow", ErrTimeoutTooLong, actionTimeout(r), maxTimeout)
	}
	return fmt.Errorf("%w: %s", ErrUnschedulable, describeUnmatched(r.Platform.GetProperties(), caps))
}

// requeueLocked puts back an action whose executor went away, or fails it
// once it has been tried MaxAttempts times.
func (s *Scheduler) requeueLocked(o *Operation, why string) {
	if o.completedAt != (time.Time{}) {
		return
	}
	if o.lease != nil {
		s.requeueSharedLocked(o, why)
		return
	}
	if o.attempts >= s.cfg.MaxAttempts {
		s.finishLocked(o, &repb.ExecuteResponse{Status: &status.Status{
			Code:    int32(code.Code_UNAVAILABLE),
			Message: fmt.Sprintf("action was started %d times and each time its executor went away (last: %s)", o.attempts, why),
		}})
		return
	}
	s.logger.Warn("re-queueing action", "operation", o.name, "action", o.action.String(), "attempt", o.attempts, "reason", why)
	o.setStage(repb.ExecutionStage_QUEUED, nil)
	o.executor, o.taskID = nil, ""
	// The shape may have been forgotten while the action ran.
	s.placeLocked(o, s.shapeForLocked(o.req))
}

// failUnschedulableLocked fails queued actions that the remaining executors
// can never take (after an executor left): those of shapes that no
// connected executor matches any more.
func (s *Scheduler) failUnschedulableLocked() {
	if len(s.executors) == 0 {
		return
	}
	for _, sh := range s.shapes {
		for sh.matching == 0 && sh.queue.Len() > 0 {
			o := s.popLocked(sh)
			err := s.unschedulableLocked(o.req)
			c := code.Code_FAILED_PRECONDITION
			if errors.Is(err, ErrTimeoutTooLong) {
				c = code.Code_INVALID_ARGUMENT
			}
			s.finishLocked(o, &repb.ExecuteResponse{Status: &status.Status{Code: int32(c), Message: err.Error()}})
		}
	}
}

func (s *Scheduler) sweep() {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.expire(now)
		}
	}
}

func (s *Scheduler) expire(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.executors) == 0 && now.Sub(s.noExecutorsSince) > s.cfg.NoExecutorTimeout {
		for _, sh := range s.shapes {
			for sh.queue.Len() > 0 {
				s.finishLocked(s.popLocked(sh), &repb.ExecuteResponse{Status: &status.Status{
					Code:    int32(code.Code_UNAVAILABLE),
					Message: fmt.Sprintf("no executor has been connected for %s", now.Sub(s.noExecutorsSince).Round(time.Second)),
				}})
			}
		}
	}
	s.forgetIdleShapesLocked(now.Add(-shapeIdleTTL))
	for name, o := range s.ops {
		if o.completedAt != (time.Time{}) && now.Sub(o.completedAt) > s.cfg.OperationTTL {
			delete(s.ops, name)
		}
	}
}
