package runner

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// waitExitedNoReap blocks until process pid has exited but leaves it a zombie
// (WNOWAIT), so its pid, which is also its process group id, stays reserved
// until exec.Cmd.Wait reaps it. Killing the group by that id before the reap
// can therefore never hit an unrelated group that reused the number.
func waitExitedNoReap(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			// On any other error (there should be none: the child is
			// ours and unreaped) fall through to cmd.Wait, which reaps.
			return
		}
	}
}

// killGroup sends sig to every process in process group pgid. A group that is
// already empty is not an error worth reporting.
func killGroup(pgid int, sig syscall.Signal) {
	_ = syscall.Kill(-pgid, sig)
}

// terminateGroup stops the process group led by pid and returns once the
// leader has exited (exited is closed). With a positive grace it sends
// SIGTERM first and escalates to SIGKILL after grace, or at once if ctx ends
// meanwhile.
func terminateGroup(ctx context.Context, pid int, grace time.Duration, exited <-chan struct{}) {
	if grace > 0 {
		killGroup(pid, syscall.SIGTERM)
		timer := time.NewTimer(grace)
		defer timer.Stop()
		select {
		case <-exited:
			return
		case <-timer.C:
		case <-ctx.Done():
		}
	}
	killGroup(pid, syscall.SIGKILL)
	<-exited
}

// outputSink wraps the caller's non-file writers. It serializes writes, so
// one writer given as both Stdout and Stderr is never written concurrently
// by exec's two copying goroutines, and it remembers the first write error:
// exec.Cmd.Wait hides copy errors when the process exits non-zero, and a
// failed write must never pass for a complete output.
type outputSink struct {
	mu  sync.Mutex
	err error
}

func (s *outputSink) writer(w io.Writer) io.Writer {
	switch w := w.(type) {
	case nil:
		return nil // exec connects /dev/null
	case *os.File:
		return w // the child writes to it directly
	default:
		return &sinkWriter{sink: s, w: w}
	}
}

func (s *outputSink) firstError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

type sinkWriter struct {
	sink *outputSink
	w    io.Writer
}

func (sw *sinkWriter) Write(p []byte) (int, error) {
	sw.sink.mu.Lock()
	defer sw.sink.mu.Unlock()
	if sw.sink.err != nil {
		return 0, sw.sink.err
	}
	n, err := sw.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		sw.sink.err = err
	}
	return n, err
}
