package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// binary is the test worker, built once by TestMain exactly as the pool and
// executor tests build it.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "testworker")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "testworker")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building testworker:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// session is one persistent worker process under test.
type session struct {
	cmd       *exec.Cmd
	dir       string
	stdin     io.WriteCloser
	requests  workerproto.RequestWriter
	responses chan readResult
	stderr    syncBuffer
}

// syncBuffer collects a child's stderr while the test may read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type readResult struct {
	resp *pb.WorkResponse
	err  error
}

func startWorker(t *testing.T, p workerproto.Protocol, args ...string) *session {
	t.Helper()
	s := &session{dir: t.TempDir(), responses: make(chan readResult, 16)}
	s.cmd = exec.Command(binary, append(args, "--persistent_worker")...)
	s.cmd.Dir = s.dir
	s.cmd.Stderr = &s.stderr
	stdin, err := s.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	// An os.Pipe rather than StdoutPipe: Wait closes a StdoutPipe, which
	// would race with the reader seeing a clean EOF.
	stdout, childStdout, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout = childStdout
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	childStdout.Close()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		stdout.Close()
	})
	s.stdin = stdin
	s.requests = workerproto.NewRequestWriter(p, stdin)
	// Reads happen in the background so a test can bound every wait.
	go func() {
		r := workerproto.NewResponseReader(p, stdout, 0)
		for {
			resp, err := r.Read()
			s.responses <- readResult{resp, err}
			if err != nil {
				return
			}
		}
	}()
	return s
}

func (s *session) send(t *testing.T, req *pb.WorkRequest) {
	t.Helper()
	if err := s.requests.Write(req); err != nil {
		t.Fatal(err)
	}
}

func (s *session) next(t *testing.T) readResult {
	t.Helper()
	select {
	case r := <-s.responses:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("no response within 10s; worker stderr:\n%s", s.stderr.String())
		return readResult{}
	}
}

func (s *session) response(t *testing.T) *pb.WorkResponse {
	t.Helper()
	r := s.next(t)
	if r.err != nil {
		t.Fatalf("reading response: %v", r.err)
	}
	return r.resp
}

