package workerpool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// stderrDrainDelay bounds how long a stopping worker waits for its stderr to
// reach end of file. It only matters when a descendant that escaped the
// process group still holds the pipe.
const stderrDrainDelay = 2 * time.Second

// failTailWait bounds how long a failure waits for the dying process's last
// stderr lines, so that they make it into the error message.
const failTailWait = 500 * time.Millisecond

// reply is what a waiting request receives: a response or the reason there
// will be none.
type reply struct {
	resp *pb.WorkResponse
	err  error
}

// process is one running worker and its protocol streams. It knows nothing of
// pools: it sends requests, routes responses to their waiters by request_id,
// and dies exactly once.
type process struct {
	name     string // for messages: the tool and the pid
	pid      int    // also its process group id
	child    *runner.Child
	stdin    *os.File // our ends of the pipes
	stdout   *os.File
	stderr   *os.File
	requests workerproto.RequestWriter
	log      *stderrLog
	// onFail is called once, from whichever goroutine saw the failure, after
	// every waiter has been told.
	onFail func(error)

	exited     chan struct{} // closed once the process has been reaped
	stderrDone chan struct{} // closed when the stderr copy ends
	readerDone chan struct{} // closed when the response reader returns

	mu      sync.Mutex
	pending map[int32]chan reply
	err     error // the failure, once the process is dying or dead
	status  string

	failOnce sync.Once
	stopOnce sync.Once
}

// startProcess starts req through the runner as a worker speaking
// protocol, reading responses of at most maxResponse bytes. onFail is called
// once when the process fails or is stopped.
func startProcess(req runner.StartRequest, name string, protocol workerproto.Protocol, maxResponse int, log *stderrLog,
	onFail func(error)) (*process, error) {
	child, err := runner.Start(req)
	if err != nil {
		return nil, err
	}
	pr := &process{
		name:       fmt.Sprintf("%s (pid %d)", name, child.Pid),
		pid:        child.Pid,
		child:      child,
		stdin:      child.Stdin,
		stdout:     child.Stdout,
		stderr:     child.Stderr,
		requests:   workerproto.NewRequestWriter(protocol, child.Stdin),
		log:        log,
		exited:     make(chan struct{}),
		stderrDone: make(chan struct{}),
		readerDone: make(chan struct{}),
		pending:    map[int32]chan reply{},
		onFail:     onFail,
	}
	go pr.copyStderr()
	go pr.watchExit()
	go pr.readResponses(workerproto.NewResponseReader(protocol, child.Stdout, maxResponse))
	return pr, nil
}

func (pr *process) copyStderr() {
	defer close(pr.stderrDone)
	_, _ = io.Copy(pr.log, pr.stderr)
}

// watchExit reaps the process; the runner kills what it left in its group
// first, while the zombie still reserves the group id.
func (pr *process) watchExit() {
	state := pr.child.Wait()
	pr.mu.Lock()
	if state != nil {
		pr.status = state.String()
	}
	status := pr.status
	pr.mu.Unlock()
	close(pr.exited)
	pr.fail(fmt.Errorf("it exited (%s)", status))
}

// readResponses is the only reader of the worker's stdout. It hands each
// response to the request waiting for its request_id; anything else is a
// protocol failure that ends the worker.
func (pr *process) readResponses(rr workerproto.ResponseReader) {
	defer close(pr.readerDone)
	for {
		resp, err := rr.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				pr.fail(errors.New("it closed its stdout"))
			} else {
				pr.fail(fmt.Errorf("reading its response: %w", err))
			}
			return
		}
		pr.mu.Lock()
		ch, ok := pr.pending[resp.GetRequestId()]
		delete(pr.pending, resp.GetRequestId())
		pr.mu.Unlock()
		if !ok {
			pr.fail(fmt.Errorf("it answered request_id %d, which is not in flight", resp.GetRequestId()))
			return
		}
		ch <- reply{resp: resp}
	}
}

// register prepares to receive the response to request id. Every channel it
// returns receives exactly one reply, unless unregister takes it back.
func (pr *process) register(id int32) (chan reply, error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.err != nil {
		return nil, pr.err
	}
	if pr.pending == nil { // failing: the waiters are being told
		return nil, fmt.Errorf("%w: %s is stopping", ErrWorkerFailed, pr.name)
	}
	if _, dup := pr.pending[id]; dup {
		return nil, fmt.Errorf("workerpool: request_id %d is already in flight on %s", id, pr.name)
	}
	ch := make(chan reply, 1)
	pr.pending[id] = ch
	return ch, nil
}

// unregister forgets a request that was never sent.
func (pr *process) unregister(id int32) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	delete(pr.pending, id)
}

// send writes one request. Writes are serialized by the RequestWriter.
func (pr *process) send(req *pb.WorkRequest) error {
	return pr.requests.Write(req)
}

// failure returns the error the process failed with, or nil while healthy.
func (pr *process) failure() error {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.err == nil && pr.pending == nil {
		return fmt.Errorf("%w: %s is stopping", ErrWorkerFailed, pr.name)
	}
	return pr.err
}

// kill sends SIGKILL to the whole process group, unless it has been reaped
// (then the group is gone and its id may be someone else's).
func (pr *process) kill() { pr.child.Kill() }

// fail kills the process and answers every waiting request with an error
// wrapping ErrWorkerFailed and cause, with the tail of its stderr. Only the
// first call has an effect.
func (pr *process) fail(cause error) {
	pr.failOnce.Do(func() {
		pr.mu.Lock()
		pending := pr.pending
		pr.pending = nil // from now on register refuses
		pr.mu.Unlock()
		pr.kill()
		// The last words of a crashing tool and its exit status are
		// usually the explanation: wait a moment for both.
		deadline := time.NewTimer(failTailWait)
		defer deadline.Stop()
		for _, ch := range []chan struct{}{pr.exited, pr.stderrDone} {
			select {
			case <-ch:
			case <-deadline.C:
			}
		}
		pr.mu.Lock()
		status := pr.status
		pr.mu.Unlock()
		err := fmt.Errorf("%w: %s: %w", ErrWorkerFailed, pr.name, cause)
		if status != "" && !strings.Contains(cause.Error(), status) {
			err = fmt.Errorf("%w (the process ended: %s)", err, status)
		}
		if tail := pr.log.Tail(); tail != "" {
			err = fmt.Errorf("%w; its stderr ends with:\n%s", err, tail)
		}
		pr.mu.Lock()
		pr.err = err
		pr.mu.Unlock()
		for _, ch := range pending {
			ch <- reply{err: err}
		}
		if pr.onFail != nil {
			pr.onFail(err)
		}
	})
}

// stop kills the process if it is still running and waits until it has been
// reaped and its pipes are closed. Safe to call more than once.
func (pr *process) stop(reason string) {
	pr.stopOnce.Do(func() {
		pr.fail(errors.New(reason))
		<-pr.exited
		select {
		case <-pr.stderrDone:
		case <-time.After(stderrDrainDelay):
		}
		// Closing interrupts reads still blocked on a pipe that an escaped
		// descendant holds open (our ends are non-blocking, hence pollable).
		_ = pr.stderr.Close()
		_ = pr.stdout.Close()
		_ = pr.stdin.Close()
		<-pr.stderrDone
		<-pr.readerDone
		pr.log.Close()
	})
}
