package workerpool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hearth-build/hearth/internal/fsutil"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// Lease is the right to send one request to one worker process. Release (or
// Discard) must be called exactly once when the caller is done with Dir;
// more calls are harmless.
type Lease struct {
	pool       *Pool
	w          *worker
	requestID  int32
	sandboxRel string
	dir        string
	warm       bool
	invocation int

	mu        sync.Mutex
	used      bool
	releasing bool
	released  bool
}

// Dir is where this request's inputs go and its outputs appear: the
// worker's workspace (its working directory, holding the tool files), or
// for a sandboxing multiplex worker a fresh directory inside it that is
// removed on Release, or Spec.WorkDir when set.
func (l *Lease) Dir() string { return l.dir }

// SandboxDir is Dir relative to the worker's working directory, as it goes
// in WorkRequest.sandbox_dir; "" unless the worker is sandboxing multiplex.
func (l *Lease) SandboxDir() string { return l.sandboxRel }

// Warm reports whether the process was already running, so no start-up
// happened for this request.
func (l *Lease) Warm() bool { return l.warm }

// Invocation is this request's number on its process (1 = first).
func (l *Lease) Invocation() int { return l.invocation }

// Memo returns what SetMemo last stored on this lease's worker process (nil
// at first, and for a worker that keeps no memo). The caller uses it to
// remember what it left in the workspace for the next request, so only a
// worker that serves one request at a time in its own workspace keeps one:
// a singleplex worker without Spec.WorkDir. The memo dies with the process.
func (l *Lease) Memo() any {
	l.pool.mu.Lock()
	defer l.pool.mu.Unlock()
	return l.w.memo
}

// SetMemo stores v for the next lease on this worker process (see Memo); a
// no-op for a worker that keeps no memo.
func (l *Lease) SetMemo(v any) {
	if !l.KeepsMemo() {
		return
	}
	l.pool.mu.Lock()
	defer l.pool.mu.Unlock()
	l.w.memo = v
}

// KeepsMemo reports whether SetMemo stores anything for this worker.
func (l *Lease) KeepsMemo() bool {
	return !l.w.spec.Multiplex && l.w.spec.WorkDir == "" && l.sandboxRel == ""
}

// PID is the process id of the worker (of bwrap, when sandboxed).
func (l *Lease) PID() int { return l.w.proc.pid }

// RequestID is the request_id this lease's request carries (0 for
// singleplex workers).
func (l *Lease) RequestID() int32 { return l.requestID }

// Do sends req and waits for its response. It sets req's request_id and
// sandbox_dir and clears cancel. A response with any exit_code is a
// success. Errors:
//   - ErrWorkerFailed: no trustworthy response (the process died, closed its
//     stdout, broke the protocol); it has been killed and will be discarded.
//   - an error wrapping ctx's error when ctx ended first; see the package
//     comment for how the request is cancelled.
//   - ErrLeaseDone when the lease was used or released before.
func (l *Lease) Do(ctx context.Context, req *pb.WorkRequest) (*pb.WorkResponse, error) {
	if req == nil {
		return nil, errors.New("workerpool: nil WorkRequest")
	}
	l.mu.Lock()
	if l.used || l.released {
		l.mu.Unlock()
		return nil, ErrLeaseDone
	}
	l.used = true
	l.mu.Unlock()

	req.RequestId, req.SandboxDir, req.Cancel = l.requestID, l.sandboxRel, false
	pr := l.w.proc
	replies, err := pr.register(l.requestID)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		pr.unregister(l.requestID)
		return nil, fmt.Errorf("workerpool: request %d not sent: %w", l.requestID, err)
	}
	// Written from another goroutine so that a worker that stops reading
	// its stdin cannot block us past ctx.
	written := make(chan error, 1)
	go func() { written <- pr.send(req) }()
	sent := false
	for {
		select {
		case err := <-written:
			written = nil
			if err != nil {
				pr.fail(fmt.Errorf("writing request %d: %w", l.requestID, err))
				r := <-replies
				return r.resp, r.err
			}
			sent = true
		case r := <-replies:
			return r.resp, r.err
		case <-ctx.Done():
			return nil, l.abandon(ctx, replies, sent)
		}
	}
}

