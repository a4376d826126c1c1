package buck2worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// SocketEnv is the variable in which Buck2 names the worker's socket.
const SocketEnv = "WORKER_SOCKET"

// DefaultVolatileEnv are the variables Buck2 sets to a new value for every
// action (local.rs: the scratch directory as TMPDIR, TMP and TEMP, the build
// and daemon ids).
var DefaultVolatileEnv = []string{"TMPDIR", "TMP", "TEMP", "BUCK_BUILD_ID", "BUCK2_DAEMON_UUID"}

var (
	// ErrInvalidConfig wraps every validation failure of a Config.
	ErrInvalidConfig = errors.New("buck2worker: invalid configuration")
	// ErrInvalidCommand wraps a malformed ExecuteCommand.
	ErrInvalidCommand = errors.New("buck2worker: invalid command")
	// errTimedOut is the cause of a request's ctx when timeout_s expired.
	errTimedOut = errors.New("buck2worker: command timed out")
	// errCancelEvent is the cause when Exec received ExecuteCancel.
	errCancelEvent = errors.New("buck2worker: cancelled by ExecuteCancel")
)

// Config configures a Bridge.
type Config struct {
	// Argv is the Bazel worker's startup command; --persistent_worker is
	// appended for persistent processes, the request's arguments for
	// one-shot runs.
	Argv []string
	// Protocol is the Bazel worker protocol's encoding.
	Protocol workerproto.Protocol
	// Concurrency bounds the commands running at once (≥ 1).
	Concurrency int
	// Multiplex: the worker accepts concurrent requests (request_id ≠ 0).
	Multiplex bool
	// Cancellable: the worker honours WorkRequest.cancel; otherwise a
	// cancelled request kills its process group.
	Cancellable bool
	// WorkDir is the absolute working directory of every process: the
	// directory Buck2 started the bridge in, its project root.
	WorkDir string
	// Env is the base environment ("NAME=value") of the processes, without
	// WORKER_SOCKET.
	Env []string
	// VolatileEnv names request variables that are not part of a worker's
	// identity (see the package comment).
	VolatileEnv []string
	// InputDirs are directories (absolute, or relative to WorkDir) whose
	// files are listed in WorkRequest.inputs.
	InputDirs []string
	// PoolDir holds the pool's workspaces and worker logs; it is emptied.
	PoolDir string
	// IdleTimeout stops a worker idle this long (0: never).
	IdleTimeout time.Duration
	Logger      *slog.Logger
}

// Bridge runs Buck2 commands on Bazel persistent workers. Its methods are safe
// for concurrent use.
type Bridge struct {
	cfg    Config
	log    *slog.Logger
	pool   *workerpool.Pool
	slots  chan struct{}
	inputs *inputLister
}

