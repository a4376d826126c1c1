package cas

import (
	"cmp"
	"slices"
)

// Eviction keeps a bounded Disk under MaxBytes, least recently used first.
//
// Use is recorded as a stamp per entry (see index.go), not as a list order, so
// the oldest entries are found by scanning. A scan does not pick one victim: it
// keeps the K oldest entries as candidates, sorted, and later evictions pop
// from them. That is still LRU order: every entry left out of the scan was
// newer than every candidate, stamps only grow, and a candidate used since the
// scan (its stamp changed) is skipped rather than evicted. A scan costs
// O(n log K) and happens once per K evictions, so a store of millions of blobs
// evicts each one for a few microseconds without slowing lookups.
//
// Approximations, all harmless: entries with equal stamps (found by one
// FindMissing) go in any order; an entry that was pinned during the scan is
// only reconsidered at the next scan.

type candidate struct {
	k     blobKey
	stamp int64
}

// evictor is the candidate list; guarded by Disk.evictMu.
type evictor struct {
	cands []candidate // ascending stamps
	next  int
}

const (
	minCandidates = 256
	maxCandidates = 1 << 16
)

// evict removes least recently used blobs while the store is over MaxBytes.
// It never removes a blob used at or after limit, which is the stamp of the
// blob whose commit triggered it, so a commit never evicts its own blob (nor
// one used since); if nothing older is left, the store stays over its bound
// until the next commit and a warning says why.
func (d *Disk) evict(limit int64) {
	if d.maxBytes == 0 || d.totalBytes.Load() <= d.maxBytes {
		return
	}
	d.evictMu.Lock()
	defer d.evictMu.Unlock()
	ev := &d.evictor
	scanned := false
	evicted, freed := 0, int64(0)
	for d.totalBytes.Load() > d.maxBytes {
		if ev.next >= len(ev.cands) {
			if scanned {
				d.logger.Warn("cas: disk store over its bound and every blob is in use or newer than the blob just stored",
					"bytes", d.totalBytes.Load(), "max_bytes", d.maxBytes)
				break
			}
			d.scanCandidates(limit)
			scanned = true
			continue
		}
		c := ev.cands[ev.next]
		if c.stamp >= limit {
			// Candidates are sorted and older than everything else:
			// nothing evictable is left for this commit.
			break
		}
		ev.next++
		if d.evictCandidate(c) {
			evicted++
			freed += c.k.size
			d.evictedBlobs.Add(1)
			d.evictedBytes.Add(c.k.size)
		}
	}
	if evicted > 0 {
		d.logger.Debug("cas: evicted blobs", "blobs", evicted, "bytes", freed, "now_bytes", d.totalBytes.Load())
	}
}

// evictCandidate removes c's blob if it is still present, unpinned and unused
// since the scan.
func (d *Disk) evictCandidate(c candidate) bool {
	s := &d.shards[c.k.shard()]
	s.mu.Lock()
	e := s.entries[c.k]
	if !e.present() || e.stamp.Load() != c.stamp || e.pins.Load() > 0 {
		s.mu.Unlock()
		return false
	}
	d.dropLocked(s, c.k, e)
	return true
}

// scanCandidates refills the candidate list with the oldest evictable entries
// used before limit.
func (d *Disk) scanCandidates(limit int64) {
	k := min(max(int(d.count.Load()/16), minCandidates), maxCandidates)
	h := d.evictor.cands[:0]
	for i := range d.shards {
		s := &d.shards[i]
		s.mu.RLock()
		for key, e := range s.entries {
			if !e.present() || e.pins.Load() > 0 {
				continue
			}
			st := e.stamp.Load()
			if st >= limit {
				continue
			}
			h = pushOldest(h, k, candidate{k: key, stamp: st})
		}
		s.mu.RUnlock()
	}
	slices.SortFunc(h, func(a, b candidate) int { return cmp.Compare(a.stamp, b.stamp) })
	d.evictor.cands = h
	d.evictor.next = 0
}

// pushOldest adds c to h, a max-heap by stamp holding at most k entries, so
// that h ends up with the k oldest entries pushed.
func pushOldest(h []candidate, k int, c candidate) []candidate {
	if len(h) < k {
		h = append(h, c)
		for i := len(h) - 1; i > 0; {
			p := (i - 1) / 2
			if h[p].stamp >= h[i].stamp {
				break
			}
			h[p], h[i] = h[i], h[p]
			i = p
		}
		return h
	}
	if c.stamp >= h[0].stamp {
		return h
	}
	h[0] = c
	for i := 0; ; {
		l, r, top := 2*i+1, 2*i+2, i
		if l < len(h) && h[l].stamp > h[top].stamp {
			top = l
		}
		if r < len(h) && h[r].stamp > h[top].stamp {
			top = r
		}
		if top == i {
			return h
		}
		h[i], h[top] = h[top], h[i]
		i = top
	}
}
