// Package runner owns starting Hearth's child processes; nothing else in
// Hearth starts one. Its main job is running one REAPI Command as a child
// process in a directory that someone else has prepared (Run): it resolves
// arguments[0], starts the process with exactly the Command's environment in
// its own process group, enforces the timeout, makes sure nothing the action
// started outlives it, and reports the exit status, timing and resource usage.
//
// The same launcher serves the executor's other children: RunHelper runs a
// short helper command (a query_cmd, the precondition script, the sandbox
// probe) with a timeout and capped captured output, and Start starts a
// long-lived child with pipes (a persistent worker). Every child gets its own
// process group, SIGKILL when the executor dies (Pdeathsig), an explicit
// environment (never the executor's by accident), and is reaped with its
// group killed so that no descendant left in the group outlives it.
//
// It does not fetch inputs, create output directories or upload outputs; the
// executor and `hearth run` do that around it.
//
// Linux only: it relies on process groups, waitid(WNOWAIT) and wait4 rusage.
//
// # Errors and how the executor should report them
//
//   - ErrInvalidRequest: the Request itself is malformed (no arguments, NUL
//     bytes, an environment entry without '=', a duplicate variable, a
//     relative or missing Dir). Map to INVALID_ARGUMENT.
//   - ErrCommandNotFound, ErrNotExecutable: arguments[0] cannot be executed
//     as given. Put INVALID_ARGUMENT in ExecuteResponse.status (not an
//     ActionResult with exit code 127): the Command cannot run on this worker
//     as written, running it again will not help, and an ActionResult would
//     look like the tool itself failed. FAILED_PRECONDITION is avoided because
//     clients read it as "inputs missing, upload and retry".
//   - An error wrapping context.Canceled / context.DeadlineExceeded: the
//     caller's ctx ended. The returned Result still describes the killed
//     process.
//   - Any other error is an infrastructure failure (fork failed, writing the
//     output failed): INTERNAL or UNAVAILABLE, never cached.
//
// A Command timeout is not an error: Run returns a nil error and
// Result.TimedOut, with the output produced so far kept, so the executor can
// answer DEADLINE_EXCEEDED with stdout/stderr attached.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"
)

var (
	// ErrInvalidRequest is wrapped by every validation failure of a Request.
	ErrInvalidRequest = errors.New("invalid run request")
	// ErrCommandNotFound means arguments[0] names no file: it is not on the
	// Command's PATH, or the path it gives does not exist.
	ErrCommandNotFound = errors.New("command not found")
	// ErrNotExecutable means arguments[0] names a file that cannot be
	// executed: a directory, no execute permission, or an unknown format.
	ErrNotExecutable = errors.New("command not executable")
)

// DefaultWaitDelay bounds how long Run waits, after the process group is gone,
// for stdout/stderr pipes to reach EOF. It only matters when a descendant left
// the process group (setsid) while holding a pipe.
const DefaultWaitDelay = 2 * time.Second

// Request describes one process to run.
type Request struct {
	// Args is Command.arguments; Args[0] is resolved by ResolveExecutable
	// and passed to the process unchanged as its argv[0].
	Args []string
	// Env is the complete environment, as "NAME=value" entries. Nothing of
	// the calling process's environment is added.
	Env []string
	// Dir is the absolute working directory: the input root joined with
	// Command.working_directory. It must exist.
	Dir string
	// Timeout kills the process group when exceeded; 0 means no timeout.
	Timeout time.Duration
	// KillGrace, when positive, makes a timeout or cancellation send SIGTERM
	// to the process group first and SIGKILL only after this grace period.
	// 0 sends SIGKILL at once.
	KillGrace time.Duration
	// WaitDelay overrides DefaultWaitDelay when positive.
	WaitDelay time.Duration
	// Stdout and Stderr receive the process's output; nil discards it.
	// An *os.File is handed to the child directly (no copying, any size);
	// any other writer is fed through a pipe in small chunks, so output is
	// never held in memory here. Stdin is always /dev/null.
	Stdout, Stderr io.Writer
}

// Result describes how the process ended.
type Result struct {
	// ExitCode is the exit status, or 128+signal number when the process was
	// killed by a signal (137 for SIGKILL), as shells report it. After a
	// timeout it is 137, or with KillGrace whatever the process chose when it
	// handled SIGTERM.
	ExitCode int
	// Signal is the signal that killed the process, or 0 if it exited.
	Signal syscall.Signal
	// TimedOut is true when Request.Timeout expired and Run killed the process.
	TimedOut bool
	// Started is just before the process was started; Finished is when its
	// exit was observed.
	Started, Finished time.Time
	// Usage is the resource usage of the process and of the descendants it
	// waited for.
	Usage Rusage
}

// Rusage is the subset of getrusage(2) that REAPI execution statistics carry.
type Rusage struct {
	UserTime, SystemTime time.Duration
	// MaxRSSKiB is the peak resident set size in kibibytes, as Linux reports it.
	MaxRSSKiB                int64
	MinorFaults, MajorFaults int64
	InBlocks, OutBlocks      int64
	VoluntaryCtxSwitches     int64
	InvoluntaryCtxSwitches   int64
}

