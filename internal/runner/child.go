package runner

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
)

// StartRequest describes a long-lived child (a persistent worker) that the
// caller talks to over its standard streams.
type StartRequest struct {
	// Args, Env and Dir mean what they mean in Request: Args[0] is resolved
	// with ResolveExecutable and Env is the complete environment.
	Args []string
	Env  []string
	Dir  string
}

// Child is a process started by Start. It leads its own process group and
// gets SIGKILL if the executor dies. The caller owns its streams and must
// call Wait, which reaps it.
type Child struct {
	// Pid is the process id, which is also its process group id.
	Pid int
	// Stdin, Stdout and Stderr are the caller's ends of pipes to the
	// child's standard streams. They are *os.File (non-blocking, hence
	// pollable), so closing one interrupts a read blocked on it even when
	// an escaped descendant still holds the other end. The caller closes
	// them.
	Stdin, Stdout, Stderr *os.File

	cmd    *exec.Cmd
	mu     sync.Mutex
	reaped bool // the pid, hence the group id, may belong to someone else
}

// Start starts req as a long-lived child with pipes for stdin, stdout and
// stderr. Errors are classified as Run's are (ErrInvalidRequest,
// ErrCommandNotFound, ErrNotExecutable).
func Start(req StartRequest) (*Child, error) {
	r := Request{Args: req.Args, Env: req.Env, Dir: req.Dir}
	if err := r.validate(); err != nil {
		return nil, err
	}
	path, err := ResolveExecutable(r.Args[0], r.Env, r.Dir)
	if err != nil {
		return nil, err
	}
	var pipes []*os.File
	closeAll := func() {
		for _, f := range pipes {
			_ = f.Close()
		}
	}
	var ends [3][2]*os.File // [stream][read, write]
	for i := range ends {
		pr, pw, err := os.Pipe()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("runner: pipes for %q: %w", r.Args[0], err)
		}
		ends[i] = [2]*os.File{pr, pw}
		pipes = append(pipes, pr, pw)
	}
	cmd := &exec.Cmd{
		Path: path,
		Args: r.Args,
		// Non-nil even when empty: a nil Env would make exec inherit ours.
		Env: append(make([]string, 0, len(r.Env)), r.Env...),
		Dir: r.Dir,
		// *os.File streams go to the child as they are: os/exec starts no
		// copying goroutines, so Wait returns as soon as the child is
		// reaped and only the caller ever reads its output.
		Stdin:  ends[0][0],
		Stdout: ends[1][1],
		Stderr: ends[2][1],
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid: true,
			// Tied to the forking thread; Go retires only threads of
			// locked goroutines, which never start children here.
			Pdeathsig: syscall.SIGKILL,
		},
	}
	if err := cmd.Start(); err != nil {
		closeAll()
		return nil, startError(r.Args[0], path, err)
	}
	for _, f := range []*os.File{ends[0][0], ends[1][1], ends[2][1]} {
		_ = f.Close() // the child's ends; keeping them would hide its EOF
	}
	return &Child{
		Pid: cmd.Process.Pid, cmd: cmd,
		Stdin: ends[0][1], Stdout: ends[1][0], Stderr: ends[2][0],
	}, nil
}

// Path is the resolved executable the child runs.
func (c *Child) Path() string { return c.cmd.Path }

// Wait blocks until the child has exited, kills whatever it left in its
// process group, reaps it and returns its final state. Call it exactly once.
func (c *Child) Wait() *os.ProcessState {
	waitExitedNoReap(c.Pid)
	c.mu.Lock()
	defer c.mu.Unlock()
	// The zombie still reserves the pid, so the group id cannot have been
	// reused yet.
	killGroup(c.Pid, syscall.SIGKILL)
	_ = c.cmd.Wait()
	c.reaped = true
	return c.cmd.ProcessState
}

// Kill sends SIGKILL to the child's whole process group, unless the child
// has already been reaped (then the group is gone and its id may be someone
// else's). Safe to call at any time, from any goroutine.
func (c *Child) Kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.reaped {
		killGroup(c.Pid, syscall.SIGKILL)
	}
}
