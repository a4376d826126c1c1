package executor

import (
	"context"
	"sort"
	"time"

	"github.com/hearth-build/hearth/internal/workerapi"
)

// Tasks outlive the session that assigned them. When the stream to the
// scheduler breaks (its replica was killed, say), the executor keeps running
// what it was given for Options.ReconnectGrace, holds the results that finish
// meanwhile, and lists every such task in the Register of its next session
// (with whichever replica it reaches); it then reports the held results
// there. The scheduler adopts the attempts it can and cancels the others, so
// a killed replica costs its running actions a reconnect instead of a lease
// lapse and a full re-run. After the grace, the tasks are cancelled and
// forgotten: by then the scheduler has given them to someone else.

// resendWindow: results reported on a session that breaks less than this
// after are reported again on the next one. Nothing acknowledges a result,
// so one sent just before the scheduler died may never have been read;
// reporting it twice is harmless, since a scheduler only takes a result of
// an attempt it holds (or adopts) the lease of, once. At most
// resendMax(MaxInflight) of them, newest first, so that a busy executor's
// next Register (and the replica's adoption round trips) stay small: the
// window that matters is the moment before the break, when at most a few
// slots' worth of results can have been in flight.
const resendWindow = 10 * time.Second

func resendMax(maxInflight int) int { return 4*maxInflight + 16 }

// task is one assigned attempt, from its Assign until its result is
// reported (or it is abandoned).
type task struct {
	cancel context.CancelFunc
	// result is set once it finished while no session could take it.
	result *workerapi.Finished
	// abandoned: cancelled at the end of the grace or of Run; its result
	// is dropped and it is never reported again.
	abandoned bool
}

// link is one session's stream as the tasks see it.
type link struct {
	send func(*workerapi.ExecutorMessage) error
	// keep bounds sent (resendMax).
	keep int
	// sent are the results reported on it, newest last, within
	// resendWindow (guarded by Executor.tmu).
	sent []sentResult
	// drained: the executor ended it after every result was reported
	// (Drain), and the scheduler read them all before the stream ended.
	drained bool
}

type sentResult struct {
	at time.Time
	f  *workerapi.Finished
}

func finishedMsg(f *workerapi.Finished) *workerapi.ExecutorMessage {
	return &workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Finished{Finished: f}}
}

// changedLocked wakes whoever waits for the set of tasks to shrink.
func (e *Executor) changedLocked() {
	close(e.tasksChanged)
	e.tasksChanged = make(chan struct{})
}

// attach makes l the live session: it sends reg listing every task not
// abandoned (running, or holding a result), then the held results, so that
// the scheduler has adopted them before it reads a result.
func (e *Executor) attach(l *link, reg *workerapi.Register) error {
	e.tmu.Lock()
	defer e.tmu.Unlock()
	var held []*workerapi.Finished
	for id, t := range e.tasks {
		if t.abandoned {
			continue
		}
		reg.RunningTaskIds = append(reg.RunningTaskIds, id)
		if t.result != nil {
			held = append(held, t.result)
		}
	}
	sort.Strings(reg.RunningTaskIds)
	if err := l.send(&workerapi.ExecutorMessage{Msg: &workerapi.ExecutorMessage_Register{Register: reg}}); err != nil {
		return err
	}
	if n := len(reg.RunningTaskIds); n > 0 {
		e.log.Info("reported the actions of an earlier session", "running", n-len(held), "finished", len(held))
	}
	// A held result's warm report is as old as the result: the scheduler
	// takes the one in each Finished as current.
	keys, counts := e.warm()
	for _, f := range held {
		f.WarmKeys, f.WarmWorkers = keys, counts
		if err := l.send(finishedMsg(f)); err != nil {
			return err
		}
		delete(e.tasks, f.GetTaskId())
		l.record(f)
	}
	e.cur = l
	e.changedLocked()
	return nil
}

// record notes f as reported on l, forgetting what left resendWindow or
// exceeds l.keep.
func (l *link) record(f *workerapi.Finished) {
	now := time.Now()
	i := min(len(l.sent), max(0, len(l.sent)+1-l.keep))
	for i < len(l.sent) && now.Sub(l.sent[i].at) > resendWindow {
		i++
	}
	l.sent = append(l.sent[i:], sentResult{at: now, f: f})
}