// New checks cfg, including that the worker's executable exists, and starts
// an empty pool.
func New(cfg Config) (*Bridge, error) {
	if len(cfg.Argv) == 0 || cfg.Argv[0] == "" {
		return nil, fmt.Errorf("%w: no worker command", ErrInvalidConfig)
	}
	if cfg.Concurrency < 1 {
		return nil, fmt.Errorf("%w: concurrency %d must be at least 1", ErrInvalidConfig, cfg.Concurrency)
	}
	if !filepath.IsAbs(cfg.WorkDir) {
		return nil, fmt.Errorf("%w: work dir %q must be absolute", ErrInvalidConfig, cfg.WorkDir)
	}
	if cfg.Protocol != workerproto.Proto && cfg.Protocol != workerproto.JSON {
		return nil, fmt.Errorf("%w: unknown protocol %v", ErrInvalidConfig, cfg.Protocol)
	}
	if _, err := runner.ResolveExecutable(cfg.Argv[0], cfg.Env, cfg.WorkDir); err != nil {
		return nil, fmt.Errorf("%w: worker command: %w", ErrInvalidConfig, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	inputs, err := newInputLister(cfg.WorkDir, cfg.InputDirs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	opts := workerpool.Options{
		Dir:                  cfg.PoolDir,
		MaxWorkersPerKey:     cfg.Concurrency,
		MaxMultiplexRequests: cfg.Concurrency,
		IdleTimeout:          cfg.IdleTimeout,
		Logger:               cfg.Logger,
	}
	if cfg.Multiplex {
		opts.MaxWorkersPerKey = 1
	}
	pool, err := workerpool.New(opts)
	if err != nil {
		return nil, fmt.Errorf("buck2worker: %w", err)
	}
	return &Bridge{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "buck2worker"),
		pool:   pool,
		slots:  make(chan struct{}, cfg.Concurrency),
		inputs: inputs,
	}, nil
}

// Close stops every worker process.
func (b *Bridge) Close() { b.pool.Close() }

// Result is what Buck2 gets back for one command.
type Result struct {
	ExitCode int32
	Stderr   string
	// TimedOut: timeout_s expired and the command was stopped.
	TimedOut bool
	// OneShot: the command ran as a one-shot process, and why.
	OneShot string
	// Warm: a persistent process served it without starting.
	Warm bool
}

// Run executes one command: on a persistent worker, or one-shot when the
// worker cannot serve it. ctx cancels it. The error is ErrInvalidCommand, a
// ctx error (never for timeout_s, which is Result.TimedOut), or a failure to
// run the command at all.
func (b *Bridge) Run(ctx context.Context, cmd *Command) (*Result, error) {
	if err := cmd.validate(); err != nil {
		return nil, err
	}
	if cmd.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, cmd.Timeout, errTimedOut)
		defer cancel()
	}
	res, err := b.run(ctx, cmd)
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), errTimedOut) {
		stderr := ""
		if res != nil {
			stderr = res.Stderr
		}
		return &Result{ExitCode: -1, Stderr: stderr + fmt.Sprintf("hearth buck2-worker: timed out after %v\n", cmd.Timeout),
			TimedOut: true}, nil
	}
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return res, err
}

func (b *Bridge) run(ctx context.Context, cmd *Command) (*Result, error) {
	select {
	case b.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("buck2worker: waiting for a free slot: %w", context.Cause(ctx))
	}
	defer func() { <-b.slots }()
	res, why, err := b.runWarm(ctx, cmd)
	if err != nil || why == "" {
		return res, err
	}
	b.log.Warn("running the command one-shot", "reason", why)
	return b.runOneShot(ctx, cmd, why)
}

// runWarm sends cmd to a persistent worker. A non-empty reason (and no
// error) means it should run one-shot instead.
func (b *Bridge) runWarm(ctx context.Context, cmd *Command) (*Result, string, error) {
	args, err := workeraction.ExpandArgs(b.cfg.WorkDir, cmd.Args)
	if err != nil {
		return nil, fmt.Sprintf("expanding the arguments: %v", err), nil
	}
	inputs, err := b.inputs.list()
	if err != nil {
		return nil, "", fmt.Errorf("buck2worker: listing inputs: %w", err)
	}
	lease, err := b.acquire(ctx, b.spec(cmd))
	switch {
	case ctx.Err() != nil:
		return nil, "", fmt.Errorf("buck2worker: %w", context.Cause(ctx))
	case errors.Is(err, workerpool.ErrNoCapacity), errors.Is(err, workerpool.ErrStartFailed):
		return nil, err.Error(), nil
	case err != nil:
		return nil, "", fmt.Errorf("buck2worker: %w", err)
	}
	defer lease.Release()
	resp, err := lease.Do(ctx, &pb.WorkRequest{Arguments: args, Inputs: inputs})
	switch {
	case ctx.Err() != nil:
		return nil, "", fmt.Errorf("buck2worker: %w", err)
	case errors.Is(err, workerpool.ErrWorkerFailed):
		return nil, err.Error(), nil
	case err != nil:
		return nil, "", fmt.Errorf("buck2worker: %w", err)
	}
	return &Result{ExitCode: resp.GetExitCode(), Stderr: resp.GetOutput(), Warm: lease.Warm()}, "", nil
}

