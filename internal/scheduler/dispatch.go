package scheduler

import (
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// Dispatch keeps one invariant: no shape has both a queued action and a free
// executor. An arriving action therefore either takes one of its shape's
// free executors at once or queues, and an executor that frees a slot takes
// the most urgent head of the shapes it matches. Neither looks at the rest
// of the queue.

// placeLocked runs o on the best free executor of its shape, or queues it.
func (s *Scheduler) placeLocked(o *Operation, sh *shape) {
	o.shape = sh
	// Observers see every action enter the queue, also those that leave it
	// at once: the time between is the queue wait.
	s.notify(Observer.Queued, o)
	if e := s.pickLocked(sh, o.routeKey); e != nil {
		s.assignLocked(o, e)
		return
	}
	s.seq++
	o.seq = s.seq
	s.pushLocked(o)
}

// pickLocked ranks the free executors of sh: first those whose view still
// has an idle warm worker for the action's routing key, then the least
// loaded; among warm ones of equal load, the one with more warm workers. A
// busy warm executor is never waited for, and as assignments use up an
// executor's warm workers the burst spreads to the others.
func (s *Scheduler) pickLocked(sh *shape, routeKey string) *session {
	if len(sh.free) == 0 {
		return nil
	}
	if routeKey != "" {
		var best *session
		for e := range s.warm[routeKey] {
			if _, free := e.freeIdx[sh]; !free {
				continue
			}
			if best == nil || e.load() < best.load() ||
				e.load() == best.load() && e.warm[routeKey] > best.warm[routeKey] {
				best = e
			}
		}
		if best != nil {
			return best
		}
	}
	best := sh.free[0]
	for _, e := range sh.free[1:] {
		if best.load() == 0 {
			break // nothing beats an idle executor
		}
		if e.load() < best.load() {
			best = e
		}
	}
	return best
}

// pullLocked fills e's free slots with the most urgent actions among the
// heads of the shapes it matches.
func (s *Scheduler) pullLocked(e *session) {
	for e.hasCapacity() {
		var best *shape
		for sh := range e.shapes {
			if sh.queue.Len() > 0 && (best == nil || runsBefore(sh.queue[0], best.queue[0])) {
				best = sh
			}
		}
		if best == nil {
			return
		}
		s.assignLocked(s.popLocked(best), e)
	}
}

func (s *Scheduler) assignLocked(o *Operation, e *session) {
	o.attempts++
	o.taskID = taskIDOf(o)
	o.executor = e
	if n := e.warm[o.routeKey]; o.routeKey != "" && n > 0 {
		// The executor will use one of its idle warm workers; until it
		// reports again, the next action of the key looks elsewhere.
		s.setWarmLocked(e, o.routeKey, n-1)
	}
	e.assign(o)
	// The executor starts an assigned action at once (its slot was free),
	// so the stage changes here rather than on a Started message: one
	// message less per action on the worker stream.
	o.setStage(repb.ExecutionStage_EXECUTING, nil)
	s.notify(Observer.Started, o)
	s.updateFreeLocked(e)
}

// setWarmLocked sets e's view of idle warm workers for key and keeps the
// per-key index in step.
func (s *Scheduler) setWarmLocked(e *session, key string, n int32) {
	if n <= 0 {
		delete(e.warm, key)
		if set := s.warm[key]; set != nil {
			delete(set, e)
			if len(set) == 0 {
				delete(s.warm, key)
			}
		}
		return
	}
	e.warm[key] = n
	set := s.warm[key]
	if set == nil {
		set = map[*session]struct{}{}
		s.warm[key] = set
	}
	set[e] = struct{}{}
}

// reportWarmLocked replaces e's warm view with a fresh report.
func (s *Scheduler) reportWarmLocked(e *session, counts map[string]int32) {
	for key := range e.warm {
		if _, ok := counts[key]; !ok {
			s.setWarmLocked(e, key, 0)
		}
	}
	for key, n := range counts {
		s.setWarmLocked(e, key, n)
	}
}
