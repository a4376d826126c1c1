// Package executor owns an executor's session with the scheduler: it
// registers the executor's platform and capacity over Hearth's worker API,
// takes assigned actions, runs each through the builder, writes results to
// the action cache as its upload strategy says, reports them, heartbeats, and
// reconnects when the stream breaks, carrying the actions it runs over to the
// next session (tasks.go). It runs in `hearth worker` and, embedded,
// in `hearth serve`.
package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// Options configure an executor.
type Options struct {
	Name string
	// Files is the executor's input file cache, which its LocalCAS service
	// (internal/localcas) serves from. Optional.
	Files *filecache.Cache
	// Properties are advertised for platform matching.
	Properties map[string][]string
	// MinimumProperties are matched as numeric minimums (cpu_count...).
	MinimumProperties []string
	MaxInflight       int
	MaxActionTimeout  time.Duration
	// Runner runs each action: a *builder.Builder in-process, or an
	// ExternalRunner that spawns a buildbox-style runner per action.
	Runner      Runner
	ActionCache actioncache.Store
	// UploadResult decides whether a completed action's result is cached,
	// given whether it exited 0.
	UploadResult func(succeeded bool) bool
	// Message fills ExecuteResponse.message (NativeLink's message
	// templates); nil leaves it empty.
	Message func(resp *repb.ExecuteResponse, action digest.Digest) string
	// Hooks shape each run (entrypoint, additional environment).
	Hooks func(a *workerapi.Assign) (builder.Hooks, error)
	// Accepting runs before work is taken (the precondition script); false
	// pauses the executor. Nil means always accepting.
	Accepting func(ctx context.Context) bool
	// WarmWorkers counts, per routing key (workeraction.RoutingKey), the
	// actions that idle warm persistent workers can take now; reported so
	// that the scheduler routes actions of those keys here, as many as
	// there are warm workers.
	WarmWorkers func() map[string]int
	// Status returns the executor's persistent worker state, sent to the
	// scheduler (as JSON) with each heartbeat for the server's /status.
	Status func() any
	// Close releases what the executor holds (its worker processes) when
	// Run returns.
	Close func()
	// Finished, if set, is told of every executed action's response
	// (metrics).
	Finished          func(resp *repb.ExecuteResponse)
	HeartbeatInterval time.Duration
	// ReconnectGrace is how long actions keep running after the session
	// with the scheduler broke, for the next session (perhaps with another
	// replica) to take them over (tasks.go); then they are cancelled.
	// Default one minute; negative: cancel them at once.
	ReconnectGrace time.Duration
	Logger         *slog.Logger
}

// Runner runs one action and returns the client's response; it reports
// every failure in the response's status.
type Runner interface {
	Build(ctx context.Context, t builder.Task) *repb.ExecuteResponse
}

// Executor is one connected executor.
type Executor struct {
	opts Options
	log  *slog.Logger

	drainOnce sync.Once
	drain     chan struct{} // closed by Drain

	// The tasks, across sessions (tasks.go). tmu guards them, the live
	// session cur (nil between sessions), brokenSince and graceGen, which
	// voids a pending grace timer when bumped.
	tmu   sync.Mutex
	tasks map[string]*task
	cur   *link
	// brokenSince is when the first session broke since the last one
	// that lasted (zero: none broke since).
	brokenSince  time.Time
	graceGen     uint64
	tasksChanged chan struct{} // closed and replaced as tasks finish
	taskWG       sync.WaitGroup
}

