package workerpool

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/sandbox"
)

// Pool owns every persistent worker process of an executor. Its methods are
// safe for concurrent use.
type Pool struct {
	opts       Options
	log        *slog.Logger
	bwrap      string // the bubblewrap binary, when sandboxing
	dir        string // Options.Dir with symlinks resolved (bwrap binds real paths)
	workspaces string
	logs       string

	// life ends at Close: it stops the sweeper and aborts Prepare calls.
	life      context.Context
	endLife   context.CancelFunc
	sweepDone chan struct{}
	// bg counts goroutines that start or stop processes; Close waits for
	// them so that no process outlives it.
	bg sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	keys      map[string]*keyPool
	nextID    uint64
	forgotten counters // of keys dropped after going idle
}

// keyPool is the state of one key. Guarded by Pool.mu.
type keyPool struct {
	key          string
	spec         *Spec // the latest one acquired, for prewarming
	workers      []*worker
	lastAcquired time.Time
	peakRSS      uint64 // the largest tree seen: the estimate for a new process
	stats        counters
}

type workerState int

const (
	stateStarting workerState = iota
	stateReady
	stateDraining // takes no new requests; stopped when the last one ends
	stateRetired  // removed from its key; its process is being stopped
)

// worker is the pool's view of one process. Guarded by Pool.mu, except for
// the fields fixed at creation.
type worker struct {
	id        uint64
	kp        *keyPool
	spec      *Spec
	workspace string

	proc        *process // nil until started
	log         *stderrLog
	state       workerState
	reason      Reason // why it is draining
	killReason  Reason // set just before the pool kills it on purpose
	inflight    int
	invocations int
	nextReqID   int32
	lastUsed    time.Time
	rss         uint64
	memo        any // see Lease.Memo
	// releasing counts the leases of inflight being released (see
	// Lease.Releasing); released is closed when one of them ends.
	releasing int
	released  chan struct{}
}

// New empties opts.Dir, checks the sandbox, and starts the idle sweeper.
func New(opts Options) (*Pool, error) {
	if err := opts.validateAndDefault(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("workerpool: %w", err)
	}
	dir, err := filepath.EvalSymlinks(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("workerpool: %w", err)
	}
	if err := removeContents(dir); err != nil {
		return nil, fmt.Errorf("workerpool: emptying %s: %w", dir, err)
	}
	p := &Pool{
		opts:       opts,
		log:        opts.Logger.With("component", "workerpool"),
		dir:        dir,
		workspaces: filepath.Join(dir, "workspaces"),
		logs:       filepath.Join(dir, "logs"),
		keys:       map[string]*keyPool{},
		sweepDone:  make(chan struct{}),
	}
	for _, d := range []string{p.workspaces, p.logs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("workerpool: %w", err)
		}
	}
	if opts.Sandbox == sandbox.Bwrap {
		if p.bwrap, err = sandbox.Find(opts.BwrapPath); err != nil {
			return nil, err
		}
		if err := sandbox.Probe(context.Background(), p.bwrap, dir); err != nil {
			return nil, err
		}
	}
	p.life, p.endLife = context.WithCancel(context.Background())
	go p.sweepLoop()
	return p, nil
}

// Acquire returns a lease on a worker of spec.Key: an available started
// process, else one whose lease is being released (see Lease.Releasing),
// waited for up to Options.ReleaseWait, else a new one (its start-up is
// part of this call), else ErrNoCapacity. See the package comment for why it never waits
// for a busy worker. The lease must be released.
func (p *Pool) Acquire(ctx context.Context, spec *Spec) (*Lease, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("workerpool: acquiring a worker of key %s: %w", spec.Key, err)
	}
	measured, mayWait := false, true
	var waitUntil <-chan time.Time
	for {
		p.mu.Lock()
		step := p.acquireLocked(spec, measured, mayWait)
		p.mu.Unlock()
		switch {
		case step.err != nil:
			return nil, step.err
		case step.lease != nil:
			if err := p.makeSandboxDir(step.lease); err != nil {
				return nil, err
			}
			return step.lease, nil
		case step.needMeasure:
			p.measure()
			measured = true
			continue
		case step.released != nil:
			if waitUntil == nil {
				timer := time.NewTimer(p.opts.ReleaseWait)
				defer timer.Stop()
				waitUntil = timer.C
			}
			select {
			case <-step.released:
			case <-waitUntil:
				mayWait = false // longer than a start-up is worth: go on without it
			case <-ctx.Done():
				return nil, fmt.Errorf("workerpool: acquiring a worker of key %s: %w", spec.Key, ctx.Err())
			}
			continue
		}
		return p.startForLease(ctx, step.starting)
	}
}

