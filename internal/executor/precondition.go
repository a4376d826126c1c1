package executor

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hearth-build/hearth/internal/runner"
)

// PreconditionTimeout bounds one run of experimental_precondition_script;
// a run that takes longer counts as a failure.
const PreconditionTimeout = 30 * time.Second

// preconditionWait is how long a heartbeat waits for a precondition run in
// flight before it reports the latest known answer instead: far below any
// heartbeat timeout, so a slow or stuck script never silences the executor.
const preconditionWait = time.Second

// maxPreconditionOutput bounds what a precondition script's output may cost.
const maxPreconditionOutput = 16 << 10

// precondition gates taking work on experimental_precondition_script. The
// script runs in the background; Accepting never waits for it longer than
// the wait bound.
type precondition struct {
	helper runner.Helper
	wait   time.Duration
	logger *slog.Logger

	mu      sync.Mutex
	passed  bool          // the latest finished run's answer; false before any
	failing bool          // the latest run failed (to log transitions once)
	running chan struct{} // closed when the run in flight ends; nil if none
}

func newPrecondition(h runner.Helper, wait time.Duration, logger *slog.Logger) *precondition {
	return &precondition{helper: h, wait: wait, logger: logger}
}

// Accepting starts a run of the script unless one is in flight, waits for
// it at most the wait bound (or until ctx ends), and returns the answer of
// the latest finished run: false until the script has passed once, so that a
// failing script pauses the executor from the start. The run is bound to
// ctx: it is killed, with everything it started, when the session ends.
func (p *precondition) Accepting(ctx context.Context) bool {
	p.mu.Lock()
	done := p.running
	if done == nil {
		done = make(chan struct{})
		p.running = done
		go p.run(ctx, done)
	}
	p.mu.Unlock()
	timer := time.NewTimer(p.wait)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	case <-ctx.Done():
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.passed
}

func (p *precondition) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	out, err := runner.RunHelper(ctx, p.helper)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running = nil
	switch {
	case ctx.Err() != nil:
		// The session ended and killed the script: no verdict.
	case err != nil:
		p.passed = false
		if !p.failing {
			p.failing = true
			p.logger.Warn("precondition script failed; not taking work until it passes",
				"script", p.helper.Args, "err", err, "stdout", strings.TrimSpace(string(out.Stdout)))
		}
	default:
		p.passed = true
		if p.failing {
			p.failing = false
			p.logger.Info("precondition script passes again; taking work", "script", p.helper.Args)
		}
	}
}
