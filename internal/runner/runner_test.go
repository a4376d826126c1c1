package runner

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testPath lets test scripts find sleep, head, cut etc.
const testPath = "PATH=/usr/bin:/bin"

// shRequest runs script with /bin/sh in a fresh directory.
func shRequest(t *testing.T, script string) Request {
	t.Helper()
	return Request{
		Args: []string{"/bin/sh", "-c", script},
		Env:  []string{testPath},
		Dir:  t.TempDir(),
	}
}

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		wantCode   int
		wantSignal syscall.Signal
	}{
		{"success", "exit 0", 0, 0},
		{"failure", "exit 3", 3, 0},
		{"high code", "exit 255", 255, 0},
		{"killed by SIGTERM", "kill -TERM $$", 128 + 15, syscall.SIGTERM},
		{"killed by SIGKILL", "kill -KILL $$", 128 + 9, syscall.SIGKILL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Run(context.Background(), shRequest(t, tc.script))
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != tc.wantCode || res.Signal != tc.wantSignal {
				t.Errorf("exit %d signal %v, want %d %v", res.ExitCode, res.Signal, tc.wantCode, tc.wantSignal)
			}
			if res.TimedOut {
				t.Error("TimedOut set without a timeout")
			}
			if res.Started.IsZero() || res.Finished.Before(res.Started) {
				t.Errorf("bad times: started %v finished %v", res.Started, res.Finished)
			}
		})
	}
}

func TestEnvironmentIsExactlyTheCommands(t *testing.T) {
	t.Setenv("HEARTH_RUNNER_LEAK_MARKER", "leaked")
	tests := []struct {
		name string
		env  []string
	}{
		{"empty", []string{}},
		{"nil", nil},
		{"some", []string{"A=1", "B=two words", "EMPTY=", "WEIRD=x=y"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			res, err := Run(context.Background(), Request{
				Args: []string{"/usr/bin/env"}, Env: tc.env, Dir: t.TempDir(), Stdout: &out,
			})
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("res %+v err %v", res, err)
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if out.Len() == 0 {
				got = nil
			}
			want := slices.Clone(tc.env)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("child env %q, want exactly %q", got, want)
			}
		})
	}
}

func TestCommandPathIsUsedNotTheWorkers(t *testing.T) {
	tools := t.TempDir()
	writeFile(t, tools, "hearth-test-tool", "#!/bin/sh\necho \"tool ran as $0 with $1\"\n", 0o755)
	if strings.Contains(os.Getenv("PATH"), tools) {
		t.Fatal("test setup: tool dir is on the test's PATH")
	}
	var out bytes.Buffer
	req := Request{
		Args:   []string{"hearth-test-tool", "arg1"},
		Env:    []string{"PATH=/nonexistent:" + tools},
		Dir:    t.TempDir(),
		Stdout: &out,
	}
	res, err := Run(context.Background(), req)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("res %+v err %v", res, err)
	}
	// argv[0] is passed unchanged; the interpreter sees the resolved path as $0.
	if want := "tool ran as " + filepath.Join(tools, "hearth-test-tool") + " with arg1\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}

	// Same name, but the tool is only on the worker's PATH: not found.
	t.Setenv("PATH", tools+":"+os.Getenv("PATH"))
	req.Env = []string{"PATH=/usr/bin:/bin"}
	_, err = Run(context.Background(), req)
	if !errors.Is(err, ErrCommandNotFound) || !strings.Contains(err.Error(), "hearth-test-tool") {
		t.Errorf("err = %v, want ErrCommandNotFound naming the tool", err)
	}
}

func TestWorkingDirectory(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "pkg", "sub")
	writeFile(t, dir, "tools/where.sh", "#!/bin/sh\npwd -P\necho marker > made-here\n", 0o755)
	var out bytes.Buffer
	res, err := Run(context.Background(), Request{
		Args: []string{"tools/where.sh"}, Env: []string{testPath}, Dir: dir, Stdout: &out,
	})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("res %+v err %v", res, err)
	}
	want, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != want {
		t.Errorf("child cwd %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "made-here")); err != nil {
		t.Errorf("relative write did not land in Dir: %v", err)
	}
}

