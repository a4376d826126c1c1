package runner

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func shHelper(t *testing.T, script string) Helper {
	t.Helper()
	return Helper{Args: []string{"/bin/sh", "-c", script}, Env: []string{testPath}, Dir: t.TempDir(), Timeout: 10 * time.Second}
}

func TestRunHelperCapturesAndCaps(t *testing.T) {
	tests := []struct {
		name                   string
		script                 string
		max                    int
		wantOut, wantErr       string
		wantOutCut, wantErrCut bool
	}{
		{name: "both streams", script: "echo out; echo err >&2", wantOut: "out\n", wantErr: "err\n"},
		{name: "cut at the limit", script: "printf 0123456789; printf abcdefgh >&2", max: 4, wantOut: "0123", wantErr: "abcd", wantOutCut: true, wantErrCut: true},
		{name: "exactly the limit", script: "printf 0123", max: 4, wantOut: "0123"},
		// Far beyond any pipe buffer: the command must not block on a full pipe.
		{name: "runaway output", script: "head -c 5000000 /dev/zero", max: 10, wantOut: strings.Repeat("\x00", 10), wantOutCut: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := shHelper(t, tc.script)
			h.MaxOutput = tc.max
			out, err := RunHelper(context.Background(), h)
			if err != nil {
				t.Fatal(err)
			}
			if string(out.Stdout) != tc.wantOut || string(out.Stderr) != tc.wantErr {
				t.Errorf("stdout %q stderr %q, want %q %q", out.Stdout, out.Stderr, tc.wantOut, tc.wantErr)
			}
			if out.StdoutTruncated != tc.wantOutCut || out.StderrTruncated != tc.wantErrCut {
				t.Errorf("truncated %v %v, want %v %v", out.StdoutTruncated, out.StderrTruncated, tc.wantOutCut, tc.wantErrCut)
			}
		})
	}
}