// acquireStep is what Acquire does next; exactly one field is set.
type acquireStep struct {
	lease       *Lease          // on an available worker
	starting    *worker         // reserved, to be started by the caller
	needMeasure bool            // measure memory, then decide again
	released    <-chan struct{} // wait for a lease being released, then decide again
	err         error
}

// acquireLocked decides what Acquire does next. mayWait allows waiting for a
// worker whose lease is being released.
func (p *Pool) acquireLocked(spec *Spec, measured, mayWait bool) acquireStep {
	if p.closed {
		return acquireStep{err: ErrClosed}
	}
	kp := p.keys[spec.Key]
	if kp == nil {
		kp = &keyPool{key: spec.Key, spec: spec.clone()}
		p.keys[spec.Key] = kp
	} else if !kp.spec.sameProcess(spec) {
		return acquireStep{err: fmt.Errorf("%w: key %s is already used by workers with a different command line, environment, protocol or capabilities",
			ErrInvalidSpec, spec.Key)}
	} else {
		kp.spec = spec.clone() // newer Tools and limits, for prewarming
	}
	kp.lastAcquired = p.opts.Now()
	p.retireFamilyLocked(kp)

	if w := p.availableLocked(kp); w != nil {
		kp.stats.warmHits++
		lease := p.leaseLocked(w, true)
		p.topUpLocked(kp)
		return acquireStep{lease: lease}
	}
	if mayWait {
		if released := p.releasingLocked(kp); released != nil {
			kp.stats.releaseWaits++
			return acquireStep{released: released}
		}
	}
	if len(kp.workers) >= p.opts.MaxWorkersPerKey {
		kp.stats.noCapacity++
		return acquireStep{err: fmt.Errorf("%w: key %s has %d of %d workers, all busy", ErrNoCapacity,
			spec.Key, len(kp.workers), p.opts.MaxWorkersPerKey)}
	}
	if p.opts.MaxTotalMemoryBytes > 0 {
		if !measured && p.liveWorkersLocked() > 0 {
			return acquireStep{needMeasure: true}
		}
		if !p.makeRoomLocked(kp, kp.peakRSS, true) {
			kp.stats.noCapacity++
			return acquireStep{err: fmt.Errorf("%w: starting a worker of key %s would exceed max_total_memory_bytes (%d)",
				ErrNoCapacity, spec.Key, p.opts.MaxTotalMemoryBytes)}
		}
	}
	kp.stats.coldStarts++
	w := p.newWorkerLocked(kp)
	w.inflight, w.invocations = 1, 1 // reserved for this caller
	return acquireStep{starting: w}
}

// availableLocked returns the started worker of kp that should take the next
// request, or nil. It packs requests onto busy multiplex processes first, and
// otherwise prefers the most recently used process so that surplus ones idle
// out.
func (p *Pool) availableLocked(kp *keyPool) *worker {
	limit := kp.spec.maxInFlight(p.opts.MaxMultiplexRequests)
	var best *worker
	for _, w := range kp.workers {
		if !p.takesRequestLocked(w, limit) {
			continue
		}
		if best == nil || w.inflight > best.inflight ||
			(w.inflight == best.inflight && w.lastUsed.After(best.lastUsed)) {
			best = w
		}
	}
	return best
}

// takesRequestLocked reports whether w can take one more request now.
func (p *Pool) takesRequestLocked(w *worker, limit int) bool {
	return w.state == stateReady && w.inflight < limit && w.proc.failure() == nil &&
		(p.opts.MaxInvocations <= 0 || w.invocations < p.opts.MaxInvocations)
}

// newWorkerLocked reserves a worker slot of kp in state starting. The caller
// starts it; Close waits for that.
func (p *Pool) newWorkerLocked(kp *keyPool) *worker {
	p.nextID++
	w := &worker{
		id:        p.nextID,
		kp:        kp,
		spec:      kp.spec,
		workspace: filepath.Join(p.workspaces, fmt.Sprint(p.nextID)),
		state:     stateStarting,
		lastUsed:  p.opts.Now(),
	}
	kp.workers = append(kp.workers, w)
	p.bg.Add(1)
	return w
}

