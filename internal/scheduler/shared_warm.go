package scheduler

import (
	"context"
	"maps"
	"slices"
	"time"
)

// Warm-worker affinity across replicas (shared mode). Each replica
// advertises in the shared state the routing keys for which one of its
// executors with a free slot has an idle warm persistent worker (refreshed
// every poll, withdrawn as soon as it changes, lapsing by itself when the
// replica dies). A claim leaves a queued action of a routing key that the
// claiming replica is not warm for, but another replica is, to that replica
// for SharedWarmWait after it was queued: the warm replica hears of the
// action by pub/sub and claims it within a few ms; if it does not (its warm
// worker got busy meanwhile), the action is anyone's once the wait is over.
// Bounded: at most 16 deferred actions are looked past per claim, the wait
// is counted from the submission (a re-queued action is never deferred
// again), and advertisements cost one script call per change and per poll.

// freeWarmKeysLocked lists the routing keys sh's free executors have idle
// warm workers for.
func freeWarmKeysLocked(sh *shape) []string {
	var keys []string
	for _, e := range sh.free {
		for k, n := range e.warm {
			if n > 0 && !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// warmHereLocked is the set of routing keys this replica can start warm
// now: an executor with a free slot has an idle warm worker for it.
func (s *Scheduler) warmHereLocked() map[string]bool {
	keys := map[string]bool{}
	for k, set := range s.warm {
		for e := range set {
			if e.hasCapacity() {
				keys[k] = true
				break
			}
		}
	}
	return keys
}

// advertiseWarm publishes this replica's warm routing keys when they
// changed since the last advertisement, or always with refresh (the poll,
// which extends their lifetime).
func (s *Scheduler) advertiseWarm(refresh bool) {
	s.mu.Lock()
	now := s.warmHereLocked()
	s.mu.Unlock()
	s.advertiseMu.Lock()
	defer s.advertiseMu.Unlock()
	if !refresh && maps.Equal(now, s.advertised) {
		return
	}
	if len(now) == 0 && len(s.advertised) == 0 {
		return
	}
	var warm, gone []string
	for k := range now {
		warm = append(warm, k)
	}
	for k := range s.advertised {
		if !now[k] {
			gone = append(gone, k)
		}
	}
	ctx, cancel := context.WithTimeout(s.sharedCtx, sharedTimeout)
	defer cancel()
	// Three polls: a missed refresh or two do not withdraw it.
	if err := s.shared.AdvertiseWarm(ctx, s.replicaID, warm, gone, 3*s.cfg.SharedPoll); err != nil {
		s.logger.Warn("advertising warm workers in the shared scheduler state", "error", err)
		return
	}
	s.advertised = now
}

// retryShapeAfter claims from sh again once the actions this replica left
// to warm workers elsewhere are its to take (one timer per shape).
func (s *Scheduler) retryShapeAfter(sh *shape, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.retrying {
		return
	}
	sh.retrying = true
	time.AfterFunc(d, func() {
		s.mu.Lock()
		sh.retrying = false
		sh.pending = true
		s.mu.Unlock()
		s.kickClaim()
	})
}