// Run runs req to completion. See the package comment for the errors it
// returns. Whatever happens, when Run returns the process and every process
// still in its process group have been sent SIGKILL and the process has been
// reaped. (A descendant that moved to another process group or session
// escapes; containing those needs cgroups.)
func Run(ctx context.Context, req Request) (Result, error) {
	if err := req.validate(); err != nil {
		return Result{}, err
	}
	path, err := ResolveExecutable(req.Args[0], req.Env, req.Dir)
	if err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("runner: %q not started: %w", req.Args[0], err)
	}

	out := &outputSink{}
	waitDelay := DefaultWaitDelay
	if req.WaitDelay > 0 {
		waitDelay = req.WaitDelay
	}
	cmd := &exec.Cmd{
		Path: path,
		Args: req.Args,
		// Non-nil even when empty: a nil Env would make exec inherit ours.
		Env:    append(make([]string, 0, len(req.Env)), req.Env...),
		Dir:    req.Dir,
		Stdout: out.writer(req.Stdout),
		Stderr: out.writer(req.Stderr),
		SysProcAttr: &syscall.SysProcAttr{
			// Our own group, so that one kill reaches every descendant
			// that stays in it.
			Setpgid: true,
			// If the executor dies, the child should not live on. (It is
			// tied to the forking thread; Go only retires threads of
			// locked goroutines, which never start processes here.)
			Pdeathsig: syscall.SIGKILL,
		},
		// Bounds the wait for pipe EOF after the process exits, when an
		// escaped descendant still holds a pipe.
		WaitDelay: waitDelay,
	}

	res := Result{Started: time.Now()}
	if err := cmd.Start(); err != nil {
		return Result{}, startError(req.Args[0], path, err)
	}
	pid := cmd.Process.Pid // also the process group id

	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitExitedNoReap(pid)
	}()

	cancelled := false
	var timeout <-chan time.Time
	if req.Timeout > 0 {
		timer := time.NewTimer(req.Timeout)
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-exited:
	case <-ctx.Done():
		cancelled = true
	case <-timeout:
		res.TimedOut = true
	}
	if cancelled || res.TimedOut {
		select {
		case <-exited:
			// It finished on its own at the same moment: not a timeout.
			cancelled, res.TimedOut = false, false
		default:
			terminateGroup(ctx, pid, req.KillGrace, exited)
		}
	}
	res.Finished = time.Now()
	// The leader is a zombie until cmd.Wait reaps it, so its pid cannot have
	// been reused as another group's id: killing the group here is safe and
	// removes background processes the action left behind.
	killGroup(pid, syscall.SIGKILL)

	waitErr := cmd.Wait()
	state := cmd.ProcessState
	if state == nil {
		return res, fmt.Errorf("runner: waiting for %q (pid %d): %w", req.Args[0], pid, waitErr)
	}
	res.ExitCode, res.Signal = exitStatus(state)
	res.Usage = usageOf(state)

	var exitErr *exec.ExitError
	switch {
	case waitErr == nil, errors.As(waitErr, &exitErr):
	case errors.Is(waitErr, exec.ErrWaitDelay):
		slog.Warn("runner: output pipes still open after the process exited; closed them",
			"command", req.Args[0], "pid", pid, "wait_delay", waitDelay)
	default:
		return res, fmt.Errorf("runner: waiting for %q (pid %d): %w", req.Args[0], pid, waitErr)
	}
	if err := out.firstError(); err != nil {
		return res, fmt.Errorf("runner: writing output of %q: %w", req.Args[0], err)
	}
	if cancelled {
		return res, fmt.Errorf("runner: %q (pid %d) killed: %w", req.Args[0], pid, ctx.Err())
	}
	return res, nil
}

// startError classifies a failed exec so callers can tell a bad Command from
// a broken worker.
func startError(arg0, path string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		// The file was resolved, so ENOENT here means its #! interpreter
		// (or ELF loader) is missing, or the file vanished meanwhile.
		return fmt.Errorf("%w: %q (resolved to %s): file or its interpreter does not exist: %w",
			ErrCommandNotFound, arg0, path, err)
	case errors.Is(err, syscall.ENOEXEC):
		return fmt.Errorf("%w: %q (resolved to %s): unknown executable format (missing #! line?): %w",
			ErrNotExecutable, arg0, path, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ETXTBSY):
		return fmt.Errorf("%w: %q (resolved to %s): %w", ErrNotExecutable, arg0, path, err)
	default:
		return fmt.Errorf("runner: starting %q (resolved to %s): %w", arg0, path, err)
	}
}

func exitStatus(state *os.ProcessState) (int, syscall.Signal) {
	ws, ok := state.Sys().(syscall.WaitStatus)
	if !ok {
		return state.ExitCode(), 0
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal()), ws.Signal()
	}
	return ws.ExitStatus(), 0
}

func usageOf(state *os.ProcessState) Rusage {
	ru, ok := state.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return Rusage{}
	}
	return Rusage{
		UserTime:               time.Duration(ru.Utime.Nano()),
		SystemTime:             time.Duration(ru.Stime.Nano()),
		MaxRSSKiB:              ru.Maxrss,
		MinorFaults:            ru.Minflt,
		MajorFaults:            ru.Majflt,
		InBlocks:               ru.Inblock,
		OutBlocks:              ru.Oublock,
		VoluntaryCtxSwitches:   ru.Nvcsw,
		InvoluntaryCtxSwitches: ru.Nivcsw,
	}
}