// startForLease starts the worker Acquire reserved and returns its lease.
func (p *Pool) startForLease(ctx context.Context, w *worker) (*Lease, error) {
	defer p.bg.Done()
	if err := p.startWorker(ctx, w); err != nil {
		return nil, err
	}
	p.mu.Lock()
	switch w.state {
	case stateRetired: // the pool closed meanwhile; the process is being stopped
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: key %s: the worker was stopped while starting", ErrStartFailed, w.kp.key)
	case stateStarting:
		w.state = stateReady
	}
	lease := p.leaseLocked(w, false)
	p.topUpLocked(w.kp)
	p.mu.Unlock()
	if err := p.makeSandboxDir(lease); err != nil {
		return nil, err
	}
	return lease, nil
}

// prewarm starts a worker nobody is waiting for yet.
func (p *Pool) prewarm(w *worker) {
	defer p.bg.Done()
	if err := p.startWorker(p.life, w); err != nil {
		p.log.Warn("prewarming a worker failed", "key", w.kp.key, "error", err)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch w.state {
	case stateStarting:
		w.state = stateReady
		w.lastUsed = p.opts.Now()
	case stateDraining: // outdated by a newer key of its family meanwhile
		p.retireLocked(w, w.reason)
	}
}

// startWorker prepares the workspace of w and starts its process. On error
// the worker is gone from its key and its files are removed.
func (p *Pool) startWorker(ctx context.Context, w *worker) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.life, cancel)()
	logPath := filepath.Join(p.logs, fmt.Sprintf("%d.log", w.id))
	defer func() {
		if err != nil {
			p.mu.Lock()
			if w.state != stateRetired {
				w.kp.stats.startFailures++
				p.removeLocked(w)
			}
			p.mu.Unlock()
			_ = fsutil.RemoveAll(w.workspace)
			_ = os.Remove(logPath)
		}
	}()
	if err := os.Mkdir(w.workspace, 0o755); err != nil {
		return fmt.Errorf("%w: key %s: %w", ErrStartFailed, w.kp.key, err)
	}
	if p.opts.Prepare != nil {
		if err := p.opts.Prepare(ctx, w.workspace, w.spec); err != nil {
			return fmt.Errorf("%w: key %s: preparing workspace %s: %w", ErrStartFailed, w.kp.key, w.workspace, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: key %s: %w", ErrStartFailed, w.kp.key, err)
	}
	req, err := p.command(w)
	if err != nil {
		return err
	}
	log, err := newStderrLog(logPath, p.opts.MaxLogBytes)
	if err != nil {
		return fmt.Errorf("%w: key %s: %w", ErrStartFailed, w.kp.key, err)
	}
	pr, err := startProcess(req, filepath.Base(w.spec.Argv[0]), w.spec.Protocol, p.opts.MaxResponseBytes, log,
		func(err error) { p.workerDied(w, err) })
	if err != nil {
		log.Close()
		return fmt.Errorf("%w: key %s: %w", ErrStartFailed, w.kp.key, err)
	}
	p.mu.Lock()
	w.proc, w.log = pr, log
	retired := w.state == stateRetired // by Close, or it died in a prewarm slot
	p.mu.Unlock()
	if retired {
		pr.stop("pool closed")
		_ = fsutil.RemoveAll(w.workspace)
		log.Remove()
		return fmt.Errorf("%w: key %s: stopped while starting: %w", ErrStartFailed, w.kp.key, pr.failure())
	}
	p.log.Debug("worker started", "key", w.kp.key, "pid", pr.pid, "workspace", w.workspace)
	return nil
}

// leaseLocked hands out one request on w. fromPool is false for the caller
// that started w.
func (p *Pool) leaseLocked(w *worker, fromPool bool) *Lease {
	if fromPool {
		w.inflight++
		w.invocations++
	}
	l := &Lease{pool: p, w: w, warm: fromPool, invocation: w.invocations, dir: w.workspace}
	if w.spec.WorkDir != "" {
		l.dir = w.spec.WorkDir
	}
	if w.spec.Multiplex {
		w.nextReqID++
		if w.nextReqID <= 0 {
			w.nextReqID = 1
		}
		l.requestID = w.nextReqID
	}
	if w.spec.Sandboxing {
		l.sandboxRel = filepath.Join(sandboxParent, fmt.Sprint(l.requestID))
		l.dir = filepath.Join(w.workspace, l.sandboxRel)
	}
	return l
}

// sandboxParent holds the per-request directories of sandboxing multiplex
// workers, inside the workspace, apart from the tool files.
const sandboxParent = SandboxRoot

// SandboxRoot is the directory inside a workspace that holds the per-request
// sandbox directories of multiplex workers; the caller leaves it alone when
// cleaning a workspace.
const SandboxRoot = "_hearth_sandbox"

func (p *Pool) makeSandboxDir(l *Lease) error {
	if l.sandboxRel == "" {
		return nil
	}
	_ = fsutil.RemoveAll(l.dir) // a leftover of an earlier request with this id
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		l.Release()
		return fmt.Errorf("%w: key %s: creating sandbox dir: %w", ErrStartFailed, l.w.kp.key, err)
	}
	return nil
}