// detach ends l: the results it reported recently are held again for the
// next session, and the grace of the tasks left starts.
func (e *Executor) detach(l *link) {
	e.tmu.Lock()
	defer e.tmu.Unlock()
	if e.cur == l {
		e.cur = nil
	}
	if l.drained {
		l.sent = nil
	}
	for _, r := range l.sent {
		if time.Since(r.at) <= resendWindow {
			if _, ok := e.tasks[r.f.GetTaskId()]; !ok {
				e.tasks[r.f.GetTaskId()] = &task{result: r.f}
			}
		}
	}
	l.sent = nil
	if e.cur != nil || len(e.tasks) == 0 {
		return
	}
	if e.opts.ReconnectGrace < 0 {
		e.abandonLocked()
		return
	}
	e.log.Info("scheduler session ended; actions keep running for the next session", "actions", len(e.tasks), "grace", e.opts.ReconnectGrace)
	if !e.brokenSince.IsZero() {
		return // the grace runs from the first break since a lasting session
	}
	e.brokenSince = time.Now()
	e.graceGen++
	e.armGraceLocked(e.graceGen, e.opts.ReconnectGrace)
}

// armGraceLocked gives up the tasks after d unless gen is void by then (a
// lasting session came). A session that is up when it fires but has not
// lasted yet (sessionLasts) is given until then: one that a scheduler ends
// at once, again and again, must not keep the tasks forever.
func (e *Executor) armGraceLocked(gen uint64, d time.Duration) {
	time.AfterFunc(d, func() {
		e.tmu.Lock()
		defer e.tmu.Unlock()
		if gen != e.graceGen {
			return
		}
		if e.cur != nil {
			e.armGraceLocked(gen, e.sessionLasts())
			return
		}
		e.brokenSince = time.Time{}
		if n := e.abandonLocked(); n > 0 {
			e.log.Warn("no lasting scheduler session within the grace; cancelled the actions of the last one", "actions", n, "grace", e.opts.ReconnectGrace)
		}
	})
}

// sessionLasts is how long a session must stay up to end the grace of the
// tasks of earlier ones: a heartbeat interval, enough for the scheduler to
// have answered their report.
func (e *Executor) sessionLasts() time.Duration { return e.opts.HeartbeatInterval }

// lasted is called once session l has stayed up for sessionLasts.
func (e *Executor) lasted(l *link) {
	e.tmu.Lock()
	defer e.tmu.Unlock()
	if e.cur == l {
		e.brokenSince = time.Time{}
		e.graceGen++
	}
}

// abandonLocked cancels every running task and drops every held result; it
// returns how many it gave up.
func (e *Executor) abandonLocked() int {
	n := 0
	for id, t := range e.tasks {
		switch {
		case t.abandoned:
			continue
		case t.result != nil:
			delete(e.tasks, id)
		default:
			t.abandoned = true
			t.cancel()
		}
		n++
	}
	e.changedLocked()
	return n
}

// start registers a task for attempt id; the caller runs it.
func (e *Executor) start(id string, cancel context.CancelFunc) {
	e.tasks[id] = &task{cancel: cancel}
	e.taskWG.Add(1)
}

// deliver reports the result of task id on the live session, or holds it
// for the next one. A send counts only if its session is still the live one
// afterwards: one that ended meanwhile may have dropped it, and the next
// session has listed the task as running, so it gets the result.
func (e *Executor) deliver(id string, f *workerapi.Finished) {
	e.tmu.Lock()
	defer e.tmu.Unlock()
	for {
		t := e.tasks[id]
		if t == nil {
			return
		}
		if t.abandoned {
			delete(e.tasks, id)
			e.changedLocked()
			return
		}
		l := e.cur
		if l == nil {
			t.result = f
			return
		}
		e.tmu.Unlock()
		err := l.send(finishedMsg(f))
		e.tmu.Lock()
		if e.cur == l {
			if err != nil {
				// The stream broke; its end brings the next session.
				t.result = f
				return
			}
			delete(e.tasks, id)
			l.record(f)
			e.changedLocked()
			return
		}
	}
}

// cancelTask stops task id if it runs.
func (e *Executor) cancelTask(id string) {
	e.tmu.Lock()
	defer e.tmu.Unlock()
	if t := e.tasks[id]; t != nil && t.result == nil && !t.abandoned {
		t.cancel()
	}
}

// isAbandoned reports whether task id was given up.
func (e *Executor) isAbandoned(id string) bool {
	e.tmu.Lock()
	defer e.tmu.Unlock()
	t := e.tasks[id]
	return t == nil || t.abandoned
}

// waitTasks waits until every task has reported its result (true) or ctx
// ends (false).
func (e *Executor) waitTasks(ctx context.Context) bool {
	for {
		e.tmu.Lock()
		live := 0
		for _, t := range e.tasks {
			if !t.abandoned {
				live++
			}
		}
		ch := e.tasksChanged
		e.tmu.Unlock()
		if live == 0 {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// stopTasks cancels every task and waits for them: Run leaves nothing
// running behind it.
func (e *Executor) stopTasks() {
	e.tmu.Lock()
	e.graceGen++
	e.abandonLocked()
	e.tmu.Unlock()
	e.taskWG.Wait()
}