// New checks the options.
func New(opts Options) (*Executor, error) {
	if opts.Name == "" {
		return nil, errors.New("executor name is empty")
	}
	if opts.MaxInflight <= 0 {
		return nil, fmt.Errorf("max inflight must be positive, got %d", opts.MaxInflight)
	}
	if opts.Runner == nil || opts.ActionCache == nil {
		return nil, errors.New("executor needs a runner and an action cache")
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = 5 * time.Second
	}
	if opts.UploadResult == nil {
		opts.UploadResult = func(succeeded bool) bool { return succeeded }
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ReconnectGrace == 0 {
		opts.ReconnectGrace = time.Minute
	}
	return &Executor{
		opts: opts, log: opts.Logger.With("executor", opts.Name), drain: make(chan struct{}),
		tasks: map[string]*task{}, tasksChanged: make(chan struct{}),
	}, nil
}

// FileCache returns the executor's input file cache (nil if it has none).
func (e *Executor) FileCache() *filecache.Cache { return e.opts.Files }

// Drain makes Run stop taking actions, finish the ones it runs, end its
// session cleanly (the scheduler re-queues whatever it had assigned and this
// executor did not start) and return. Cancelling Run's context still stops
// everything at once: that is the end of the drain's grace. Drained while no
// session is up, Run returns at once and cancels what it still runs.
func (e *Executor) Drain() {
	e.drainOnce.Do(func() { close(e.drain) })
}

func (e *Executor) draining() bool {
	select {
	case <-e.drain:
		return true
	default:
		return false
	}
}

// Run keeps a session with the scheduler at conn until ctx ends, reconnecting
// with backoff when the stream breaks; the actions it runs carry over from
// one session to the next (tasks.go). When it returns nothing runs any more.
func (e *Executor) Run(ctx context.Context, conn grpc.ClientConnInterface) error {
	if e.opts.Close != nil {
		defer e.opts.Close()
	}
	defer e.stopTasks()
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		err := e.session(ctx, workerapi.NewSchedulerClient(conn))
		if ctx.Err() != nil || e.draining() {
			return nil
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		e.log.Warn("scheduler session ended; reconnecting", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		case <-e.drain:
			return nil
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (e *Executor) statusJSON() string {
	if e.opts.Status == nil {
		return ""
	}
	data, err := json.Marshal(e.opts.Status())
	if err != nil {
		return ""
	}
	return string(data)
}

// warm reports the idle warm workers both as counts and, for schedulers
// that predate the counts, as a sorted list of keys.
func (e *Executor) warm() (keys []string, counts []*workerapi.WarmWorkers) {
	if e.opts.WarmWorkers == nil {
		return nil, nil
	}
	m := e.opts.WarmWorkers()
	for k, n := range m {
		if n > 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		counts = append(counts, &workerapi.WarmWorkers{Key: k, Idle: int32(min(m[k], math.MaxInt32))})
	}
	return keys, counts
}

func (e *Executor) register() *workerapi.Register {
	keys, counts := e.warm()
	reg := &workerapi.Register{
		Name:              e.opts.Name,
		WarmKeys:          keys,
		WarmWorkers:       counts,
		MaxInflight:       int32(e.opts.MaxInflight),
		MinimumProperties: e.opts.MinimumProperties,
	}
	if e.opts.MaxActionTimeout > 0 {
		reg.MaxActionTimeout = durationpb.New(e.opts.MaxActionTimeout)
	}
	names := make([]string, 0, len(e.opts.Properties))
	for n := range e.opts.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, v := range e.opts.Properties[n] {
			reg.Properties = append(reg.Properties, &workerapi.Property{Name: n, Value: v})
		}
	}
	return reg
}

// session is one stream's life. Actions still running when it ends keep
// running for the next session to report (tasks.go).
func (e *Executor) session(ctx context.Context, client workerapi.SchedulerClient) error {
	runCtx := ctx // the tasks' parent: they outlive the session
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Connect(ctx)
	if err != nil {
		return err
	}
	var sendMu sync.Mutex
	send := func(m *workerapi.ExecutorMessage) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	l := &link{send: send, keep: resendMax(e.opts.MaxInflight)}
	defer e.detach(l)
	if err := e.attach(l, e.register()); err != nil {
		return err
	}
	e.log.Info("connected to scheduler")
	lasting := time.AfterFunc(e.sessionLasts(), func() { e.lasted(l) })
	defer lasting.Stop()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// Joined, so that a session leaves no goroutine of its own behind it
	// when the executor reconnects.
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.heartbeat(ctx, send)
	}()
	stopTaking := false // guarded by e.tmu
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !e.waitDrain(ctx, send) {
			return
		}
		e.tmu.Lock()
		stopTaking = true
		e.tmu.Unlock()
		if !e.waitTasks(ctx) {
			return
		}
		e.log.Info("drained: every running action reported; ending the session")
		// The scheduler reads every result before the end of the stream,
		// then ends the session, and the Recv loop below returns.
		e.tmu.Lock()
		l.drained = true
		e.tmu.Unlock()
		sendMu.Lock()
		stream.CloseSend()
		sendMu.Unlock()
	}()
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		switch msg := m.GetMsg().(type) {
		case *workerapi.SchedulerMessage_Assign:
			a := msg.Assign
			e.tmu.Lock()
			if stopTaking {
				e.tmu.Unlock()
				// Not started, so not reported: the scheduler re-queues it
				// when the session ends.
				e.log.Info("draining: leaving an assigned action to the scheduler", "task", a.GetTaskId())
				continue
			}
			if _, dup := e.tasks[a.GetTaskId()]; dup {
				e.tmu.Unlock()
				continue
			}
			tctx, tcancel := context.WithCancel(runCtx)
			e.start(a.GetTaskId(), tcancel)
			e.tmu.Unlock()
			go func() {
				defer e.taskWG.Done()
				defer tcancel()
				resp := e.runTask(tctx, a)
				if e.isAbandoned(a.GetTaskId()) {
					// Given up after the grace: the scheduler has re-queued
					// it, and this result is nobody's.
					e.deliver(a.GetTaskId(), nil)
					return
				}
				if e.opts.Finished != nil {
					e.opts.Finished(resp)
				}
				keys, counts := e.warm()
				e.deliver(a.GetTaskId(), &workerapi.Finished{
					TaskId: a.GetTaskId(), Response: resp, WarmKeys: keys, WarmWorkers: counts,
				})
			}()
		case *workerapi.SchedulerMessage_Cancel:
			e.cancelTask(msg.Cancel.GetTaskId())
		}
	}
}