func TestOwnProcessGroup(t *testing.T) {
	var out bytes.Buffer
	req := shRequest(t, `echo $$; cut -d' ' -f5 /proc/$$/stat`)
	req.Stdout = &out
	if _, err := Run(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(out.String())
	if len(fields) != 2 || fields[0] != fields[1] {
		t.Fatalf("child pid/pgid %q: not its own group leader", fields)
	}
	if fields[1] == strconv.Itoa(syscall.Getpgrp()) {
		t.Error("child shares the test's process group")
	}
}

func TestInvalidRequests(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "file", "x", 0o644)
	ok := Request{Args: []string{"/bin/true"}, Dir: dir}
	tests := []struct {
		name   string
		edit   func(r *Request)
		errHas string
	}{
		{"no arguments", func(r *Request) { r.Args = nil }, "no arguments"},
		{"NUL in argument", func(r *Request) { r.Args = []string{"/bin/true", "a\x00"} }, "arguments[1]"},
		{"env without =", func(r *Request) { r.Env = []string{"A=1", "NOEQUALS"} }, `"NOEQUALS" has no '='`},
		{"env empty name", func(r *Request) { r.Env = []string{"=x"} }, "empty name"},
		{"env NUL", func(r *Request) { r.Env = []string{"A=\x00"} }, "NUL"},
		{"env duplicate", func(r *Request) { r.Env = []string{"A=1", "A=2"} }, `"A" set twice`},
		{"relative dir", func(r *Request) { r.Dir = "rel" }, `"rel" is not absolute`},
		{"empty dir", func(r *Request) { r.Dir = "" }, "not absolute"},
		{"missing dir", func(r *Request) { r.Dir = filepath.Join(dir, "nope") }, "nope"},
		{"dir is a file", func(r *Request) { r.Dir = file }, "not a directory"},
		{"negative timeout", func(r *Request) { r.Timeout = -time.Second }, "negative timeout"},
		{"negative grace", func(r *Request) { r.KillGrace = -1 }, "negative kill grace"},
		{"nil file", func(r *Request) { var f *os.File; r.Stderr = f }, "stderr is a nil"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := ok
			tc.edit(&req)
			_, err := Run(context.Background(), req)
			if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("err = %v, want ErrInvalidRequest mentioning %q", err, tc.errHas)
			}
		})
	}
	if res, err := Run(context.Background(), ok); err != nil || res.ExitCode != 0 {
		t.Errorf("baseline request failed: %+v %v", res, err)
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "noshebang", "echo hi\n", 0o755)
	writeFile(t, dir, "badinterp", "#!/nonexistent/interp\n", 0o755)
	writeFile(t, dir, "noexec", "#!/bin/sh\n", 0o644)
	tests := []struct {
		args0   string
		wantErr error
		errHas  string
	}{
		{"./noshebang", ErrNotExecutable, "#! line"},
		{"./badinterp", ErrCommandNotFound, "interpreter"},
		{"./noexec", ErrNotExecutable, "no execute permission"},
		{"./missing", ErrCommandNotFound, "./missing"},
	}
	for _, tc := range tests {
		t.Run(tc.args0, func(t *testing.T) {
			_, err := Run(context.Background(), Request{Args: []string{tc.args0}, Dir: dir})
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("err = %v, want %v mentioning %q", err, tc.wantErr, tc.errHas)
			}
		})
	}
}

func TestRusage(t *testing.T) {
	req := shRequest(t, `i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done`)
	res, err := Run(context.Background(), req)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("res %+v err %v", res, err)
	}
	u := res.Usage
	if u.UserTime <= 0 || u.MaxRSSKiB <= 0 || u.MinorFaults <= 0 {
		t.Errorf("usage not populated: %+v", u)
	}
	if wall := res.Finished.Sub(res.Started); u.UserTime > 2*wall {
		t.Errorf("user time %v exceeds twice the wall time %v of a single-threaded loop", u.UserTime, wall)
	}
}

func TestLargeOutputToFile(t *testing.T) {
	const size = 200 << 20
	f, err := os.Create(filepath.Join(t.TempDir(), "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	req := shRequest(t, "head -c "+strconv.Itoa(size)+" /dev/zero; echo err >&2")
	req.Stdout = f
	var stderr bytes.Buffer
	req.Stderr = &stderr
	if res, err := Run(context.Background(), req); err != nil || res.ExitCode != 0 {
		t.Fatalf("res %+v err %v", res, err)
	}
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != size || stderr.String() != "err\n" {
		t.Errorf("stdout %d bytes (want %d), stderr %q", info.Size(), size, stderr.String())
	}
}

// countingWriter is a non-file writer, so output goes through a pipe.
type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

func TestLargeOutputThroughPipeIsStreamed(t *testing.T) {
	const size = 200 << 20
	req := shRequest(t, "head -c "+strconv.Itoa(size)+" /dev/zero")
	var w countingWriter
	req.Stdout = &w
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if res, err := Run(context.Background(), req); err != nil || res.ExitCode != 0 {
		t.Fatalf("res %+v err %v", res, err)
	}
	runtime.ReadMemStats(&after)
	if w.n != size {
		t.Errorf("writer got %d bytes, want %d", w.n, size)
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 16<<20 {
		t.Errorf("allocated %d bytes to stream %d: output is being buffered", allocated, size)
	}
}

func TestSameWriterForStdoutAndStderr(t *testing.T) {
	// A bytes.Buffer is not safe for concurrent writes; the race detector
	// and the line count catch unserialized writes.
	var out bytes.Buffer
	req := shRequest(t, `i=0; while [ $i -lt 500 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done`)
	req.Stdout, req.Stderr = &out, &out
	if res, err := Run(context.Background(), req); err != nil || res.ExitCode != 0 {
		t.Fatalf("res %+v err %v", res, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1000 || !slices.Contains(lines, "out499") || !slices.Contains(lines, "err499") {
		t.Errorf("got %d lines, want 1000 including out499 and err499", len(lines))
	}
}

var errDiskFull = errors.New("disk full")

type failingWriter struct{ budget int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.budget {
		return 0, errDiskFull
	}
	w.budget -= len(p)
	return len(p), nil
}

func TestOutputWriteErrorIsReported(t *testing.T) {
	req := shRequest(t, "head -c 10000000 /dev/zero")
	req.Stdout = &failingWriter{budget: 100000}
	_, err := Run(context.Background(), req)
	if !errors.Is(err, errDiskFull) || !strings.Contains(err.Error(), "writing output") {
		t.Errorf("err = %v, want the writer's error", err)
	}
}
