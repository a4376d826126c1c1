package workerpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// These tests use small /bin/sh workers speaking JSON, for behaviours the
// test worker program has no switch for.

func TestProtocolViolationsFailTheWorker(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string
	}{
		{"wrong request_id", `echo '{"requestId": 7, "exitCode": 0}'`, []string{"answered request_id 7"}},
		{"dies with a message", `echo "tool exploded: disk on fire" >&2; exit 3`,
			[]string{"disk on fire", "exit status 3"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, Options{})
			spec := shellWorker(t, "k", "", tc.body)
			l := acquire(t, p, spec)
			pid := l.PID()
			_, err := l.Do(context.Background(), &pb.WorkRequest{Arguments: []string{"x"}})
			l.Release()
			if !errors.Is(err, ErrWorkerFailed) {
				t.Fatalf("Do = %v, want ErrWorkerFailed", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			waitGone(t, pid)
			if got := keyStats(p, "k").Recycles[ReasonFailure]; got != 1 {
				t.Errorf("failure recycles = %d, want 1", got)
			}
		})
	}
}

func TestContextTimeoutKillsTheWholeGroup(t *testing.T) {
	p := newPool(t, Options{})
	// The worker leaves a grandchild in its process group and never answers.
	spec := shellWorker(t, "k", `sleep 1000 & echo $! > gc.pid`, `:`)
	l := acquire(t, p, spec)
	defer l.Release()
	var grandchild int
	waitFor(t, "the grandchild's pid", func() bool {
		data, err := os.ReadFile(filepath.Join(l.Dir(), "gc.pid"))
		grandchild, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil && grandchild > 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := l.Do(ctx, &pb.WorkRequest{Arguments: []string{"x"}})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrWorkerFailed) {
		t.Fatalf("Do = %v, want DeadlineExceeded and not ErrWorkerFailed", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Do took %v after its deadline", took)
	}
	waitGone(t, l.PID(), grandchild)
	l.Release()
	if got := keyStats(p, "k").Recycles[ReasonCancelled]; got != 1 {
		t.Errorf("cancelled recycles = %d, want 1", got)
	}
}

func TestStartFailures(t *testing.T) {
	prepareErr := errors.New("tool files unavailable")
	tests := []struct {
		name    string
		argv0   string
		prepare func(context.Context, string, *Spec) error
		want    error
	}{
		{"missing program", "/nonexistent/worker", nil, os.ErrNotExist},
		{"prepare fails", "/bin/cat", func(context.Context, string, *Spec) error { return prepareErr }, prepareErr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, Options{Prepare: tc.prepare})
			spec := &Spec{Key: "k", Argv: []string{tc.argv0}, Env: []string{}}
			_, err := p.Acquire(context.Background(), spec)
			if !errors.Is(err, ErrStartFailed) || !errors.Is(err, tc.want) {
				t.Fatalf("Acquire = %v, want ErrStartFailed wrapping %v", err, tc.want)
			}
			ks := keyStats(p, "k")
			if ks.StartFailures != 1 || ks.Starting+ks.Idle+ks.Busy != 0 {
				t.Errorf("stats = %+v, want one start failure and no workers", ks)
			}
			entries, _ := os.ReadDir(p.workspaces)
			if len(entries) != 0 {
				t.Errorf("workspaces left behind: %d", len(entries))
			}
		})
	}
}

func TestPrepareStagesTheToolOncePerProcess(t *testing.T) {
	src := shellWorker(t, "k", "", `echo '{"exitCode": 0, "output": "tool ran"}'`)
	script, err := os.ReadFile(src.Argv[0])
	if err != nil {
		t.Fatal(err)
	}
	var prepared atomic.Int32
	var workspaces []string
	p := newPool(t, Options{Prepare: func(ctx context.Context, ws string, spec *Spec) error {
		prepared.Add(1)
		workspaces = append(workspaces, ws)
		if len(spec.Tools) != 1 || spec.Tools[0].Path != "tools/w.sh" || spec.Tools[0].Digest != digest.Compute(digest.SHA256, script) {
			return fmt.Errorf("Tools = %+v", spec.Tools)
		}
		if err := os.Mkdir(filepath.Join(ws, "tools"), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(ws, "tools", "w.sh"), script, 0o555)
	}})
	// A relative argv[0] is resolved in the workspace, where Prepare put it.
	spec := &Spec{Key: "k", Argv: []string{"tools/w.sh"}, Env: []string{}, Protocol: src.Protocol,
		Tools: []Tool{{Path: "tools/w.sh", Digest: digest.Compute(digest.SHA256, script), Executable: true}}}
	for i := range 2 {
		l := acquire(t, p, spec)
		if resp := do(t, l, "x"); resp.GetOutput() != "tool ran" {
			t.Errorf("request %d: output %q", i, resp.GetOutput())
		}
		if l.Dir() != workspaces[0] {
			t.Errorf("lease dir %s, want the prepared workspace %s", l.Dir(), workspaces[0])
		}
		l.Release()
	}
	if n := prepared.Load(); n != 1 {
		t.Errorf("Prepare called %d times for one process, want 1", n)
	}
}

func TestKeyReusedWithAnotherCommandIsRefused(t *testing.T) {
	p := newPool(t, Options{})
	a := shellWorker(t, "k", "", `echo '{}'`)
	roundTrip(t, p, a)
	b := shellWorker(t, "k", "", `echo '{}'`) // another script path
	if _, err := p.Acquire(context.Background(), b); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("Acquire with a different command under the same key = %v, want ErrInvalidSpec", err)
	}
}