// waitDrain waits for Drain (false: the session ended first) and tells the
// scheduler that this executor takes no more work.
func (e *Executor) waitDrain(ctx context.Context, send func(*workerapi.ExecutorMessage) error) bool {
	select {
	case <-ctx.Done():
		return false
	case <-e.drain:
	}
	e.log.Info("draining: taking no new actions, finishing the running ones")
	keys, counts := e.warm()
	send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Heartbeat{Heartbeat: &workerapi.Heartbeat{
		Accepting: false, WarmKeys: keys, WarmWorkers: counts, StatusJson: e.statusJSON(),
	}}})
	return true
}

func (e *Executor) heartbeat(ctx context.Context, send func(*workerapi.ExecutorMessage) error) {
	beat := func() {
		accepting := !e.draining() && (e.opts.Accepting == nil || e.opts.Accepting(ctx))
		keys, counts := e.warm()
		send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Heartbeat{Heartbeat: &workerapi.Heartbeat{
			Accepting: accepting, WarmKeys: keys, WarmWorkers: counts, StatusJson: e.statusJSON(),
		}}})
	}
	beat() // at once: a failing precondition pauses the executor from the start
	t := time.NewTicker(e.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			beat()
		}
	}
}

func (e *Executor) runTask(ctx context.Context, a *workerapi.Assign) *repb.ExecuteResponse {
	actionDigest, err := digest.FromProto(a.GetDigestFunction(), a.GetActionDigest())
	if err != nil {
		return &repb.ExecuteResponse{Status: builder.StatusOf(err)}
	}
	task := builder.Task{
		Instance:     a.GetInstanceName(),
		ActionDigest: actionDigest,
		Action:       a.GetAction(),
		Command:      a.GetCommand(),
		QueuedAt:     a.GetQueuedTimestamp().AsTime(),
	}
	if e.opts.Hooks != nil {
		if task.Hooks, err = e.opts.Hooks(a); err != nil {
			return &repb.ExecuteResponse{Status: builder.StatusOf(err)}
		}
	}
	resp := e.opts.Runner.Build(ctx, task)
	if e.opts.Message != nil {
		resp.Message = e.opts.Message(resp, actionDigest)
	}
	e.log.Debug("action finished", "action", actionDigest.String(), "exit", resp.GetResult().GetExitCode(), "status", resp.GetStatus().GetCode())
	if resp.GetStatus().GetCode() == 0 && !a.GetDoNotCache() && !a.GetAction().GetDoNotCache() &&
		e.opts.UploadResult(resp.GetResult().GetExitCode() == 0) {
		if err := e.opts.ActionCache.Put(context.WithoutCancel(ctx), a.GetInstanceName(), actionDigest, resp.GetResult()); err != nil {
			// The client still gets its result; only caching failed.
			e.log.Warn("writing the action cache failed", "action", actionDigest.String(), "err", err)
		}
	}
	return resp
}

// Status returns the executor's persistent worker state (what its
// heartbeats report), or nil.
func (e *Executor) Status() any {
	if e.opts.Status == nil {
		return nil
	}
	return e.opts.Status()
}
