package workerpool

import (
	"maps"
	"slices"
	"strings"
)

// Reason says why a worker process was stopped.
type Reason string

// The reasons, as they appear in Stats.
const (
	ReasonMaxInvocations Reason = "max_invocations"
	ReasonIdleTimeout    Reason = "idle_timeout"
	ReasonMemoryLimit    Reason = "memory_limit"  // its own tree exceeded its limit
	ReasonMemoryBudget   Reason = "memory_budget" // evicted to stay under MaxTotalMemoryBytes
	ReasonToolChange     Reason = "tool_change"   // a newer key of its Family is in use
	ReasonFailure        Reason = "failure"       // died, closed stdout, broke the protocol
	ReasonCancelled      Reason = "cancelled"     // killed because a request was cancelled
	ReasonDiscarded      Reason = "discarded"     // the caller called Lease.Discard
	ReasonQuarantined    Reason = "quarantined"   // its outputs differed from a one-shot run
)

// KeyStats describes one pool key, or the whole pool when Key is empty.
type KeyStats struct {
	Key       string `json:"key,omitempty"`
	Family    string `json:"family,omitempty"`
	Protocol  string `json:"protocol,omitempty"`
	Multiplex bool   `json:"multiplex,omitempty"`
	// Live processes: being started, without a request, with requests.
	Starting int `json:"starting"`
	Idle     int `json:"idle"`
	Busy     int `json:"busy"`
	// InFlight is the number of leases held.
	InFlight int `json:"in_flight"`
	// MemoryBytes is the resident memory of the live processes, as last
	// measured.
	MemoryBytes uint64 `json:"memory_bytes"`
	// WarmHits counts acquisitions served by a process that had served
	// before; ColdStarts those that started a process; Prewarmed the
	// processes started ahead of demand; StartFailures the processes that
	// could not be started.
	WarmHits      int64 `json:"warm_hits"`
	ColdStarts    int64 `json:"cold_starts"`
	Prewarmed     int64 `json:"prewarmed"`
	StartFailures int64 `json:"start_failures"`
	// NoCapacity counts acquisitions refused with ErrNoCapacity.
	NoCapacity int64 `json:"no_capacity"`
	// ReleaseWaits counts acquisitions that waited for a lease being
	// released (Lease.Releasing) instead of starting a process.
	ReleaseWaits int64 `json:"release_waits,omitempty"`
	// Recycles counts stopped processes by reason (closing the pool is not
	// counted).
	Recycles map[Reason]int64 `json:"recycles,omitempty"`
}

// Stats is a snapshot of the pool for /status.
type Stats struct {
	// Total sums every key, including keys forgotten after going idle.
	Total KeyStats `json:"total"`
	// Keys lists the keys the pool currently knows, sorted by key.
	Keys []KeyStats `json:"keys"`
}

// counters are the cumulative parts of KeyStats.
type counters struct {
	warmHits, coldStarts, prewarmed, startFailures, noCapacity, releaseWaits int64
	recycles                                                                 map[Reason]int64
}

func (c *counters) recycled(r Reason) {
	if c.recycles == nil {
		c.recycles = map[Reason]int64{}
	}
	c.recycles[r]++
}

func (c *counters) add(o *counters) {
	c.warmHits += o.warmHits
	c.coldStarts += o.coldStarts
	c.prewarmed += o.prewarmed
	c.startFailures += o.startFailures
	c.noCapacity += o.noCapacity
	c.releaseWaits += o.releaseWaits
	for r, n := range o.recycles {
		if c.recycles == nil {
			c.recycles = map[Reason]int64{}
		}
		c.recycles[r] += n
	}
}

func (c *counters) fill(ks *KeyStats) {
	ks.WarmHits, ks.ColdStarts, ks.Prewarmed = c.warmHits, c.coldStarts, c.prewarmed
	ks.StartFailures, ks.NoCapacity, ks.ReleaseWaits = c.startFailures, c.noCapacity, c.releaseWaits
	if len(c.recycles) > 0 {
		ks.Recycles = maps.Clone(c.recycles)
	}
}

// Stats returns a snapshot of every key and the totals.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Stats{Keys: []KeyStats{}}
	total := p.forgotten
	total.recycles = maps.Clone(p.forgotten.recycles)
	for _, kp := range p.keys {
		ks := KeyStats{Key: kp.key, Family: kp.spec.Family, Protocol: kp.spec.Protocol.String(), Multiplex: kp.spec.Multiplex}
		kp.stats.fill(&ks)
		for _, w := range kp.workers {
			switch {
			case w.state == stateStarting:
				ks.Starting++
			case w.inflight == 0:
				ks.Idle++
			default:
				ks.Busy++
			}
			ks.InFlight += w.inflight
			ks.MemoryBytes += w.rss
		}
		total.add(&kp.stats)
		st.Total.Starting += ks.Starting
		st.Total.Idle += ks.Idle
		st.Total.Busy += ks.Busy
		st.Total.InFlight += ks.InFlight
		st.Total.MemoryBytes += ks.MemoryBytes
		st.Keys = append(st.Keys, ks)
	}
	total.fill(&st.Total)
	slices.SortFunc(st.Keys, func(a, b KeyStats) int { return strings.Compare(a.Key, b.Key) })
	return st
}

// WarmKeys returns, sorted, the keys that have a started process able to
// take a request now, or as soon as a lease being released ends (Acquire
// waits for that), for the scheduler's routing.
func (p *Pool) WarmKeys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var keys []string
	for _, kp := range p.keys {
		if p.availableLocked(kp) != nil || p.releasingLocked(kp) != nil {
			keys = append(keys, kp.key)
		}
	}
	slices.Sort(keys)
	return keys
}

// WarmCapacity returns, per key, how many more requests started processes
// can take now without a cold start (idle singleplex workers, plus the free
// request slots of multiplex ones; a lease being released counts as free),
// for the scheduler's routing.
func (p *Pool) WarmCapacity() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, kp := range p.keys {
		limit := kp.spec.maxInFlight(p.opts.MaxMultiplexRequests)
		n := 0
		for _, w := range kp.workers {
			if p.takesRequestAfterReleaseLocked(w, limit) {
				n += limit - (w.inflight - w.releasing)
			}
		}
		if n > 0 {
			out[kp.key] = n
		}
	}
	return out
}