func TestRunHelperEnvironmentIsExactlyGiven(t *testing.T) {
	t.Setenv("HEARTH_RUNNER_LEAK_MARKER", "leaked")
	for _, env := range [][]string{nil, {"A=1"}} {
		out, err := RunHelper(context.Background(), Helper{Args: []string{"/usr/bin/env"}, Env: env, Dir: t.TempDir(), Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Join(append(env, ""), "\n"); string(out.Stdout) != want {
			t.Errorf("env %q: printed %q, want %q", env, out.Stdout, want)
		}
	}
}

func TestRunHelperSearchPath(t *testing.T) {
	bin := t.TempDir()
	writeFile(t, bin, "hearth-probe", "#!/bin/sh\necho found\n", 0o755)
	for _, tc := range []struct {
		name string
		env  []string
		want error
	}{
		{"found on the search path", nil, nil},
		{"the environment's own PATH wins", []string{"PATH=/nonexistent"}, ErrCommandNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := RunHelper(context.Background(), Helper{Args: []string{"hearth-probe"}, Env: tc.env, Dir: t.TempDir(), SearchPath: "/nonexistent:" + bin, Timeout: 10 * time.Second})
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if tc.want == nil && string(out.Stdout) != "found\n" {
				t.Errorf("stdout %q", out.Stdout)
			}
		})
	}
	// Without a search path a bare name is looked up in DefaultPath only.
	if _, err := RunHelper(context.Background(), Helper{Args: []string{"hearth-probe"}, Dir: t.TempDir(), Timeout: time.Second}); !errors.Is(err, ErrCommandNotFound) {
		t.Errorf("no search path: %v, want ErrCommandNotFound", err)
	}
}

func TestRunHelperFailures(t *testing.T) {
	tests := []struct {
		name    string
		helper  func(t *testing.T) Helper
		is      error
		wantMsg []string
	}{
		{name: "non-zero exit", helper: func(t *testing.T) Helper { return shHelper(t, "echo broken >&2; exit 3") },
			is: ErrHelperFailed, wantMsg: []string{"exited with code 3", "stderr: broken"}},
		{name: "killed by a signal", helper: func(t *testing.T) Helper { return shHelper(t, "kill -TERM $$") },
			is: ErrHelperFailed, wantMsg: []string{"killed by signal terminated"}},
		{name: "timeout", helper: func(t *testing.T) Helper {
			h := shHelper(t, "echo stuck >&2; sleep 60")
			h.Timeout = 200 * time.Millisecond
			return h
		}, is: ErrHelperFailed, wantMsg: []string{"killed after 200ms", "stderr: stuck"}},
		{name: "no such program", helper: func(t *testing.T) Helper {
			return Helper{Args: []string{"/nonexistent/probe"}, Dir: t.TempDir(), Timeout: time.Second}
		}, is: ErrCommandNotFound},
		{name: "no timeout", helper: func(t *testing.T) Helper { return Helper{Args: []string{"/bin/true"}, Dir: t.TempDir()} },
			is: ErrInvalidRequest, wantMsg: []string{"positive timeout"}},
		{name: "relative directory", helper: func(t *testing.T) Helper {
			return Helper{Args: []string{"/bin/true"}, Dir: "rel", Timeout: time.Second}
		}, is: ErrInvalidRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := RunHelper(context.Background(), tc.helper(t))
			if !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want %v", err, tc.is)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestRunHelperHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := RunHelper(ctx, shHelper(t, "sleep 60"))
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrHelperFailed) {
		t.Fatalf("error %v, want the context's error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// TestRunHelperBackgroundChildHoldingStdout is the precondition-script hang
// of issue 8: a script that leaves a background child holding stdout must
// return as soon as the script itself exits, and the child must die.
func TestRunHelperBackgroundChildHoldingStdout(t *testing.T) {
	h := shHelper(t, `sleep 60 & echo $! > bg.pid; echo ok`)
	start := time.Now()
	out, err := RunHelper(context.Background(), h)
	elapsed := time.Since(start)
	if err != nil || string(out.Stdout) != "ok\n" {
		t.Fatalf("out %q err %v", out.Stdout, err)
	}
	if elapsed >= helperWaitDelay {
		t.Errorf("took %v: it waited for the pipe instead of killing the group at once", elapsed)
	}
	assertGone(t, readPID(t, filepath.Join(h.Dir, "bg.pid")))
}

func TestRunHelperEscapedChildHoldingStdout(t *testing.T) {
	h := shHelper(t, `setsid sh -c 'echo $$ > escaped.pid; exec sleep 100' &
		while [ ! -s escaped.pid ]; do sleep 0.01; done; echo ok`)
	start := time.Now()
	out, err := RunHelper(context.Background(), h)
	elapsed := time.Since(start)
	escaped := readPID(t, filepath.Join(h.Dir, "escaped.pid"))
	t.Cleanup(func() { _ = syscall.Kill(escaped, syscall.SIGKILL) })
	if err != nil || string(out.Stdout) != "ok\n" {
		t.Fatalf("out %q err %v", out.Stdout, err)
	}
	if elapsed > helperWaitDelay+2*time.Second {
		t.Errorf("took %v, want about %v", elapsed, helperWaitDelay)
	}
}

func TestStartChild(t *testing.T) {
	dir := t.TempDir()
	c, err := Start(StartRequest{
		Args: []string{"sh", "-c", `sleep 60 & echo $! > bg.pid; echo started >&2; exec cat`},
		Env:  []string{testPath}, Dir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Path() != "/usr/bin/sh" && c.Path() != "/bin/sh" {
		t.Errorf("Path() = %q", c.Path())
	}
	if pgid, _ := syscall.Getpgid(c.Pid); pgid != c.Pid {
		t.Errorf("pgid %d, want its own group %d", pgid, c.Pid)
	}
	if _, err := io.WriteString(c.Stdin, "hello\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c.Stdout, buf); err != nil || string(buf) != "hello\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
	errBuf := make([]byte, 8)
	if _, err := io.ReadFull(c.Stderr, errBuf); err != nil || string(errBuf) != "started\n" {
		t.Fatalf("stderr %q, %v", errBuf, err)
	}
	bg := readPID(t, filepath.Join(dir, "bg.pid"))
	// Closing stdin ends cat; Wait must then kill the leftover sleep.
	_ = c.Stdin.Close()
	state := c.Wait()
	if state == nil || !state.Success() {
		t.Fatalf("state %v", state)
	}
	assertGone(t, bg)
	c.Kill() // after the reap: must not signal a group that may be reused
	if _, err := c.Stdout.Read(buf); err != io.EOF {
		t.Errorf("stdout after exit: %v, want EOF", err)
	}
	_ = c.Stdout.Close()
	_ = c.Stderr.Close()
}

func TestStartChildKill(t *testing.T) {
	c, err := Start(StartRequest{Args: []string{"/bin/sh", "-c", "sleep 60"}, Env: []string{testPath}, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stdin.Close()
	defer c.Stdout.Close()
	defer c.Stderr.Close()
	c.Kill()
	if state := c.Wait(); state == nil || state.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("state %v, want killed by SIGKILL", state)
	}
}

func TestStartErrorsAreClassified(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		req StartRequest
		is  error
	}{
		{StartRequest{Args: []string{"no-such-worker"}, Env: []string{testPath}, Dir: dir}, ErrCommandNotFound},
		{StartRequest{Args: []string{dir}, Dir: dir}, ErrNotExecutable},
		{StartRequest{Args: nil, Dir: dir}, ErrInvalidRequest},
		{StartRequest{Args: []string{"/bin/true"}, Env: []string{"NOEQUALS"}, Dir: dir}, ErrInvalidRequest},
	} {
		if _, err := Start(tc.req); !errors.Is(err, tc.is) {
			t.Errorf("Start(%q): %v, want %v", tc.req.Args, err, tc.is)
		}
	}
}
