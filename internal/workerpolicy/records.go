package workerpolicy

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/hearth-build/hearth/internal/workerpool"
)

// keyRecord is what the policy knows of one pool key.
type keyRecord struct {
	clientKey string
	// routingKey is what the scheduler routes the key's actions by
	// (workeraction.RoutingKey of the client-visible Command).
	routingKey     string
	quarantined    string // why, or ""
	fallbacks      map[string]int64
	verified       int64
	mismatches     int64
	warmDurations  durations
	coldDurations  durations
	lastMismatches []string
}

// durations keeps the most recent action times for a median.
type durations struct {
	samples []time.Duration
	next    int
}

const durationSamples = 201

func (d *durations) add(x time.Duration) {
	if len(d.samples) < durationSamples {
		d.samples = append(d.samples, x)
		return
	}
	d.samples[d.next] = x
	d.next = (d.next + 1) % durationSamples
}

func (d *durations) median() time.Duration {
	if len(d.samples) == 0 {
		return 0
	}
	s := slices.Clone(d.samples)
	slices.Sort(s)
	return s[len(s)/2]
}

// record returns key's record, creating it; w.mu must be held.
func (w *Workers) record(key string) *keyRecord {
	r := w.keys[key]
	if r == nil {
		r = &keyRecord{fallbacks: map[string]int64{}}
		w.keys[key] = r
	}
	return r
}

// FallBack marks plan as running one-shot after all, for reason (one of the
// Reason values, or a word of the caller's such as "staging"), and counts it.
func (w *Workers) FallBack(plan *Plan, reason string, err error) {
	plan.Info.FellBack = true
	plan.Info.FallbackReason = reason
	if err != nil {
		plan.Info.FallbackReason += ": " + err.Error()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.record(plan.Spec.Key).fallbacks[reason]++
}

// Reason names the fallback that a pool error calls for.
func Reason(err error) string {
	switch {
	case errors.Is(err, workerpool.ErrNoCapacity):
		return "no_capacity"
	case errors.Is(err, workerpool.ErrStartFailed):
		return "start_failed"
	case errors.Is(err, workerpool.ErrWorkerFailed):
		return "worker_failed"
	default:
		return "error"
	}
}

// Served records an action that a worker of plan's key served in elapsed
// (the request alone), and remembers the key for prewarming.
func (w *Workers) Served(plan *Plan, elapsed time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.record(plan.Spec.Key)
	if plan.Info.Warm {
		r.warmDurations.add(elapsed)
	} else {
		r.coldDurations.add(elapsed)
	}
	w.servedLocked(plan.Spec, plan.Info.ClientKey)
}

// ShouldVerify draws whether this served action is also run one-shot.
func (w *Workers) ShouldVerify() bool {
	return w.opts.VerifyFraction > 0 && w.opts.Random() < w.opts.VerifyFraction
}

// Verified records the comparison of a worker's result with a one-shot run
// of the same action; diff lists what differs (see DiffResults). A
// difference quarantines the key and stops its processes, whose state is
// what differs. It reports whether the one-shot result must replace the
// worker's.
func (w *Workers) Verified(plan *Plan, diff []string) bool {
	plan.Info.Verified = true
	w.mu.Lock()
	r := w.record(plan.Spec.Key)
	r.verified++
	if len(diff) > 0 {
		r.mismatches++
		r.quarantined = "outputs differ from a one-shot run: " + strings.Join(diff, ", ")
		r.lastMismatches = slices.Clone(diff)
	}
	w.mu.Unlock()
	if len(diff) == 0 {
		return false
	}
	plan.Info.Mismatch = diff
	w.log.Error("persistent worker gave different outputs than a one-shot run; key quarantined",
		"key", plan.Spec.Key, "client_key", plan.Info.ClientKey, "differing", diff)
	w.pool.Quarantine(plan.Spec.Key)
	return true
}

// Damaged quarantines plan's key after one of its workers wrote through its
// read-only inputs (paths), stops its processes, and marks the plan as
// fallen back. The caller drops the damaged files from the cache.
func (w *Workers) Damaged(plan *Plan, paths []string) {
	why := "wrote to its read-only inputs: " + strings.Join(paths, ", ")
	w.mu.Lock()
	w.record(plan.Spec.Key).quarantined = why
	w.mu.Unlock()
	w.pool.Quarantine(plan.Spec.Key)
	w.log.Error("persistent worker damaged its inputs; key quarantined", "key", plan.Spec.Key, "inputs", paths)
	w.FallBack(plan, "damaged_inputs", errors.New(why))
}

// Quarantined reports why key is quarantined ("" when it is not).
func (w *Workers) Quarantined(key string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r := w.keys[key]; r != nil {
		return r.quarantined
	}
	return ""
}
