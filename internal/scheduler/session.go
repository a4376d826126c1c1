package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/workerapi"
)

// session is one connected executor.
type session struct {
	id          string
	name        string
	caps        capabilities
	maxInflight int

	// Guarded by Scheduler.mu.
	accepting bool
	// warm is the scheduler's view of the executor's idle warm workers per
	// routing key: the last report, less the actions assigned since.
	warm map[string]int32
	// shapes are the shapes this executor can run; freeIdx is its place in
	// the free set of each of them while it has a spare slot (free).
	shapes  map[*shape]struct{}
	freeIdx map[*shape]int
	free    bool
	// tasks holds every attempt assigned and not yet confirmed finished,
	// including cancelled ones, so capacity stays honest; nil for an
	// attempt reported at Register and refused (adopt.go).
	tasks map[string]*Operation
	out   chan *workerapi.SchedulerMessage
	dead  bool
	// status is the executor's last reported persistent worker state.
	status string
}

func (e *session) hasCapacity() bool {
	return e.accepting && !e.dead && len(e.tasks) < e.maxInflight
}

func (e *session) load() float64 { return float64(len(e.tasks)) / float64(e.maxInflight) }

func (e *session) send(m *workerapi.SchedulerMessage) {
	if e.dead {
		return
	}
	select {
	case e.out <- m:
	default:
		// The buffer holds more than every message the executor's capacity
		// allows; a full buffer means the executor stopped reading.
		e.dead = true
		close(e.out)
	}
}

func (e *session) assign(o *Operation) {
	e.tasks[o.taskID] = o
	e.send(&workerapi.SchedulerMessage{Msg: &workerapi.SchedulerMessage_Assign{Assign: &workerapi.Assign{
		TaskId:          o.taskID,
		InstanceName:    o.instance,
		DigestFunction:  o.action.Function,
		ActionDigest:    o.action.Proto(),
		Action:          o.req.Action,
		QueuedTimestamp: timestamppb.New(o.queuedAt),
		DoNotCache:      o.req.DoNotCache,
		Command:         o.req.Command,
	}}})
}

func (e *session) cancel(taskID string) {
	e.send(&workerapi.SchedulerMessage{Msg: &workerapi.SchedulerMessage_Cancel{Cancel: &workerapi.Cancel{TaskId: taskID}}})
}

// warmCounts reads an executor's warm report: the counts when it sends them,
// else (an older executor) one idle worker for each key it lists.
func warmCounts(counts []*workerapi.WarmWorkers, keys []string) map[string]int32 {
	m := make(map[string]int32, max(len(counts), len(keys)))
	if len(counts) > 0 {
		for _, w := range counts {
			if w.GetIdle() > 0 && w.GetKey() != "" {
				m[w.GetKey()] += w.GetIdle()
			}
		}
		return m
	}
	for _, k := range keys {
		if k != "" {
			m[k] = 1
		}
	}
	return m
}

