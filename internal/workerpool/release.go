package workerpool

// Waiting for a worker being released (Options.ReleaseWait, default
// DefaultReleaseWait) rather than starting another or answering
// ErrNoCapacity: cleaning a workspace takes milliseconds, a cold start
// hundreds of them to seconds (a node or JVM tool), and a one-shot run of
// such a tool as much, so waiting is the cheaper choice until it has lasted
// about as long as a start-up. After that Acquire goes on as if the worker
// were busy.

// Releasing tells the pool that the caller is done with the worker and is
// about to end the lease (it is cleaning the workspace, after the action's
// result went back to its client), so the worker is nearly available: until
// Release or Discard, an Acquire of the key that finds no available worker
// waits for this one, up to Options.ReleaseWait, instead of starting
// another process or answering ErrNoCapacity. Nothing else changes: the
// lease still holds the worker, Release still checks its memory and
// invocations, and Discard still stops it. It must be called before Release
// or Discard; more calls, and calls after, are no-ops.
func (l *Lease) Releasing() {
	l.mu.Lock()
	defer l.mu.Unlock() // held throughout, so finish sees both or neither
	if l.released || l.releasing {
		return
	}
	l.releasing = true
	p, w := l.pool, l.w
	p.mu.Lock()
	defer p.mu.Unlock()
	w.releasing++
	if w.released == nil {
		w.released = make(chan struct{})
	}
}

// releasedLocked records the end of one of w's leases being released and
// wakes the Acquires waiting for it (they decide again: the worker may have
// been recycled meanwhile).
func (p *Pool) releasedLocked(w *worker) {
	w.releasing--
	close(w.released)
	w.released = nil
	if w.releasing > 0 {
		w.released = make(chan struct{})
	}
}

// releasingLocked returns the channel to wait on for a worker of kp that can
// take one more request as soon as one of its leases being released ends, or
// nil if there is none.
func (p *Pool) releasingLocked(kp *keyPool) <-chan struct{} {
	limit := kp.spec.maxInFlight(p.opts.MaxMultiplexRequests)
	for _, w := range kp.workers {
		if w.releasing > 0 && p.takesRequestAfterReleaseLocked(w, limit) {
			return w.released
		}
	}
	return nil
}

// takesRequestAfterReleaseLocked is takesRequestLocked with w's leases being
// released counted as ended.
func (p *Pool) takesRequestAfterReleaseLocked(w *worker, limit int) bool {
	return w.state == stateReady && w.inflight-w.releasing < limit && w.proc.failure() == nil &&
		(p.opts.MaxInvocations <= 0 || w.invocations < p.opts.MaxInvocations)
}