// capacityWait bounds how long a request waits for a worker of its key to
// become available (typically: the one process of a multiplex worker is
// still starting) before it runs one-shot.
const capacityWait = time.Minute

// acquire is Pool.Acquire, but a request that holds a slot waits for the
// worker that is starting or busy instead of running one-shot at once, as
// the pool's other users do: here a one-shot run costs a full start too, and
// the slots bound the requests in flight, so capacity comes back soon.
func (b *Bridge) acquire(ctx context.Context, spec *workerpool.Spec) (*workerpool.Lease, error) {
	deadline := time.Now().Add(capacityWait)
	delay := time.Millisecond
	for {
		lease, err := b.pool.Acquire(ctx, spec)
		if !errors.Is(err, workerpool.ErrNoCapacity) || time.Now().After(deadline) {
			return lease, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// spec is the pool spec for cmd's environment.
func (b *Bridge) spec(cmd *Command) *workerpool.Spec {
	env := mergeEnv(b.cfg.Env, cmd.Env, b.cfg.VolatileEnv)
	key := workeraction.PoolKey(workeraction.KeyInput{
		ClientKey:   "hearth-buck2-worker",
		Startup:     b.cfg.Argv,
		Env:         env,
		WorkingDir:  b.cfg.WorkDir,
		Protocol:    b.cfg.Protocol.String(),
		Multiplex:   b.cfg.Multiplex,
		Cancellable: b.cfg.Cancellable,
	})
	return &workerpool.Spec{
		Key:         key,
		Argv:        b.cfg.Argv,
		Env:         env,
		Protocol:    b.cfg.Protocol,
		Multiplex:   b.cfg.Multiplex,
		Cancellable: b.cfg.Cancellable,
		WorkDir:     b.cfg.WorkDir,
	}
}

// runOneShot runs the worker's command line with the request's arguments as
// one process, as Bazel runs a worker action without a worker.
func (b *Bridge) runOneShot(ctx context.Context, cmd *Command, why string) (*Result, error) {
	out := &limitedBuffer{max: maxOutputBytes}
	res, err := runner.Run(ctx, runner.Request{
		Args:   append(slices.Clone(b.cfg.Argv), cmd.Args...),
		Env:    mergeEnv(b.cfg.Env, cmd.Env, nil),
		Dir:    b.cfg.WorkDir,
		Stdout: out,
		Stderr: out,
	})
	if err != nil {
		return &Result{Stderr: out.String()}, fmt.Errorf("buck2worker: one-shot run: %w", err)
	}
	return &Result{ExitCode: int32(res.ExitCode), Stderr: out.String(), OneShot: why}, nil
}

// maxOutputBytes bounds the output kept of a one-shot run, as the worker
// protocol bounds a response.
const maxOutputBytes = workerproto.DefaultMaxMessageSize

// Command is one ExecuteCommand, decoded.
type Command struct {
	// Args are the action's positional arguments.
	Args []string
	// Env are the request's variables, "NAME=value", in Buck2's order.
	Env []string
	// Timeout, when positive, stops the command after it.
	Timeout time.Duration
	// invalid is what decoding found wrong, if anything.
	invalid error
}

func (c *Command) validate() error {
	if c.invalid != nil {
		return c.invalid
	}
	for i, a := range c.Args {
		if err := checkText(a); err != nil {
			return fmt.Errorf("%w: argument %d: %w", ErrInvalidCommand, i, err)
		}
	}
	for _, kv := range c.Env {
		name, _, ok := cutEnv(kv)
		if !ok {
			return fmt.Errorf("%w: environment entry %q has no name", ErrInvalidCommand, kv)
		}
		if err := checkText(kv); err != nil {
			return fmt.Errorf("%w: environment variable %q: %w", ErrInvalidCommand, name, err)
		}
	}
	return nil
}
