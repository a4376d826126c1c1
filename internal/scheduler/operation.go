package scheduler

import (
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/redissched"
)

// State is a snapshot of an operation, as the Execution service reports it.
type State struct {
	Name         string
	Instance     string
	ActionDigest digest.Digest
	Stage        repb.ExecutionStage_Value
	// Response is set once Stage is COMPLETED.
	Response *repb.ExecuteResponse
}

// Done reports whether the operation has finished.
func (s State) Done() bool { return s.Stage == repb.ExecutionStage_COMPLETED }

// Operation is one execution of an action that one or more clients wait on.
// Its fields below mu are guarded by the scheduler's lock, except the state
// and the change channel, which have their own so watchers never contend
// with scheduling.
type Operation struct {
	s *Scheduler

	name     string
	instance string
	action   digest.Digest

	// Guarded by Scheduler.mu.
	req         Request
	seq         uint64
	attempts    int
	taskID      string
	executor    *session
	waiters     int
	orphanTimer *time.Timer
	mergeKey    string
	// routeKey is the worker routing key (workeraction.RoutingKey), or "".
	routeKey string
	// shape is where the operation queues; heapIdx is its place in the
	// shape's queue, -1 while it is not queued.
	shape       *shape
	heapIdx     int
	queuedAt    time.Time
	completedAt time.Time
	// lease is this replica's claim on a shared operation it runs
	// (Config.Shared), nil otherwise.
	lease *redissched.Lease
	// released is the token of the last lease this replica gave back
	// (requeueSharedLocked): an executor that reports that attempt later
	// is refused, since the release re-queues it.
	released string

	mu      sync.Mutex
	state   State
	changed chan struct{}
}

// Name is the operation's name, used by WaitExecution and GetOperation.
func (o *Operation) Name() string { return o.name }

// Watch returns the current state and a channel closed at the next change.
func (o *Operation) Watch() (State, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.state, o.changed
}

func (o *Operation) setStage(stage repb.ExecutionStage_Value, resp *repb.ExecuteResponse) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.state.Done() {
		return false // a result is final: nothing is ever reported twice
	}
	o.state.Stage = stage
	o.state.Response = resp
	close(o.changed)
	o.changed = make(chan struct{})
	return true
}

// AddWaiter records that a client stream is following the operation.
func (o *Operation) AddWaiter() {
	o.s.mu.Lock()
	defer o.s.mu.Unlock()
	o.waiters++
	if o.orphanTimer != nil {
		o.orphanTimer.Stop()
		o.orphanTimer = nil
	}
}

// RemoveWaiter records that a client stream went away. When no client waits
// any more, the operation is cancelled after the orphan grace period, which
// leaves time for a client to reattach with WaitExecution.
func (o *Operation) RemoveWaiter() {
	o.s.mu.Lock()
	defer o.s.mu.Unlock()
	o.waiters--
	// With shared state a client may follow the operation at another
	// replica, which this one cannot see: no orphan cancel there.
	if o.waiters > 0 || o.completedAt != (time.Time{}) || o.s.shared != nil {
		return
	}
	o.orphanTimer = time.AfterFunc(o.s.cfg.OrphanGrace, func() {
		o.s.mu.Lock()
		defer o.s.mu.Unlock()
		if o.waiters == 0 && o.completedAt == (time.Time{}) {
			o.s.logger.Info("cancelling operation nobody waits for", "operation", o.name, "action", o.action.String())
			o.s.cancelLocked(o, "no client is waiting for the operation any more")
		}
	})
}
