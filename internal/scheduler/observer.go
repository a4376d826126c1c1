package scheduler

import (
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
)

// Observer is told how operations move, for metrics and the status page. Its
// methods run under the scheduler's lock: they must be quick and must not call
// back into the scheduler.
type Observer interface {
	// Queued: the operation entered the queue (again, after its executor
	// went away, when Attempt > 0).
	Queued(OpEvent)
	// Started: the operation left the queue for Executor.
	Started(OpEvent)
	// Finished: the operation completed with Response (an action cache hit
	// finishes without being queued).
	Finished(OpEvent)
}

// OpEvent describes an operation at one event. Platform and Response are
// shared with the scheduler: read them, never change them.
type OpEvent struct {
	Name     string
	Instance string
	Action   digest.Digest
	Platform *repb.Platform
	// Executor is set for Started.
	Executor string
	// Attempt counts the times the action was given to an executor.
	Attempt  int
	QueuedAt time.Time
	Response *repb.ExecuteResponse
}

// Observers fans events out to each observer in turn.
type Observers []Observer

// Queued implements Observer.
func (obs Observers) Queued(e OpEvent) {
	for _, o := range obs {
		o.Queued(e)
	}
}

// Started implements Observer.
func (obs Observers) Started(e OpEvent) {
	for _, o := range obs {
		o.Started(e)
	}
}

// Finished implements Observer.
func (obs Observers) Finished(e OpEvent) {
	for _, o := range obs {
		o.Finished(e)
	}
}

// notify tells the configured observer, if any, about o.
func (s *Scheduler) notify(event func(Observer, OpEvent), o *Operation) {
	if s.cfg.Observer == nil {
		return
	}
	e := OpEvent{
		Name: o.name, Instance: o.instance, Action: o.action, Platform: o.req.Platform,
		Attempt: o.attempts, QueuedAt: o.queuedAt,
	}
	if o.executor != nil {
		e.Executor = o.executor.name
	}
	if st, _ := o.Watch(); st.Done() {
		e.Response = st.Response
	}
	event(s.cfg.Observer, e)
}