// workerDied is the process's failure callback.
func (p *Pool) workerDied(w *worker, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.state == stateRetired {
		return // stopped on purpose
	}
	reason := ReasonFailure
	if w.killReason != "" {
		reason = w.killReason
	}
	p.log.Warn("worker process ended", "key", w.kp.key, "reason", reason, "error", err)
	if w.inflight > 0 {
		w.state, w.reason = stateDraining, reason
		return
	}
	p.retireLocked(w, reason)
	// A process that failed before serving anything is not replaced ahead
	// of demand: a tool that cannot start would be restarted forever.
	if w.invocations > 0 {
		p.topUpLocked(w.kp)
	}
}

// retireLocked removes w from its key and stops its process in the
// background. An empty reason is not counted (Close).
func (p *Pool) retireLocked(w *worker, reason Reason) {
	if w.state == stateRetired {
		return
	}
	w.state = stateRetired
	p.removeLocked(w)
	if reason != "" {
		w.kp.stats.recycled(reason)
		p.log.Info("worker stopped", "key", w.kp.key, "id", w.id, "reason", reason, "invocations", w.invocations)
	}
	if w.proc == nil {
		return // still starting: startWorker sees the state and cleans up
	}
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		why := "stopped by the pool"
		if reason != "" {
			why += ": " + string(reason)
		}
		w.proc.stop(why)
		_ = fsutil.RemoveAll(w.workspace)
		w.log.Remove()
	}()
}

func (p *Pool) removeLocked(w *worker) {
	ws := w.kp.workers
	for i, x := range ws {
		if x == w {
			w.kp.workers = append(ws[:i:i], ws[i+1:]...)
			return
		}
	}
}

// retireFamilyLocked stops the idle workers of other keys in kp's family and
// drains their busy ones: kp is the newer tool.
func (p *Pool) retireFamilyLocked(kp *keyPool) {
	if kp.spec.Family == "" {
		return
	}
	for _, other := range p.keys {
		if other == kp || other.spec.Family != kp.spec.Family {
			continue
		}
		for _, w := range append([]*worker(nil), other.workers...) {
			switch {
			case w.state == stateReady && w.inflight == 0:
				p.retireLocked(w, ReasonToolChange)
			case w.state == stateReady || w.state == stateStarting:
				w.state, w.reason = stateDraining, ReasonToolChange
			}
		}
	}
}

// Quarantine stops the idle workers of key and drains its busy ones, whose
// state is not to be trusted (the builder found their outputs differ from a
// one-shot run). Later Acquires of the key start fresh processes; the builder
// stops sending it actions.
func (p *Pool) Quarantine(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kp := p.keys[key]
	if kp == nil {
		return
	}
	for _, w := range append([]*worker(nil), kp.workers...) {
		switch {
		case w.state == stateReady && w.inflight == 0:
			p.retireLocked(w, ReasonQuarantined)
		case w.state == stateReady || w.state == stateStarting:
			w.state, w.reason = stateDraining, ReasonQuarantined
		}
	}
}

func (p *Pool) liveWorkersLocked() int {
	n := 0
	for _, kp := range p.keys {
		n += len(kp.workers)
	}
	return n
}

// Close stops every worker, including busy ones (their requests fail with
// ErrWorkerFailed), and returns when all processes are gone.
func (p *Pool) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		for _, kp := range p.keys {
			for _, w := range append([]*worker(nil), kp.workers...) {
				p.retireLocked(w, "")
			}
		}
	}
	p.mu.Unlock()
	p.endLife()
	<-p.sweepDone
	p.bg.Wait()
}
