package runner

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readPID waits briefly for a script to have written a pid to path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(data), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil {
				t.Fatalf("pid file %s: %v", path, err)
			}
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid file %s not written: %v", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive reports whether pid is a live (not zombie) process. Zombies count as
// dead: an orphan is reaped by init, which may be slow or absent in containers.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// State is the field after "(comm)"; comm may contain spaces.
	rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
	fields := strings.Fields(rest)
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// assertGone polls briefly, since SIGKILL delivery is asynchronous.
func assertGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d outlived Run", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTimeoutKillsTheWholeGroupAndKeepsOutput(t *testing.T) {
	tests := []struct {
		name   string
		toFile bool
	}{
		{"stdout through a pipe held by the grandchild", false},
		{"stdout to a file", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := shRequest(t, `echo partial; echo to-stderr >&2; sleep 100 & echo $! > grandchild.pid; sleep 100`)
			req.Timeout = 300 * time.Millisecond
			var stdout, stderr bytes.Buffer
			req.Stdout, req.Stderr = &stdout, &stderr
			var f *os.File
			if tc.toFile {
				var err error
				f, err = os.Create(filepath.Join(t.TempDir(), "out"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				req.Stdout = f
			}
			start := time.Now()
			res, err := Run(context.Background(), req)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("timeout must not be an error: %v", err)
			}
			if !res.TimedOut || res.ExitCode != 137 || res.Signal != syscall.SIGKILL {
				t.Errorf("res %+v, want TimedOut with exit 137 (SIGKILL)", res)
			}
			if elapsed > 2*time.Second {
				t.Errorf("Run took %v with a 300ms timeout", elapsed)
			}
			assertGone(t, readPID(t, filepath.Join(req.Dir, "grandchild.pid")))
			got := stdout.String()
			if tc.toFile {
				data, _ := os.ReadFile(f.Name())
				got = string(data)
			}
			if got != "partial\n" || stderr.String() != "to-stderr\n" {
				t.Errorf("output lost on timeout: stdout %q stderr %q", got, stderr.String())
			}
		})
	}
}

func TestKillGrace(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		wantCode   int
		wantOut    string
		minElapsed time.Duration
	}{
		// The shell handles SIGTERM within the grace and exits its own way.
		{"honours SIGTERM", `trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done`, 7, "ready\ngot-term\n", 0},
		// SIGTERM ignored: SIGKILL follows after the grace.
		{"escalates to SIGKILL", `trap '' TERM; echo ready; sleep 100`, 137, "ready\n", 200*time.Millisecond + 400*time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := shRequest(t, tc.script)
			req.Timeout = 200 * time.Millisecond
			req.KillGrace = 400 * time.Millisecond
			var out bytes.Buffer
			req.Stdout = &out
			start := time.Now()
			res, err := Run(context.Background(), req)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			if !res.TimedOut || res.ExitCode != tc.wantCode || out.String() != tc.wantOut {
				t.Errorf("res %+v output %q, want TimedOut, exit %d, output %q", res, out.String(), tc.wantCode, tc.wantOut)
			}
			if elapsed < tc.minElapsed || elapsed > 3*time.Second {
				t.Errorf("took %v, want between %v and 3s", elapsed, tc.minElapsed)
			}
		})
	}
}

func TestBackgroundProcessesDieWithTheAction(t *testing.T) {
	tests := []struct {
		name string
		out  bool
	}{
		{"no output capture", false},
		{"background process holds the stdout pipe", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := shRequest(t, `sleep 100 & echo $! > bg.pid; echo done`)
			var out bytes.Buffer
			if tc.out {
				req.Stdout = &out
			}
			start := time.Now()
			res, err := Run(context.Background(), req)
			if err != nil || res.ExitCode != 0 || res.TimedOut {
				t.Fatalf("res %+v err %v", res, err)
			}
			if elapsed := time.Since(start); elapsed > DefaultWaitDelay {
				t.Errorf("Run took %v: it waited on the background process", elapsed)
			}
			if tc.out && out.String() != "done\n" {
				t.Errorf("stdout %q", out.String())
			}
			assertGone(t, readPID(t, filepath.Join(req.Dir, "bg.pid")))
		})
	}
}

// A descendant that leaves the process group escapes the group kill; if it
// holds the stdout pipe, WaitDelay still bounds Run.
func TestEscapedDescendantHoldingPipeDoesNotHang(t *testing.T) {
	// The leader waits until the descendant has left the group, or the group
	// kill at its exit would catch it first.
	req := shRequest(t, `setsid sh -c 'echo $$ > escaped.pid; exec sleep 100' &
		while [ ! -s escaped.pid ]; do sleep 0.01; done; echo done`)
	req.WaitDelay = 300 * time.Millisecond
	var out bytes.Buffer
	req.Stdout = &out
	start := time.Now()
	res, err := Run(context.Background(), req)
	elapsed := time.Since(start)
	escaped := readPID(t, filepath.Join(req.Dir, "escaped.pid"))
	t.Cleanup(func() { _ = syscall.Kill(escaped, syscall.SIGKILL) })
	if err != nil || res.ExitCode != 0 || out.String() != "done\n" {
		t.Fatalf("res %+v err %v stdout %q", res, err, out.String())
	}
	if !alive(escaped) {
		t.Fatal("test setup: the descendant did not escape the process group")
	}
	if elapsed < req.WaitDelay || elapsed > 2*time.Second {
		t.Errorf("Run took %v, want about the WaitDelay of %v", elapsed, req.WaitDelay)
	}
}

func TestContextEnd(t *testing.T) {
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error
	}{
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"caller deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 300*time.Millisecond)
		}, context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			req := shRequest(t, `echo partial; sleep 100 & echo $! > grandchild.pid; sleep 100`)
			req.Timeout = time.Minute // must not be confused with the ctx ending
			var out bytes.Buffer
			req.Stdout = &out
			start := time.Now()
			res, err := Run(ctx, req)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if res.TimedOut || res.ExitCode != 137 || out.String() != "partial\n" {
				t.Errorf("res %+v stdout %q, want a killed, not timed-out, process", res, out.String())
			}
			if elapsed := time.Since(start); elapsed > 2*time.Second {
				t.Errorf("Run took %v", elapsed)
			}
			assertGone(t, readPID(t, filepath.Join(req.Dir, "grandchild.pid")))
		})
	}
}

func TestAlreadyCancelledContextStartsNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := shRequest(t, `touch started`)
	_, err := Run(ctx, req)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(filepath.Join(req.Dir, "started")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("process ran despite a cancelled context (stat: %v)", err)
	}
}