// abandon ends a request whose ctx is done: it asks a cancellable worker to
// cancel it and waits briefly for the answer, and otherwise kills the
// worker, since it would go on working for nobody and its workspace would
// change under the next request.
func (l *Lease) abandon(ctx context.Context, replies chan reply, sent bool) error {
	pr, id := l.w.proc, l.requestID
	select {
	case r := <-replies:
		// The answer came at the same moment: nothing to cancel, and a
		// cancel for a finished request could confuse the worker.
		if r.err != nil {
			return fmt.Errorf("workerpool: request %d cancelled (%w); the worker failed meanwhile: %v", id, ctx.Err(), r.err)
		}
		return fmt.Errorf("workerpool: request %d cancelled as it completed: %w", id, ctx.Err())
	default:
	}
	if l.w.spec.Cancellable && sent {
		go func() {
			// A failed write shows up as the process failing.
			_ = pr.send(&pb.WorkRequest{RequestId: id, Cancel: true})
		}()
		timer := time.NewTimer(l.pool.opts.CancelGrace)
		defer timer.Stop()
		select {
		case r := <-replies:
			if r.err != nil {
				return fmt.Errorf("workerpool: request %d cancelled (%w); the worker failed meanwhile: %v", id, ctx.Err(), r.err)
			}
			return fmt.Errorf("workerpool: request %d cancelled, the worker answered (was_cancelled=%t): %w",
				id, r.resp.GetWasCancelled(), ctx.Err())
		case <-timer.C:
		}
	}
	l.pool.markKilled(l.w, ReasonCancelled)
	pr.fail(fmt.Errorf("killed: request %d cancelled: %w", id, ctx.Err()))
	return fmt.Errorf("workerpool: request %d cancelled, worker %s killed: %w", id, pr.name, ctx.Err())
}

// Release ends the lease and returns the worker to the pool, unless it
// failed, reached max_invocations, or exceeds its memory limit: then it is
// stopped.
func (l *Lease) Release() { l.finish(false) }

// Discard ends the lease and stops the worker: use it when the worker can no
// longer be trusted (its result failed verification, or its workspace could
// not be cleaned).
func (l *Lease) Discard() { l.finish(true) }

func (l *Lease) finish(discard bool) {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return
	}
	l.released = true
	l.mu.Unlock() // l.releasing is fixed from here on

	p, w := l.pool, l.w
	if l.sandboxRel != "" {
		_ = fsutil.RemoveAll(l.dir)
	}
	limit := p.opts.memoryLimit(w.spec)
	var rss uint64
	measured := false
	if !discard && limit > 0 && w.proc.failure() == nil {
		if sum, err := measureTree(w.proc.pid); err == nil {
			rss, measured = sum, true
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	w.inflight--
	w.lastUsed = p.opts.Now()
	if l.releasing {
		p.releasedLocked(w)
	}
	if measured {
		w.rss = rss
		w.kp.peakRSS = max(w.kp.peakRSS, rss)
	}
	if w.state == stateRetired {
		return
	}
	if w.state == stateReady {
		switch {
		case w.proc.failure() != nil: // before its failure callback ran
			w.state, w.reason = stateDraining, ReasonFailure
			if w.killReason != "" {
				w.reason = w.killReason
			}
		case discard:
			w.state, w.reason = stateDraining, ReasonDiscarded
		case p.opts.MaxInvocations > 0 && w.invocations >= p.opts.MaxInvocations:
			w.state, w.reason = stateDraining, ReasonMaxInvocations
		case measured && rss > limit:
			w.state, w.reason = stateDraining, ReasonMemoryLimit
		}
	}
	if w.state == stateDraining && w.inflight == 0 {
		p.retireLocked(w, w.reason)
		if w.reason != ReasonToolChange {
			p.topUpLocked(w.kp)
		}
	}
}

// markKilled records why the pool is about to kill w, for its statistics.
func (p *Pool) markKilled(w *worker, reason Reason) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.killReason == "" {
		w.killReason = reason
	}
}
