package scheduler

import (
	"container/heap"
	"slices"
	"strconv"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// A shape is one kind of action as executors see it: the platform properties
// that take part in matching (worker hints do not) and the action's timeout.
// Every queued action waits in its shape's queue, and each shape knows the
// executors that can run it, so that neither enqueueing nor dispatching ever
// scans the whole queue or every executor: a farm with a deep backlog pays
// O(log n) per action.
//
// The timeout is part of the shape because an executor's max_action_timeout
// decides whether it may take the action; clients use few distinct timeouts
// (Bazel's test sizes), so this adds few shapes.
type shape struct {
	key      string
	required []*repb.Platform_Property // the matching properties
	timeout  time.Duration

	queue opQueue
	// matching counts the connected executors that can run this shape.
	matching int
	// free holds the matching executors with a spare slot; each session
	// knows its index here (session.freeIdx).
	free []*session
	// lastUsed is when an action of this shape was last submitted; idle
	// empty shapes are forgotten by the sweeper.
	lastUsed time.Time
	// pending: the shared queue of this shape may hold work (Config.Shared).
	pending bool
	// retrying: a claim is due once actions left to warm workers at other
	// replicas are this replica's to take (shared_warm.go).
	retrying bool
}

// appendShapeKey appends the canonical form of the matching part of a
// platform to dst: properties sorted by name and value, case-insensitive
// values folded, hints dropped, then the timeout. Properties arrive sorted
// (REAPI requires it), so the common case sorts nothing and, with a stack
// buffer for dst, allocates nothing.
func appendShapeKey(dst []byte, props []*repb.Platform_Property, timeout time.Duration) []byte {
	if !slices.IsSortedFunc(props, compareProps) {
		props = slices.SortedFunc(slices.Values(props), compareProps)
	}
	for _, p := range props {
		if IsWorkerHint(p.GetName()) {
			continue
		}
		dst = strconv.AppendQuote(dst, p.GetName())
		dst = append(dst, '=')
		if caseInsensitive[p.GetName()] {
			dst = strconv.AppendQuote(dst, strings.ToLower(p.GetValue()))
		} else {
			dst = strconv.AppendQuote(dst, p.GetValue())
		}
		dst = append(dst, ',')
	}
	return strconv.AppendInt(dst, int64(timeout), 10)
}

func compareProps(a, b *repb.Platform_Property) int {
	if c := strings.Compare(a.GetName(), b.GetName()); c != 0 {
		return c
	}
	return strings.Compare(a.GetValue(), b.GetValue())
}

// shapeKey is appendShapeKey as a string.
func shapeKey(props []*repb.Platform_Property, timeout time.Duration) string {
	return string(appendShapeKey(nil, props, timeout))
}

// accepts reports whether executor capabilities c can run actions of sh.
func (sh *shape) acceptedBy(c *capabilities) bool {
	return c.acceptsTimeout(sh.timeout) && c.unmatched(sh.required) == nil
}

// shapeForLocked returns the shape of r, creating it (and linking every
// connected executor that matches it) on first use.
func (s *Scheduler) shapeForLocked(r Request) *shape {
	var buf [256]byte
	props, timeout := r.Platform.GetProperties(), actionTimeout(r)
	key := appendShapeKey(buf[:0], props, timeout)
	if sh := s.shapes[string(key)]; sh != nil {
		return sh
	}
	return s.newShapeLocked(string(key), props, timeout)
}

// newShapeLocked adds a shape and links the executors that match it.
func (s *Scheduler) newShapeLocked(key string, props []*repb.Platform_Property, timeout time.Duration) *shape {
	sh := &shape{key: key, timeout: timeout}
	for _, p := range props {
		if !IsWorkerHint(p.GetName()) {
			sh.required = append(sh.required, p)
		}
	}
	s.shapes[sh.key] = sh
	for e := range s.executors {
		if sh.acceptedBy(&e.caps) {
			s.linkLocked(e, sh)
		}
	}
	return sh
}

// linkLocked records that executor e can run shape sh.
func (s *Scheduler) linkLocked(e *session, sh *shape) {
	e.shapes[sh] = struct{}{}
	sh.matching++
	if e.free {
		sh.addFree(e)
	}
}

// unlinkLocked forgets that e can run sh (e left, or sh is forgotten).
func (s *Scheduler) unlinkLocked(e *session, sh *shape) {
	if _, ok := e.shapes[sh]; !ok {
		return
	}
	delete(e.shapes, sh)
	sh.matching--
	sh.removeFree(e)
}

func (sh *shape) addFree(e *session) {
	if _, ok := e.freeIdx[sh]; ok {
		return
	}
	e.freeIdx[sh] = len(sh.free)
	sh.free = append(sh.free, e)
}

func (sh *shape) removeFree(e *session) {
	i, ok := e.freeIdx[sh]
	if !ok {
		return
	}
	last := len(sh.free) - 1
	if i != last {
		moved := sh.free[last]
		sh.free[i] = moved
		moved.freeIdx[sh] = i
	}
	sh.free[last] = nil
	sh.free = sh.free[:last]
	delete(e.freeIdx, sh)
}

// updateFreeLocked keeps the shapes' free sets in step with e's capacity;
// call it after anything that changes e.tasks, e.accepting or e.dead. It
// costs O(shapes e matches), and only when e's state flips.
func (s *Scheduler) updateFreeLocked(e *session) {
	free := e.hasCapacity()
	if free == e.free {
		return
	}
	e.free = free
	for sh := range e.shapes {
		if free {
			sh.addFree(e)
		} else {
			sh.removeFree(e)
		}
	}
}

// opQueue is a heap of queued operations: lower priority value first (REAPI:
// lower runs sooner), then arrival.
type opQueue []*Operation

func (q opQueue) Len() int { return len(q) }

func (q opQueue) Less(i, j int) bool { return runsBefore(q[i], q[j]) }

func runsBefore(a, b *Operation) bool {
	if a.req.Priority != b.req.Priority {
		return a.req.Priority < b.req.Priority
	}
	return a.seq < b.seq
}

func (q opQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].heapIdx = i
	q[j].heapIdx = j
}

func (q *opQueue) Push(x any) {
	o := x.(*Operation)
	o.heapIdx = len(*q)
	*q = append(*q, o)
}

func (q *opQueue) Pop() any {
	old := *q
	n := len(old) - 1
	o := old[n]
	old[n] = nil
	o.heapIdx = -1
	*q = old[:n]
	return o
}

// pushLocked queues o in its shape.
func (s *Scheduler) pushLocked(o *Operation) {
	heap.Push(&o.shape.queue, o)
	s.queued++
}

// removeFromQueueLocked drops o from its queue if it waits there.
func (s *Scheduler) removeFromQueueLocked(o *Operation) {
	if o.heapIdx < 0 {
		return
	}
	heap.Remove(&o.shape.queue, o.heapIdx)
	s.queued--
}

// popLocked takes the next action of sh.
func (s *Scheduler) popLocked(sh *shape) *Operation {
	s.queued--
	return heap.Pop(&sh.queue).(*Operation)
}

// forgetIdleShapesLocked drops shapes with nothing queued that nobody used
// since before cutoff, so that a farm that once saw many shapes does not keep
// linking every new executor to all of them.
func (s *Scheduler) forgetIdleShapesLocked(cutoff time.Time) {
	for key, sh := range s.shapes {
		if sh.queue.Len() == 0 && sh.lastUsed.Before(cutoff) {
			for e := range s.executors {
				s.unlinkLocked(e, sh)
			}
			delete(s.shapes, key)
		}
	}
}