// exitCode closes stdin and returns the process's exit code.
func (s *session) exitCode(t *testing.T) int {
	t.Helper()
	s.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(10 * time.Second):
		t.Fatal("worker did not exit after stdin closed")
		return -1
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestPersistentSession(t *testing.T) {
	for _, p := range []workerproto.Protocol{workerproto.Proto, workerproto.JSON} {
		t.Run(p.String(), func(t *testing.T) {
			s := startWorker(t, p, "--tool-flag=1", "--protocol="+p.String())
			if err := os.WriteFile(filepath.Join(s.dir, "in.txt"), []byte("input content\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(s.dir, "args.txt"), []byte("--say=from flag file\n--exit=3\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			s.send(t, &pb.WorkRequest{
				Arguments: []string{"--out=sub/a.txt", "--content=hello", "--content= world", "--say=hi", "--cat=in.txt",
					"--counter", "--pid=pid.txt", "--stateful-out=state.txt", "--echo-inputs=inputs.txt", "--argv=argv.txt", "@args.txt"},
				Inputs: []*pb.Input{{Path: "z.txt", Digest: []byte("ff00")}, {Path: "in.txt", Digest: []byte("abc123")}},
			})
			resp := s.response(t)
			if want := "hi\ninput content\n1\nfrom flag file\n"; resp.Output != want || resp.ExitCode != 3 || resp.WasCancelled {
				t.Fatalf("first response = %v, want output %q and exit 3", resp, want)
			}
			if got := readFile(t, filepath.Join(s.dir, "sub/a.txt")); got != "hello world" {
				t.Errorf("sub/a.txt = %q", got)
			}
			if got := readFile(t, filepath.Join(s.dir, "inputs.txt")); got != "in.txt abc123\nz.txt ff00\n" {
				t.Errorf("inputs.txt = %q", got)
			}
			if got, want := readFile(t, filepath.Join(s.dir, "argv.txt")), "--tool-flag=1\n--protocol="+p.String()+"\n--persistent_worker\n"; got != want {
				t.Errorf("argv.txt = %q, want %q", got, want)
			}
			pid := readFile(t, filepath.Join(s.dir, "pid.txt"))
			if pid != strconv.Itoa(s.cmd.Process.Pid)+"\n" {
				t.Errorf("pid.txt = %q, process is %d", pid, s.cmd.Process.Pid)
			}

			// The same process answers the second request, and its state shows.
			s.send(t, &pb.WorkRequest{Arguments: []string{"--counter", "--pid=pid2.txt", "--stateful-out=state.txt", "--out=x", "--content=in sandbox"}, SandboxDir: "sb", Verbosity: 1})
			resp = s.response(t)
			if resp.Output != "2\n" || resp.ExitCode != 0 {
				t.Fatalf("second response = %v", resp)
			}
			if got := readFile(t, filepath.Join(s.dir, "sb/pid2.txt")); got != pid {
				t.Errorf("second request ran in pid %q, first in %q", got, pid)
			}
			if got := readFile(t, filepath.Join(s.dir, "sb/state.txt")); got != "invocation 2\n" {
				t.Errorf("stateful output = %q", got)
			}
			if got := readFile(t, filepath.Join(s.dir, "sb/x")); got != "in sandbox" {
				t.Errorf("sandboxed output = %q", got)
			}

			// A failing argument is reported in the response, not by dying.
			s.send(t, &pb.WorkRequest{Arguments: []string{"--say=before", "--cat=missing.txt", "--say=after"}})
			resp = s.response(t)
			if resp.ExitCode != 2 || !strings.HasPrefix(resp.Output, "before\ntestworker: --cat=missing.txt:") || strings.Contains(resp.Output, "after") {
				t.Fatalf("failing request response = %v", resp)
			}

			if code := s.exitCode(t); code != 0 {
				t.Fatalf("exit code %d after stdin closed", code)
			}
			if r := s.next(t); r.err != io.EOF {
				t.Fatalf("after exit: %v, %v; want io.EOF", r.resp, r.err)
			}
			if !strings.Contains(s.stderr.String(), "--tool-flag=1") {
				t.Errorf("startup args not echoed on stderr:\n%s", s.stderr.String())
			}
		})
	}
}

func TestOneShotMatchesARequest(t *testing.T) {
	dir := t.TempDir()
	flags := "--out=o/out.txt\n--content=c\n--say=hello\n--counter\n--stateful-out=state.txt\n--echo-inputs=inputs.txt\n--exit=4\n@@literal\n"
	if err := os.WriteFile(filepath.Join(dir, "flags.txt"), []byte(flags), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "--tool-flag=1", "@flags.txt", "--flagfile=more.txt")
	if err := os.WriteFile(filepath.Join(dir, "more.txt"), []byte("--say=more\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 4 {
		t.Fatalf("one-shot run: %v, want exit code 4", err)
	}
	if stderr.String() != "hello\n1\nmore\n" || stdout.Len() != 0 {
		t.Fatalf("stderr %q, stdout %q", stderr.String(), stdout.String())
	}
	for name, want := range map[string]string{"o/out.txt": "c", "state.txt": "invocation 1\n", "inputs.txt": ""} {
		if got := readFile(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
}

func TestMultiplexAndCancel(t *testing.T) {
	s := startWorker(t, workerproto.Proto, "--multiplex", "--honor-cancel")
	s.send(t, &pb.WorkRequest{RequestId: 1, Arguments: []string{"--sleep=1h", "--say=never"}})
	s.send(t, &pb.WorkRequest{RequestId: 2, Arguments: []string{"--say=two"}, SandboxDir: "2"})
	// Request 2 overtakes the sleeping request 1.
	if resp := s.response(t); resp.RequestId != 2 || resp.Output != "two\n" {
		t.Fatalf("first response = %v, want request 2", resp)
	}
	s.send(t, &pb.WorkRequest{RequestId: 1, Cancel: true})
	if resp := s.response(t); resp.RequestId != 1 || !resp.WasCancelled || resp.Output != "" {
		t.Fatalf("response to cancel = %v", resp)
	}
	// A cancel for a request already answered is ignored.
	s.send(t, &pb.WorkRequest{RequestId: 2, Cancel: true})
	s.send(t, &pb.WorkRequest{RequestId: 3, Arguments: []string{"--say=three"}})
	if resp := s.response(t); resp.RequestId != 3 || resp.WasCancelled {
		t.Fatalf("response after stale cancel = %v, want request 3", resp)
	}
	if code := s.exitCode(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// A singleplex worker queues requests in order; a cancel stops the running
// one and the queued one still runs.
func TestSingleplexQueueAndCancel(t *testing.T) {
	s := startWorker(t, workerproto.JSON, "--protocol=json", "--honor-cancel")
	s.send(t, &pb.WorkRequest{Arguments: []string{"--sleep=1h"}})
	s.send(t, &pb.WorkRequest{Arguments: []string{"--say=queued"}})
	s.send(t, &pb.WorkRequest{Cancel: true})
	if resp := s.response(t); !resp.WasCancelled {
		t.Fatalf("first response = %v, want was_cancelled", resp)
	}
	if resp := s.response(t); resp.WasCancelled || resp.Output != "queued\n" {
		t.Fatalf("second response = %v, want the queued request's", resp)
	}
}

func TestMultiplexRejectsDuplicateID(t *testing.T) {
	s := startWorker(t, workerproto.Proto, "--multiplex")
	s.send(t, &pb.WorkRequest{RequestId: 5, Arguments: []string{"--sleep=500ms", "--say=first"}})
	s.send(t, &pb.WorkRequest{RequestId: 5, Arguments: []string{"--say=second"}})
	if resp := s.response(t); resp.RequestId != 5 || resp.ExitCode != 2 || !strings.Contains(resp.Output, "already in flight") {
		t.Fatalf("response to duplicate = %v", resp)
	}
	if resp := s.response(t); resp.Output != "first\n" {
		t.Fatalf("original request answered %v", resp)
	}
}

func TestCancelIgnoredWithoutHonorCancel(t *testing.T) {
	s := startWorker(t, workerproto.JSON, "--protocol=json")
	s.send(t, &pb.WorkRequest{Arguments: []string{"--sleep=300ms", "--say=finished"}})
	s.send(t, &pb.WorkRequest{Cancel: true})
	if resp := s.response(t); resp.WasCancelled || resp.Output != "finished\n" {
		t.Fatalf("response = %v, want the request to finish normally", resp)
	}
}

// The misbehaviours a pool must survive, each seen through the real reader.
func TestMisbehaviour(t *testing.T) {
	for _, p := range []workerproto.Protocol{workerproto.Proto, workerproto.JSON} {
		t.Run(p.String()+"/banner", func(t *testing.T) {
			s := startWorker(t, p, "--protocol="+p.String(), "--startup-banner")
			// No request is sent: the banner alone must fail the read rather
			// than leave the reader waiting for bytes that never come.
			if r := s.next(t); !errors.Is(r.err, workerproto.ErrMalformed) {
				t.Fatalf("reading after banner: %v, %v; want ErrMalformed", r.resp, r.err)
			}
		})
		t.Run(p.String()+"/garbage", func(t *testing.T) {
			s := startWorker(t, p, "--protocol="+p.String())
			s.send(t, &pb.WorkRequest{Arguments: []string{"--garbage"}})
			if r := s.next(t); !errors.Is(r.err, workerproto.ErrMalformed) {
				t.Fatalf("reading after garbage: %v, %v; want ErrMalformed", r.resp, r.err)
			}
		})
	}
	t.Run("crash", func(t *testing.T) {
		s := startWorker(t, workerproto.Proto)
		s.send(t, &pb.WorkRequest{Arguments: []string{"--say=unseen", "--crash"}})
		if r := s.next(t); r.err != io.EOF {
			t.Fatalf("after crash: %v, %v; want io.EOF", r.resp, r.err)
		}
		if code := s.exitCode(t); code != exitCrash {
			t.Fatalf("exit code %d, want %d", code, exitCrash)
		}
	})
	t.Run("close-stdout", func(t *testing.T) {
		s := startWorker(t, workerproto.Proto)
		s.send(t, &pb.WorkRequest{Arguments: []string{"--close-stdout"}})
		if r := s.next(t); r.err != io.EOF {
			t.Fatalf("after close-stdout: %v, %v; want io.EOF", r.resp, r.err)
		}
		// Still alive and serving: the next request is performed.
		s.send(t, &pb.WorkRequest{Arguments: []string{"--pid=alive.txt"}})
		path := filepath.Join(s.dir, "alive.txt")
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(path); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("worker stopped serving after closing stdout; stderr:\n%s", s.stderr.String())
			}
		}
		if code := s.exitCode(t); code != 0 {
			t.Fatalf("exit code %d", code)
		}
	})
}

func TestGrowRaisesResidentMemory(t *testing.T) {
	s := startWorker(t, workerproto.Proto)
	rss := func() int64 {
		data := readFile(t, fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
		for line := range strings.SplitSeq(data, "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return kb << 10
			}
		}
		t.Fatal("no VmRSS")
		return 0
	}
	s.send(t, &pb.WorkRequest{Arguments: []string{"--say=warm"}})
	s.response(t)
	before := rss()
	for range 2 {
		s.send(t, &pb.WorkRequest{Arguments: []string{"--grow=16M"}})
		if resp := s.response(t); resp.ExitCode != 0 {
			t.Fatalf("grow: %v", resp)
		}
	}
	if after := rss(); after-before < 30<<20 {
		t.Fatalf("RSS grew from %d to %d, want at least 30 MiB more", before, after)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"4096", 4096, true}, {"2k", 2048, true}, {"3M", 3 << 20, true}, {"1G", 1 << 30, true},
		{"", 0, false}, {"M", 0, false}, {"-1", 0, false}, {"1T", 0, false}, {"2048G", 0, false}, {"1.5M", 0, false},
	}
	for _, tc := range tests {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestExpandFlagFilesRejectsLoops(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "loop"), []byte("@loop\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := expandFlagFiles([]string{"@loop"}, dir, 0); err == nil || !strings.Contains(err.Error(), "nested") {
		t.Fatalf("self-referencing flag file: %v", err)
	}
}
