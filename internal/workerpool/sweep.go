package workerpool

import (
	"fmt"
	"slices"
	"time"
)

// forgetKeyAfter is how long a key without processes keeps its statistics
// (and its Spec for prewarming) after its last acquisition, unless
// IdleTimeout is longer. Its counters then move to Stats.Total.
const forgetKeyAfter = 15 * time.Minute

func (p *Pool) sweepLoop() {
	defer close(p.sweepDone)
	ticker := time.NewTicker(p.opts.SweepInterval)
	defer ticker.Stop()
	for {
		select {
		case <-p.life.Done():
			return
		case <-ticker.C:
			p.sweep()
		}
	}
}

// sweep stops idle workers past IdleTimeout or over their memory limit,
// evicts idle workers while the total exceeds MaxTotalMemoryBytes, and
// forgets keys long unused.
func (p *Pool) sweep() {
	p.measure()
	now := p.opts.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	for _, kp := range p.keys {
		for _, w := range slices.Clone(kp.workers) {
			if w.inflight > 0 {
				continue
			}
			limit := p.opts.memoryLimit(w.spec)
			switch {
			case w.state == stateDraining: // safety net; Release normally does this
				p.retireLocked(w, w.reason)
			case w.state != stateReady:
			case p.opts.IdleTimeout > 0 && now.Sub(w.lastUsed) >= p.opts.IdleTimeout:
				p.retireLocked(w, ReasonIdleTimeout)
			case limit > 0 && w.rss > limit:
				p.retireLocked(w, ReasonMemoryLimit)
			}
		}
	}
	if budget := p.opts.MaxTotalMemoryBytes; budget > 0 {
		total := p.totalRSSLocked()
		for _, w := range p.idleByAgeLocked(nil) {
			if total <= budget {
				break
			}
			p.retireLocked(w, ReasonMemoryBudget)
			total -= min(total, w.rss)
		}
	}
	forgetAfter := max(forgetKeyAfter, p.opts.IdleTimeout)
	for key, kp := range p.keys {
		if len(kp.workers) == 0 && now.Sub(kp.lastAcquired) >= forgetAfter {
			p.forgotten.add(&kp.stats)
			delete(p.keys, key)
		}
	}
}

// measure samples the resident memory of every started worker's tree with
// one pass over /proc, outside the lock.
func (p *Pool) measure() {
	p.mu.Lock()
	var ws []*worker
	var pids []int
	for _, kp := range p.keys {
		for _, w := range kp.workers {
			if w.proc != nil {
				ws, pids = append(ws, w), append(pids, w.proc.pid)
			}
		}
	}
	p.mu.Unlock()
	sums, err := measureTrees(pids)
	if err != nil {
		p.log.Warn("measuring worker memory", "error", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range ws {
		w.rss = sums[w.proc.pid]
		w.kp.peakRSS = max(w.kp.peakRSS, w.rss)
	}
}

func (p *Pool) totalRSSLocked() uint64 {
	var total uint64
	for _, kp := range p.keys {
		for _, w := range kp.workers {
			total += w.rss
		}
	}
	return total
}

// idleByAgeLocked returns the idle started workers of every key but except,
// least recently used first.
func (p *Pool) idleByAgeLocked(except *keyPool) []*worker {
	var idle []*worker
	for _, kp := range p.keys {
		if kp == except {
			continue
		}
		for _, w := range kp.workers {
			if w.state == stateReady && w.inflight == 0 {
				idle = append(idle, w)
			}
		}
	}
	slices.SortFunc(idle, func(a, b *worker) int { return a.lastUsed.Compare(b.lastUsed) })
	return idle
}

// makeRoomLocked reports whether a new worker of kp, estimated at need
// bytes, fits in MaxTotalMemoryBytes. With evict it first stops idle
// workers of other keys, least recently used first, but only if that is
// enough: stopping warm workers for nothing would only cost their next use.
func (p *Pool) makeRoomLocked(kp *keyPool, need uint64, evict bool) bool {
	budget := p.opts.MaxTotalMemoryBytes
	if budget == 0 {
		return true
	}
	total := p.totalRSSLocked()
	if total+need <= budget {
		return true
	}
	if !evict {
		return false
	}
	idle := p.idleByAgeLocked(kp)
	var freeable uint64
	for _, w := range idle {
		freeable += w.rss
	}
	if total-min(total, freeable)+need > budget {
		return false
	}
	for _, w := range idle {
		if total+need <= budget {
			break
		}
		p.retireLocked(w, ReasonMemoryBudget)
		total -= min(total, w.rss)
	}
	return true
}

// topUpLocked starts workers of kp in the background until it has
// Options.Prewarm idle or starting ones, within MaxWorkersPerKey and
// without evicting anything for it.
func (p *Pool) topUpLocked(kp *keyPool) {
	if p.closed || p.opts.Prewarm == 0 || p.keys[kp.key] != kp {
		return
	}
	spare := 0
	limit := kp.spec.maxInFlight(p.opts.MaxMultiplexRequests)
	for _, w := range kp.workers {
		if (w.state == stateStarting && w.inflight == 0) || (w.state == stateReady && w.inflight < limit) {
			spare++
		}
	}
	for spare < p.opts.Prewarm && len(kp.workers) < p.opts.MaxWorkersPerKey && p.makeRoomLocked(kp, kp.peakRSS, false) {
		kp.stats.prewarmed++
		w := p.newWorkerLocked(kp)
		go p.prewarm(w)
		spare++
	}
}

// Warm starts up to n idle workers of spec's key ahead of demand (bounded by
// MaxWorkersPerKey and the memory budget), for an executor that knows from
// its history which keys it will be asked for. It does not wait for them to
// start.
func (p *Pool) Warm(spec *Spec, n int) error {
	if err := spec.validate(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	kp := p.keys[spec.Key]
	if kp == nil {
		kp = &keyPool{key: spec.Key, spec: spec.clone(), lastAcquired: p.opts.Now()}
		p.keys[spec.Key] = kp
	} else if !kp.spec.sameProcess(spec) {
		return fmt.Errorf("%w: key %s is already used by workers with a different command line", ErrInvalidSpec, spec.Key)
	}
	for started := 0; started < n && len(kp.workers) < p.opts.MaxWorkersPerKey && p.makeRoomLocked(kp, kp.peakRSS, false); started++ {
		kp.stats.prewarmed++
		w := p.newWorkerLocked(kp)
		go p.prewarm(w)
	}
	return nil
}
