// Package scheduler owns operations and executors: the queue of actions
// waiting to run (ordered by priority, then arrival), the merging of identical
// in-flight actions, platform matching, the sessions of connected executors
// (Hearth's worker API stream), re-queueing of actions whose executor
// disappeared, cancellation of actions nobody waits for, and the expiry of
// finished operations.
package scheduler

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// ErrUnschedulable is wrapped when no connected executor can ever run an
// action; the edge answers FAILED_PRECONDITION.
var ErrUnschedulable = errors.New("action cannot be scheduled")

// ErrTimeoutTooLong is wrapped when an action asks for a longer timeout than
// any executor allows; the edge answers INVALID_ARGUMENT.
var ErrTimeoutTooLong = errors.New("action timeout exceeds the maximum")

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
	queue     []*Operation          // sorted by (priority, seq)
	seq       uint64
	executors map[*session]bool
	// noExecutorsSince is when the last executor left (or the scheduler
	// started without any).
	noExecutorsSince time.Time
	stop             chan struct{}
}

// New returns a scheduler; Close stops its sweeper.
func New(cfg Config) *Scheduler {
	cfg.applyDefaults()
	s := &Scheduler{
		cfg:       cfg,
		logger:    cfg.Logger,
		ops:       map[string]*Operation{},
		inflight:  map[string]*Operation{},
		executors: map[*session]bool{},
		stop:      make(chan struct{}),

		noExecutorsSince: time.Now(),
	}
	go s.sweep()
	return s
}

// Close stops background work.
func (s *Scheduler) Close() { close(s.stop) }

func mergeKey(r Request) string {
	return fmt.Sprintf("%s\x00%d\x00%s", r.Instance, r.ActionDigest.Function, r.ActionDigest.String())
}

func (s *Scheduler) newOperation(instance string, action digest.Digest) *Operation {
	o := &Operation{s: s, name: uuid.NewString(), instance: instance, action: action, changed: make(chan struct{})}
	o.state = State{Name: o.name, Instance: instance, ActionDigest: action, Stage: repb.ExecutionStage_QUEUED}
	s.ops[o.name] = o
	return o
}

// Submit queues an action, or joins the identical action already in flight
// (unless DoNotCache). It fails fast when no connected executor could ever
// run the action.
func (s *Scheduler) Submit(r Request) (*Operation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkSchedulableLocked(r); err != nil {
		return nil, err
	}
	key := ""
	if !r.DoNotCache {
		key = mergeKey(r)
		if o, ok := s.inflight[key]; ok {
			if r.Priority < o.req.Priority && o.executor == nil {
				o.req.Priority = r.Priority // a more urgent client speeds up the shared run
				s.sortQueueLocked()
			}
			return o, nil
		}
	}
	o := s.newOperation(r.Instance, r.ActionDigest)
	o.req = r
	o.mergeKey = key
	o.queuedAt = time.Now()
	if key != "" {
		s.inflight[key] = o
	}
	s.enqueueLocked(o)
	s.dispatchLocked()
	return o, nil
}

// Completed registers an operation that is already done (an action cache hit),
// so that WaitExecution and GetOperation can find it.
func (s *Scheduler) Completed(instance string, action digest.Digest, resp *repb.ExecuteResponse) *Operation {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.newOperation(instance, action)
	s.finishLocked(o, resp)
	return o
}

// Get returns an operation by name.
func (s *Scheduler) Get(name string) (*Operation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.ops[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q (unknown, or finished more than %s ago)", ErrNotFound, name, s.cfg.OperationTTL)
	}
	return o, nil
}

