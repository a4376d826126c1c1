package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// singleplexQueue bounds the requests a singleplex worker accepts ahead of
// the one it is running. The reader must keep reading while a request runs,
// or it could never see a cancel for it.
const singleplexQueue = 1024

// lockedStdout serializes everything written to stdout (responses and
// deliberate garbage) and lets --close-stdout close it under the same lock.
type lockedStdout struct {
	mu     sync.Mutex
	f      *os.File
	closed bool
}

func (o *lockedStdout) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return 0, os.ErrClosed
	}
	return o.f.Write(p)
}

func (o *lockedStdout) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.closed {
		o.closed = true
		if err := o.f.Close(); err != nil {
			slog.Warn("testworker: closing stdout", "err", err)
		}
	}
}

// inflight is a request that has been read and not yet answered.
type inflight struct {
	cancel    context.CancelFunc
	cancelled bool // a honoured cancel arrived: answer was_cancelled
}

type server struct {
	startup
	stdout    *lockedStdout
	responses workerproto.ResponseWriter
	garbage   string

	mu sync.Mutex
	// inflight lists the unanswered requests of each id, oldest first. A
	// multiplex id has at most one; singleplex requests all have id 0 and
	// may queue up behind the running one.
	inflight map[int32][]*inflight
	running  sync.WaitGroup
}

func newServer(s startup, out *lockedStdout) *server {
	garbage := protoGarbage
	if s.protocol == workerproto.JSON {
		garbage = jsonGarbage
	}
	return &server{
		startup:   s,
		stdout:    out,
		responses: workerproto.NewResponseWriter(s.protocol, out),
		garbage:   garbage,
		inflight:  map[int32][]*inflight{},
	}
}

type job struct {
	ctx   context.Context
	req   *pb.WorkRequest
	entry *inflight
}

// serve reads requests until stdin ends, then waits for the requests still
// running and returns the process exit code.
func (s *server) serve(stdin io.Reader) int {
	queue := make(chan job, singleplexQueue)
	if !s.multiplex {
		s.running.Go(func() {
			for j := range queue {
				s.handle(j)
			}
		})
	}
	code := 0
	requests := workerproto.NewRequestReader(s.protocol, stdin, 0)
	for {
		req, err := requests.Read()
		if err == io.EOF { // a clean end between requests
			slog.Info("testworker: stdin closed, exiting")
			break
		}
		if err != nil {
			slog.Error("testworker: reading request", "err", err)
			code = exitBadUsage
			break
		}
		if req.GetVerbosity() > 0 {
			slog.Info("testworker: request", "id", req.GetRequestId(), "cancel", req.GetCancel(), "args", req.GetArguments())
		}
		if req.GetCancel() {
			s.cancel(req.GetRequestId())
			continue
		}
		j, ok := s.register(req)
		if !ok {
			s.respond(&pb.WorkResponse{RequestId: req.GetRequestId(), ExitCode: 2,
				Output: "testworker: a request with this id is already in flight\n"})
			continue
		}
		if s.multiplex {
			s.running.Go(func() { s.handle(j) })
		} else {
			queue <- j
		}
	}
	close(queue)
	s.running.Wait()
	return code
}

// register records a request as in flight. A multiplex worker refuses a
// second request with the id of one it has not answered: the answers could
// not be told apart.
func (s *server) register(req *pb.WorkRequest) (job, bool) {
	id := req.GetRequestId()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.multiplex && len(s.inflight[id]) > 0 {
		return job{}, false
	}
	ctx, cancel := context.WithCancel(context.Background())
	entry := &inflight{cancel: cancel}
	s.inflight[id] = append(s.inflight[id], entry)
	return job{ctx: ctx, req: req, entry: entry}, true
}

// cancel handles WorkRequest{cancel: true}. A cancel for a request already
// answered, or any cancel without --honor-cancel, is ignored, as the
// protocol allows.
func (s *server) cancel(id int32) {
	if !s.honorCancel {
		slog.Info("testworker: ignoring cancel", "id", id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The oldest unanswered request of that id is the one running.
	for _, f := range s.inflight[id] {
		if !f.cancelled {
			f.cancelled = true
			f.cancel()
			return
		}
	}
}

// handle performs one request and answers it exactly once: the in-flight
// entry is removed under the lock that cancel takes, so a cancel either
// lands before the answer is decided or finds nothing to cancel.
func (s *server) handle(j job) {
	id := j.req.GetRequestId()
	var code int32
	var output string
	if j.ctx.Err() == nil {
		code, output = s.perform(j)
	}
	s.mu.Lock()
	s.inflight[id] = slices.DeleteFunc(s.inflight[id], func(f *inflight) bool { return f == j.entry })
	if len(s.inflight[id]) == 0 {
		delete(s.inflight, id)
	}
	cancelled := j.entry.cancelled
	s.mu.Unlock()
	j.entry.cancel()
	if cancelled {
		s.respond(&pb.WorkResponse{RequestId: id, WasCancelled: true})
		return
	}
	s.respond(&pb.WorkResponse{RequestId: id, ExitCode: code, Output: output})
}

func (s *server) perform(j job) (int32, string) {
	cwd, err := os.Getwd()
	if err != nil {
		return 2, "testworker: " + err.Error() + "\n"
	}
	base := cwd
	if dir := j.req.GetSandboxDir(); dir != "" {
		base = filepath.Join(cwd, dir)
	}
	a := &action{
		args:       j.req.GetArguments(),
		inputs:     j.req.GetInputs(),
		baseDir:    base,
		invocation: invocations.Add(1),
		stdout:     s.stdout,
		garbage:    s.garbage,
	}
	return a.perform(j.ctx)
}

func (s *server) respond(resp *pb.WorkResponse) {
	if err := s.responses.Write(resp); err != nil {
		// Expected after --close-stdout; the worker keeps serving stdin.
		slog.Warn("testworker: writing response", "id", resp.GetRequestId(), "err", err,
			"exit_code", resp.GetExitCode(), "output", resp.GetOutput())
	}
}
