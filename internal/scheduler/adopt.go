package scheduler

import (
	"context"
	"strconv"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/workeraction"
)

// Handover of running attempts. An executor whose session broke keeps
// running what it was assigned and reports those attempts in the Register
// of its next session, which may be with another replica (the one that
// assigned them was killed). The task id carries what that replica needs to
// take an attempt over: the operation's name and, with shared state, the
// lease token. A replica adopts an attempt whose lease the token still
// holds (Shared.Adopt renews it and returns the request), or one it runs
// itself on an older session of the same executor; it cancels the others
// and ignores their results: those already done (the executor reports a
// result again when it cannot tell whether the dead replica read it) and
// the refused ones (lease lapsed and re-queued, unknown, no shared state). Adoption happens in Connect, before the
// session's reader starts, so a result the executor held while
// disconnected, sent right after Register, completes the operation with the
// adopted token: still exactly one result per operation.

// taskIDOf names o's current attempt: unique per attempt, so a late result
// of an abandoned one is told apart (cheaper than a random UUID), and with
// shared state carrying the lease token for an adopter.
func taskIDOf(o *Operation) string {
	id := o.name + "/" + strconv.Itoa(o.attempts)
	if o.lease != nil {
		id += "/" + o.lease.Token
	}
	return id
}

// parseTaskID is the inverse of taskIDOf; token is "" for an attempt
// assigned without shared state.
func parseTaskID(id string) (name string, attempt int, token string, ok bool) {
	parts := strings.SplitN(id, "/", 3)
	if len(parts) < 2 || parts[0] == "" {
		return "", 0, "", false
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil || n <= 0 {
		return "", 0, "", false
	}
	if len(parts) == 3 {
		if parts[2] == "" {
			return "", 0, "", false
		}
		token = parts[2]
	}
	return parts[0], n, token, true
}

// movableLocked returns the operation of attempt id if this replica runs
// it on another session (of the same executor, whose old stream has not
// ended here yet), else nil.
func (s *Scheduler) movableLocked(e *session, id string) *Operation {
	name, _, _, ok := parseTaskID(id)
	if !ok {
		return nil
	}
	o := s.ops[name]
	if o == nil || o.taskID != id || o.executor == nil || o.executor == e || o.completedAt != (time.Time{}) {
		return nil
	}
	return o
}

// reported is what the shared state answered for a reported attempt.
type reported struct {
	lease *redissched.Lease // adopted
	done  bool              // the operation is completed
}

// adoptLeases takes over, in the shared state, the leases of the reported
// attempts this replica does not run itself: by id, those whose token still
// holds. It runs before the session is registered, without the lock, one
// round trip per attempt, all within sharedTimeout: an unreachable shared
// state delays the session that long at most.
func (s *Scheduler) adoptLeases(ctx context.Context, e *session, ids []string) map[string]reported {
	if s.shared == nil || len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, sharedTimeout)
	defer cancel()
	answers := map[string]reported{}
	for _, id := range ids {
		name, _, token, ok := parseTaskID(id)
		if !ok || token == "" {
			continue
		}
		s.mu.Lock()
		o := s.ops[name]
		local := s.movableLocked(e, id) != nil || o != nil && o.completedAt != (time.Time{})
		s.mu.Unlock()
		if local {
			continue
		}
		l, done, err := s.shared.Adopt(ctx, name, token, s.replicaID)
		if err != nil {
			// Refused: the lease lapses and the action runs again, as
			// before handover existed.
			s.logger.Warn("adopting a running action in the shared scheduler state", "operation", name, "executor", e.name, "error", err)
			continue
		}
		answers[id] = reported{lease: l, done: done}
	}
	return answers
}

// takeOverLocked makes the reported attempts ids this session's: each one
// adopted (moved from an older session here, or with its lease in answers)
// runs on e as if assigned here; each other one is cancelled. Those still
// count as busy slots until their Finished arrives, since the executor runs
// them until it has seen the Cancel.
func (s *Scheduler) takeOverLocked(e *session, ids []string, answers map[string]reported) {
	adopted, done := 0, 0
	for _, id := range ids {
		if _, dup := e.tasks[id]; dup {
			continue
		}
		if o := s.movableLocked(e, id); o != nil {
			old := o.executor
			delete(old.tasks, id)
			s.updateFreeLocked(old)
			o.executor = e
			e.tasks[id] = o
			adopted++
			continue
		}
		if o := s.adoptLeaseLocked(e, id, answers[id].lease); o != nil {
			adopted++
			continue
		}
		if answers[id].done || s.doneLocked(id) {
			done++
		}
		e.tasks[id] = nil
		e.cancel(id)
	}
	refused := len(e.tasks) - adopted - done
	s.adopted += int64(adopted)
	s.alreadyDone += int64(done)
	s.refused += int64(refused)
	if len(ids) > 0 {
		s.logger.Info("executor reported running actions", "executor", e.name, "adopted", adopted, "done", done, "refused", refused)
	}
}

// doneLocked reports whether this replica knows attempt id's operation as
// completed.
func (s *Scheduler) doneLocked(id string) bool {
	name, _, _, ok := parseTaskID(id)
	if !ok {
		return false
	}
	o := s.ops[name]
	return o != nil && o.completedAt != (time.Time{})
}

// adoptLeaseLocked mirrors the shared operation of attempt id, whose lease
// l this replica adopted, as running on e; nil if it cannot (no lease, or
// this replica knows better: it gave that lease back itself, or the
// operation is done or runs elsewhere here).
func (s *Scheduler) adoptLeaseLocked(e *session, id string, l *redissched.Lease) *Operation {
	if l == nil {
		return nil
	}
	if o := s.ops[l.Name]; o != nil && (o.released == l.Token || o.executor != nil || o.completedAt != (time.Time{})) {
		// Released: the release is under way and will re-queue it, so the
		// renewal Adopt made must not keep the attempt alive.
		return nil
	}
	r, err := decodeRequest(l.Request)
	if err != nil {
		s.logger.Warn("adopting a running action", "operation", l.Name, "error", err)
		return nil
	}
	o := s.mirrorLocked(l.Name, r)
	if o.req.Action == nil {
		o.req = r // a mirror made by GetOperation knows only the name
		o.routeKey = workeraction.RoutingKeyOf(r.Platform.GetProperties(), r.Command)
	}
	o.shape = s.shapeForLocked(o.req)
	o.lease = l
	o.attempts = l.Attempts
	o.taskID = id
	o.executor = e
	e.tasks[id] = o
	if o.state.Stage != repb.ExecutionStage_EXECUTING {
		o.setStage(repb.ExecutionStage_EXECUTING, nil)
	}
	s.notify(Observer.Started, o)
	return o
}
