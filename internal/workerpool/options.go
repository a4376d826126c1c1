package workerpool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/hearth-build/hearth/internal/sandbox"
)

var (
	// ErrNoCapacity means no worker can take the request now: the key is at
	// MaxWorkersPerKey with every worker busy, or the memory budget is
	// spent. Run the action one-shot.
	ErrNoCapacity = errors.New("workerpool: no worker available")
	// ErrWorkerFailed means the worker process died, closed its stdout, or
	// broke the protocol. It has been killed and discarded; the request
	// produced no trustworthy result, so run the action again one-shot.
	ErrWorkerFailed = errors.New("workerpool: worker failed")
	// ErrStartFailed means a worker process could not be started (Prepare
	// failed, or its startup command cannot be executed). Run the action
	// one-shot, which reports a bad command properly.
	ErrStartFailed = errors.New("workerpool: worker not started")
	// ErrInvalidSpec wraps every validation failure of a Spec.
	ErrInvalidSpec = errors.New("workerpool: invalid worker spec")
	// ErrInvalidOptions wraps every validation failure of Options.
	ErrInvalidOptions = errors.New("workerpool: invalid options")
	// ErrSandboxUnavailable means SandboxBwrap was asked for and bubblewrap
	// does not work on this host.
	ErrSandboxUnavailable = sandbox.ErrUnavailable
	// ErrClosed is returned by Acquire after Close.
	ErrClosed = errors.New("workerpool: pool closed")
	// ErrLeaseDone is returned by Do on a lease already used or released:
	// one lease carries one request.
	ErrLeaseDone = errors.New("workerpool: lease already used")
)

// Defaults for the zero values of Options.
const (
	DefaultMaxMultiplexRequests = 8 // Bazel's worker_max_multiplex_instances
	DefaultCancelGrace          = 2 * time.Second
	DefaultMaxLogBytes          = 1 << 20
	DefaultReleaseWait          = time.Second
	maxSweepInterval            = 30 * time.Second
	minSweepInterval            = 10 * time.Millisecond
)

// Options configure a Pool. Zero values mean the documented default.
type Options struct {
	// Dir holds one workspace per worker process and their stderr logs. It
	// is emptied by New: nothing in it survives a restart.
	Dir string
	// MaxWorkersPerKey bounds the processes of one key (default 1).
	MaxWorkersPerKey int
	// MaxMultiplexRequests bounds the requests in flight on one sandboxing
	// multiplex process (default DefaultMaxMultiplexRequests).
	MaxMultiplexRequests int
	// MaxInvocations recycles a process after this many requests (0: never).
	MaxInvocations int
	// IdleTimeout stops a process idle this long (0: never).
	IdleTimeout time.Duration
	// MemoryLimitBytes recycles a process whose tree's resident memory
	// exceeds it after a request or while idle (0: no limit).
	MemoryLimitBytes uint64
	// MaxTotalMemoryBytes bounds the resident memory of all workers
	// (0: no bound). See the package comment.
	MaxTotalMemoryBytes uint64
	// Prewarm is how many idle processes to keep started for a key in use.
	Prewarm int
	// Sandbox selects how processes are isolated.
	Sandbox sandbox.Kind
	// BwrapPath is the bubblewrap binary (default: bwrap on the PATH).
	BwrapPath string
	// Prepare, if set, is called once for each new process before it
	// starts, to put the tool files into its workspace. It may run for a
	// prewarmed process with no action in flight, with the key's latest
	// Spec; ctx ends if the pool closes.
	Prepare func(ctx context.Context, workspace string, spec *Spec) error
	// CancelGrace is how long a cancellable worker may take to answer a
	// cancel request before it is killed (default DefaultCancelGrace).
	CancelGrace time.Duration
	// ReleaseWait bounds how long Acquire waits for a worker whose lease
	// is being released (Lease.Releasing) before going on as if it were
	// busy (default DefaultReleaseWait).
	ReleaseWait time.Duration
	// MaxResponseBytes bounds one WorkResponse (default: the codec's).
	MaxResponseBytes int
	// MaxLogBytes bounds each stderr log file; one older file is kept
	// (default DefaultMaxLogBytes).
	MaxLogBytes int64
	// SweepInterval is how often idle and memory limits are enforced
	// (default: a quarter of IdleTimeout, at most 30s).
	SweepInterval time.Duration
	Logger        *slog.Logger
	// Now is the clock for idle times (default time.Now).
	Now func() time.Time
}

func (o *Options) validateAndDefault() error {
	if o.Dir == "" || !filepath.IsAbs(o.Dir) || filepath.Clean(o.Dir) == "/" {
		return fmt.Errorf("%w: dir %q must be an absolute path other than /", ErrInvalidOptions, o.Dir)
	}
	for _, f := range []struct {
		name  string
		value int64
	}{
		{"max_workers_per_pool", int64(o.MaxWorkersPerKey)},
		{"max multiplex requests", int64(o.MaxMultiplexRequests)},
		{"max_invocations", int64(o.MaxInvocations)},
		{"idle_timeout", int64(o.IdleTimeout)},
		{"prewarm", int64(o.Prewarm)},
		{"cancel grace", int64(o.CancelGrace)},
		{"release wait", int64(o.ReleaseWait)},
		{"max response bytes", int64(o.MaxResponseBytes)},
		{"max log bytes", o.MaxLogBytes},
		{"sweep interval", int64(o.SweepInterval)},
	} {
		if f.value < 0 {
			return fmt.Errorf("%w: %s is negative (%d)", ErrInvalidOptions, f.name, f.value)
		}
	}
	if o.Sandbox != sandbox.None && o.Sandbox != sandbox.Bwrap {
		return fmt.Errorf("%w: unknown sandbox %v", ErrInvalidOptions, o.Sandbox)
	}
	if o.MaxWorkersPerKey == 0 {
		o.MaxWorkersPerKey = 1
	}
	if o.Prewarm > o.MaxWorkersPerKey {
		return fmt.Errorf("%w: prewarm (%d) exceeds max_workers_per_pool (%d)", ErrInvalidOptions, o.Prewarm, o.MaxWorkersPerKey)
	}
	if o.MaxMultiplexRequests == 0 {
		o.MaxMultiplexRequests = DefaultMaxMultiplexRequests
	}
	if o.CancelGrace == 0 {
		o.CancelGrace = DefaultCancelGrace
	}
	if o.ReleaseWait == 0 {
		o.ReleaseWait = DefaultReleaseWait
	}
	if o.MaxLogBytes == 0 {
		o.MaxLogBytes = DefaultMaxLogBytes
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = maxSweepInterval
		if o.IdleTimeout > 0 {
			o.SweepInterval = min(maxSweepInterval, max(minSweepInterval, o.IdleTimeout/4))
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// memoryLimit is the effective limit for a worker of spec (0: none).
func (o *Options) memoryLimit(spec *Spec) uint64 {
	switch {
	case spec.MemoryLimit == 0:
		return o.MemoryLimitBytes
	case o.MemoryLimitBytes == 0:
		return spec.MemoryLimit
	default:
		return min(spec.MemoryLimit, o.MemoryLimitBytes)
	}
}