// Cancel cancels an operation: a queued action is dropped, a running one is
// told to stop. Cancelling a finished operation does nothing.
func (s *Scheduler) Cancel(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.ops[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
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
	s.finishLocked(o, &repb.ExecuteResponse{Status: &status.Status{Code: int32(code.Code_CANCELLED), Message: why}})
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

func (s *Scheduler) enqueueLocked(o *Operation) {
	s.seq++
	o.seq = s.seq
	o.executor = nil
	o.taskID = ""
	s.queue = append(s.queue, o)
	s.sortQueueLocked()
	s.notify(Observer.Queued, o)
}

// sortQueueLocked orders by priority (lower runs sooner, as REAPI says), then
// arrival.
func (s *Scheduler) sortQueueLocked() {
	sort.SliceStable(s.queue, func(i, j int) bool {
		a, b := s.queue[i], s.queue[j]
		if a.req.Priority != b.req.Priority {
			return a.req.Priority < b.req.Priority
		}
		return a.seq < b.seq
	})
}

func (s *Scheduler) removeFromQueueLocked(o *Operation) {
	for i, q := range s.queue {
		if q == o {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return
		}
	}
}

func actionTimeout(r Request) time.Duration {
	return r.Action.GetTimeout().AsDuration()
}

// checkSchedulableLocked fails an action that none of the connected executors
// can take. With no executor connected at all, actions wait: executors of a
// split deployment may still be starting.
func (s *Scheduler) checkSchedulableLocked(r Request) error {
	if len(s.executors) == 0 {
		return nil
	}
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
		if e.caps.unmatched(r.Platform.GetProperties()) == nil {
			if e.caps.acceptsTimeout(actionTimeout(r)) {
				return nil
			}
		}
		caps = append(caps, &e.caps)
	}
	if !timeoutOK {
		return fmt.Errorf("%w: timeout %s is longer than the %s that executors allow", ErrTimeoutTooLong, actionTimeout(r), maxTimeout)
	}
	return fmt.Errorf("%w: %s", ErrUnschedulable, describeUnmatched(r.Platform.GetProperties(), caps))
}

// dispatchLocked hands queued actions to free executors that match them,
// highest priority first. An action that only busy executors match stays
// queued without blocking the actions behind it.
func (s *Scheduler) dispatchLocked() {
	for i := 0; i < len(s.queue); {
		o := s.queue[i]
		e := s.pickExecutorLocked(o)
		if e == nil {
			i++
			continue
		}
		s.queue = append(s.queue[:i], s.queue[i+1:]...)
		s.assignLocked(o, e)
	}
}

// pickExecutorLocked chooses among free matching executors the least loaded
// one, preferring an executor that reports an idle warm persistent worker for
// the action's key. The preference only ranks free executors, so a busy warm
// executor never makes an action wait while another one sits idle.
func (s *Scheduler) pickExecutorLocked(o *Operation) *session {
	key := workerKey(o.req.Platform)
	var best *session
	bestWarm := false
	for e := range s.executors {
		if !e.hasCapacity() || e.caps.unmatched(o.req.Platform.GetProperties()) != nil || !e.caps.acceptsTimeout(actionTimeout(o.req)) {
			continue
		}
		warm := key != "" && e.warmKeys[key]
		switch {
		case best == nil,
			warm && !bestWarm,
			warm == bestWarm && e.load() < best.load():
			best, bestWarm = e, warm
		}
	}
	return best
}

func workerKey(p *repb.Platform) string {
	for _, prop := range p.GetProperties() {
		if prop.GetName() == "persistentWorkerKey" {
			return prop.GetValue()
		}
	}
	return ""
}

func (s *Scheduler) assignLocked(o *Operation, e *session) {
	o.attempts++
	o.taskID = uuid.NewString()
	o.executor = e
	e.assign(o)
	s.notify(Observer.Started, o)
}

// requeueLocked puts back an action whose executor went away, or fails it
// once it has been tried MaxAttempts times.
func (s *Scheduler) requeueLocked(o *Operation, why string) {
	if o.completedAt != (time.Time{}) {
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
	s.enqueueLocked(o)
}

// failUnschedulableLocked fails queued actions that the remaining executors
// can never take (after an executor left).
func (s *Scheduler) failUnschedulableLocked() {
	for i := 0; i < len(s.queue); {
		o := s.queue[i]
		if err := s.checkSchedulableLocked(o.req); err != nil {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			c := code.Code_FAILED_PRECONDITION
			if errors.Is(err, ErrTimeoutTooLong) {
				c = code.Code_INVALID_ARGUMENT
			}
			s.finishLocked(o, &repb.ExecuteResponse{Status: &status.Status{Code: int32(c), Message: err.Error()}})
			continue
		}
		i++
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
		for _, o := range s.queue {
			s.finishLocked(o, &repb.ExecuteResponse{Status: &status.Status{
				Code:    int32(code.Code_UNAVAILABLE),
				Message: fmt.Sprintf("no executor has been connected for %s", now.Sub(s.noExecutorsSince).Round(time.Second)),
			}})
		}
		s.queue = nil
	}
	for name, o := range s.ops {
		if o.completedAt != (time.Time{}) && now.Sub(o.completedAt) > s.cfg.OperationTTL {
			delete(s.ops, name)
		}
	}
}