func setOf(keys []string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// Connect implements the worker API: one stream per executor.
func (s *Scheduler) Connect(stream workerapi.Scheduler_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return status.Error(codes.InvalidArgument, "the first message of a worker session must be Register")
	}
	if reg.GetName() == "" {
		return status.Error(codes.InvalidArgument, "Register.name is empty")
	}
	if reg.GetMaxInflight() <= 0 {
		return status.Errorf(codes.InvalidArgument, "Register.max_inflight must be positive, got %d", reg.GetMaxInflight())
	}
	e := &session{
		id:          uuid.NewString(),
		name:        reg.GetName(),
		maxInflight: int(reg.GetMaxInflight()),
		accepting:   true,
		warm:        map[string]int32{},
		shapes:      map[*shape]struct{}{},
		freeIdx:     map[*shape]int{},
		tasks:       map[string]*Operation{},
		out:         make(chan *workerapi.SchedulerMessage, 2*int(reg.GetMaxInflight())+64+len(reg.GetRunningTaskIds())),
		caps: capabilities{
			props:      map[string][]string{},
			minimums:   setOf(reg.GetMinimumProperties()),
			maxTimeout: reg.GetMaxActionTimeout().AsDuration(),
		},
	}
	for _, p := range reg.GetProperties() {
		e.caps.props[p.GetName()] = append(e.caps.props[p.GetName()], p.GetValue())
	}
	s.logger.Info("executor connected", "executor", e.name, "max_inflight", e.maxInflight, "properties", e.caps.props)

	// The attempts it still runs from an earlier session are taken over
	// before anything else of this stream is read, and before new work
	// fills the slots they occupy.
	answers := s.adoptLeases(stream.Context(), e, reg.GetRunningTaskIds())
	s.mu.Lock()
	s.executors[e] = true
	s.takeOverLocked(e, reg.GetRunningTaskIds(), answers)
	s.reportWarmLocked(e, warmCounts(reg.GetWarmWorkers(), reg.GetWarmKeys()))
	for _, sh := range s.shapes {
		if sh.acceptedBy(&e.caps) {
			s.linkLocked(e, sh)
		}
	}
	s.updateFreeLocked(e)
	s.pullLocked(e)
	if s.shared != nil {
		s.kickClaim()
	}
	out := e.out
	s.mu.Unlock()
	defer s.disconnect(e)

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	writeErr := make(chan error, 1)
	go func() {
		for {
			select {
			case m, ok := <-out:
				if !ok {
					writeErr <- errors.New("executor stopped reading its stream")
					return
				}
				if err := stream.Send(m); err != nil {
					writeErr <- err
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	// The reader handles each message itself: a hop to another goroutine
	// per message is a measurable part of a trivial action's cost.
	timedOut := make(chan struct{}, 1)
	timer := time.AfterFunc(s.cfg.HeartbeatTimeout, func() {
		select {
		case timedOut <- struct{}{}:
		default:
		}
	})
	defer timer.Stop()
	readErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				readErr <- err
				return
			}
			if !timer.Reset(s.cfg.HeartbeatTimeout) {
				return // timed out already; the session is ending
			}
			accepted := true
			if f := m.GetFinished(); f != nil && s.shared != nil {
				accepted = s.completeShared(e, f)
			}
			if err := s.handle(e, m, accepted); err != nil {
				readErr <- err
				return
			}
		}
	}()
	select {
	case err := <-readErr:
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	case err := <-writeErr:
		return err
	case <-timedOut:
		return status.Errorf(codes.DeadlineExceeded, "executor %s sent nothing for %s", e.name, s.cfg.HeartbeatTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// handle applies one executor message; accepted is false for a result the
// shared state refused (the attempt had lost its lease).
func (s *Scheduler) handle(e *session, m *workerapi.ExecutorMessage, accepted bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.tasks == nil {
		// The session ended (disconnect ran) while this message was read.
		return status.Error(codes.Aborted, "the worker session has ended")
	}
	switch msg := m.GetMsg().(type) {
	case *workerapi.ExecutorMessage_Heartbeat:
		s.reportWarmLocked(e, warmCounts(msg.Heartbeat.GetWarmWorkers(), msg.Heartbeat.GetWarmKeys()))
		e.accepting = msg.Heartbeat.GetAccepting()
		e.status = msg.Heartbeat.GetStatusJson()
	case *workerapi.ExecutorMessage_Started:
		if o := e.tasks[msg.Started.GetTaskId()]; o != nil && o.taskID == msg.Started.GetTaskId() {
			o.setStage(repb.ExecutionStage_EXECUTING, nil)
		}
	case *workerapi.ExecutorMessage_Finished:
		id := msg.Finished.GetTaskId()
		o := e.tasks[id]
		delete(e.tasks, id)
		s.reportWarmLocked(e, warmCounts(msg.Finished.GetWarmWorkers(), msg.Finished.GetWarmKeys()))
		if o != nil && o.taskID == id {
			o.executor = nil
			o.lease = nil // refused: the shared state tells what became of it
			if accepted {
				s.finishLocked(o, finishedResponse(e, msg.Finished))
			}
		}
	case *workerapi.ExecutorMessage_Register:
		return status.Error(codes.InvalidArgument, "Register may only be the first message of a session")
	default:
		return status.Error(codes.InvalidArgument, "unknown executor message")
	}
	s.updateFreeLocked(e)
	s.pullLocked(e)
	if s.shared != nil && e.free {
		s.kickClaim()
	}
	return nil
}

func (s *Scheduler) disconnect(e *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.executors, e)
	if len(s.executors) == 0 {
		s.noExecutorsSince = time.Now()
	}
	if !e.dead {
		e.dead = true
		close(e.out)
	}
	s.updateFreeLocked(e)
	for sh := range e.shapes {
		s.unlinkLocked(e, sh)
	}
	s.reportWarmLocked(e, nil)
	s.logger.Info("executor disconnected", "executor", e.name, "running", len(e.tasks))
	for id, o := range e.tasks {
		if o != nil && o.taskID == id {
			s.orphanLocked(o, e, id)
		}
	}
	e.tasks = nil
	s.failUnschedulableLocked()
	if s.shared != nil {
		s.kickClaim() // withdraws the warm workers it advertised
	}
}

// orphanLocked leaves attempt id of o, whose session e ended, to e for
// ReattachGrace: the executor reports it in its next Register and the new
// session takes it over (movableLocked), or, after the grace, it is
// re-queued as before handover existed.
func (s *Scheduler) orphanLocked(o *Operation, e *session, id string) {
	why := "executor " + e.name + " disconnected"
	if s.cfg.ReattachGrace < 0 {
		s.requeueLocked(o, why)
		return
	}
	time.AfterFunc(s.cfg.ReattachGrace, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if o.executor == e && o.taskID == id {
			s.requeueLocked(o, why+" and did not come back within "+s.cfg.ReattachGrace.String())
		}
	})
}

// finishedResponse is the executor's response, or an INTERNAL error when it
// sent none.
func finishedResponse(e *session, f *workerapi.Finished) *repb.ExecuteResponse {
	if resp := f.GetResponse(); resp != nil {
		return resp
	}
	return &repb.ExecuteResponse{Status: status.New(codes.Internal, fmt.Sprintf("executor %s finished the action without a response", e.name)).Proto()}
}
