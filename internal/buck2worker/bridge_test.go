package buck2worker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	bpb "github.com/hearth-build/hearth/internal/buck2worker/buck2workerpb"
	"github.com/hearth-build/hearth/internal/workerproto"
)

var (
	buildOnce     sync.Once
	testWorkerBin string
	buildErr      error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "buck2worker-test-")
	if err != nil {
		panic(err)
	}
	testWorkerBin = filepath.Join(dir, "testworker")
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// testWorker returns the path of the real test worker, built once.
func testWorker(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", testWorkerBin,
			"github.com/hearth-build/hearth/internal/workerproto/testworker").CombinedOutput()
		if err != nil {
			buildErr = errors.New(err.Error() + ": " + string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("building the test worker: %v", buildErr)
	}
	return testWorkerBin
}

// harness is a bridge served on a Unix socket, with a Buck2-side client.
type harness struct {
	workDir string
	worker  bpb.WorkerClient
	stream  bpb.WorkerStreamingClient
}

// startBridge serves a bridge over the test worker started with flags.
func startBridge(t *testing.T, cfg Config, flags ...string) *harness {
	t.Helper()
	if cfg.WorkDir == "" {
		cfg.WorkDir = t.TempDir()
	}
	cfg.Argv = append([]string{testWorker(t)}, flags...)
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 2
	}
	if cfg.Env == nil {
		cfg.Env = []string{"PATH=/usr/bin:/bin", "BASE=base"}
	}
	if cfg.VolatileEnv == nil {
		cfg.VolatileEnv = DefaultVolatileEnv
	}
	cfg.PoolDir = t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// A short directory: Unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "b2w")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(sockDir, "socket")
	lis, err := Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(b)
	go srv.Serve(lis)
	conn, err := Dial(t.Context(), socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		b.Close()
		os.RemoveAll(sockDir)
	})
	return &harness{workDir: cfg.WorkDir, worker: bpb.NewWorkerClient(conn), stream: bpb.NewWorkerStreamingClient(conn)}
}

func command(env []string, args ...string) *bpb.ExecuteCommand {
	c := &bpb.ExecuteCommand{}
	for _, a := range args {
		c.Argv = append(c.Argv, []byte(a))
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		c.Env = append(c.Env, &bpb.ExecuteCommand_EnvironmentEntry{Key: []byte(k), Value: []byte(v)})
	}
	return c
}

func (h *harness) execute(t *testing.T, env []string, args ...string) *bpb.ExecuteResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	resp, err := h.worker.Execute(ctx, command(env, args...))
	if err != nil {
		t.Fatalf("Execute(%q): %v", args, err)
	}
	return resp
}

// pid runs a request that records the serving process's pid.
func (h *harness) pid(t *testing.T, env ...string) int {
	t.Helper()
	name := "pid-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	h.execute(t, env, "--pid="+name)
	data, err := os.ReadFile(filepath.Join(h.workDir, name))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// oneShot runs the test worker once, as the fallback would, in dir.
func oneShot(t *testing.T, dir string, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(testWorker(t), args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func TestRequestsMatchOneShotRuns(t *testing.T) {
	for _, protocol := range []workerproto.Protocol{workerproto.Proto, workerproto.JSON} {
		t.Run(protocol.String(), func(t *testing.T) {
			h := startBridge(t, Config{Protocol: protocol}, "--protocol="+protocol.String())
			if err := os.WriteFile(filepath.Join(h.workDir, "in.txt"), []byte("from a file\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(h.workDir, "args"), []byte("--say=from an argfile\n--cat=in.txt\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{
				{"--say=hello", "--getenv=BASE", "--out=o/a.txt", "--content=A"},
				{"@args", "--exit=3"},
				{"--getenv=OWN"},
				// Outside the work dir: not expanded by the bridge, so
				// the request runs one-shot, with the same answer.
				{"@" + filepath.Join(h.workDir, "args")},
			} {
				env := []string{"OWN=mine"}
				resp := h.execute(t, env, args...)
				code, out := oneShot(t, h.workDir, []string{"BASE=base", "OWN=mine"}, args...)
				if int(resp.GetExitCode()) != code || resp.GetStderr() != out {
					t.Errorf("%q: bridge answered exit %d %q; one-shot: exit %d %q", args, resp.GetExitCode(), resp.GetStderr(), code, out)
				}
			}
			if data, err := os.ReadFile(filepath.Join(h.workDir, "o/a.txt")); err != nil || string(data) != "A" {
				t.Errorf("output file in the work dir: %q, %v", data, err)
			}
			if a, b := h.pid(t, "OWN=mine"), h.pid(t, "OWN=mine"); a != b {
				t.Errorf("two requests ran on pids %d and %d: the worker was not kept", a, b)
			}
		})
	}
}

func TestEnvironmentSelectsTheProcess(t *testing.T) {
	h := startBridge(t, Config{})
	base := h.pid(t, "A=1", "TMPDIR=/tmp/scratch1", "BUCK_BUILD_ID=b1")
	for _, tc := range []struct {
		env  []string
		same bool
	}{
		{[]string{"A=1", "TMPDIR=/tmp/scratch2", "BUCK_BUILD_ID=b2"}, true}, // only volatile variables differ
		{[]string{"A=2", "TMPDIR=/tmp/scratch1", "BUCK_BUILD_ID=b1"}, false},
		{[]string{"A=1", "B=1"}, false},
	} {
		if got := h.pid(t, tc.env...); (got == base) != tc.same {
			t.Errorf("env %q: pid %d, first pid %d; want same process = %t", tc.env, got, base, tc.same)
		}
	}
	// The request's value wins over the bridge's own.
	if got := h.execute(t, []string{"BASE=request"}, "--getenv=BASE").GetStderr(); got != "BASE=request\n" {
		t.Errorf("BASE = %q, want the request's value", got)
	}
}

func TestConcurrency(t *testing.T) {
	for _, tc := range []struct {
		name      string
		multiplex bool
		flags     []string
	}{
		{"singleplex: several processes", false, nil},
		{"multiplex: one process", true, []string{"--multiplex"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startBridge(t, Config{Concurrency: 3, Multiplex: tc.multiplex}, tc.flags...)
			start := time.Now()
			var wg sync.WaitGroup
			for i := range 3 {
				wg.Go(func() {
					h.execute(t, nil, "--sleep=700ms", "--pid=p"+strconv.Itoa(i))
				})
			}
			wg.Wait()
			if took := time.Since(start); took > 1800*time.Millisecond {
				t.Errorf("three 700ms commands took %v with concurrency 3: they did not overlap", took)
			}
			pids := map[string]bool{}
			for i := range 3 {
				data, err := os.ReadFile(filepath.Join(h.workDir, "p"+strconv.Itoa(i)))
				if err != nil {
					t.Fatal(err)
				}
				pids[string(data)] = true
			}
			if want := map[bool]int{false: 3, true: 1}[tc.multiplex]; len(pids) != want {
				t.Errorf("commands ran on %d processes, want %d", len(pids), want)
			}
		})
	}
	t.Run("excess commands wait for a slot", func(t *testing.T) {
		h := startBridge(t, Config{Concurrency: 1})
		start := time.Now()
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() { h.execute(t, nil, "--sleep=400ms") })
		}
		wg.Wait()
		if took := time.Since(start); took < 800*time.Millisecond {
			t.Errorf("two 400ms commands took %v with concurrency 1: they overlapped", took)
		}
	})
}

func TestCancellation(t *testing.T) {
	t.Run("a cancelled RPC kills a worker without cancel support", func(t *testing.T) {
		h := startBridge(t, Config{})
		before := h.pid(t)
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := h.worker.Execute(ctx, command(nil, "--sleep=20s"))
		if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 5*time.Second {
			t.Fatalf("Execute = %v after %v, want DeadlineExceeded soon", err, time.Since(start))
		}
		waitGone(t, before)
		if after := h.pid(t); after == before {
			t.Errorf("the cancelled worker (pid %d) served again", before)
		}
	})
	t.Run("ExecuteCancel reaches a cancellable worker, which stays", func(t *testing.T) {
		h := startBridge(t, Config{Cancellable: true, Concurrency: 1}, "--honor-cancel")
		before := h.pid(t)
		stream, err := h.worker.Exec(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&bpb.ExecuteEvent{Data: &bpb.ExecuteEvent_Command{Command: command(nil, "--sleep=20s")}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		if err := stream.Send(&bpb.ExecuteEvent{Data: &bpb.ExecuteEvent_Cancel{Cancel: &bpb.ExecuteCancel{}}}); err != nil {
			t.Fatal(err)
		}
		_, err = stream.CloseAndRecv()
		if status.Code(err) != codes.Canceled || time.Since(start) > 5*time.Second {
			t.Fatalf("Exec = %v after %v, want Canceled soon", err, time.Since(start))
		}
		if after := h.pid(t); after != before {
			t.Errorf("after a honoured cancel the next request ran on pid %d, want the same worker %d", after, before)
		}
	})
	t.Run("Exec without cancel answers", func(t *testing.T) {
		h := startBridge(t, Config{})
		stream, err := h.worker.Exec(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&bpb.ExecuteEvent{Data: &bpb.ExecuteEvent_Command{Command: command(nil, "--say=hi")}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.CloseAndRecv()
		if err != nil || resp.GetStderr() != "hi\n" {
			t.Fatalf("Exec = %v, %v", resp, err)
		}
	})
}

// waitGone waits until pid no longer exists.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(data), ") Z ") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("worker pid %d still runs after its request was cancelled", pid)
}

func TestTimeout(t *testing.T) {
	h := startBridge(t, Config{})
	c := command(nil, "--say=started", "--sleep=20s")
	one := uint64(1)
	c.TimeoutS = &one
	start := time.Now()
	resp, err := h.worker.Execute(t.Context(), c)
	if err != nil || resp.TimedOutAfterS == nil || resp.GetTimedOutAfterS() != 1 || time.Since(start) > 6*time.Second {
		t.Fatalf("Execute = %v, %v after %v; want timed_out_after_s 1", resp, err, time.Since(start))
	}
}

func TestCrashedWorkerIsRetriedOneShot(t *testing.T) {
	h := startBridge(t, Config{})
	before := h.pid(t)
	// --close-stdout loses a persistent worker's response; a one-shot run
	// does not care.
	resp := h.execute(t, nil, "--close-stdout", "--say=recovered")
	if resp.GetExitCode() != 0 || resp.GetStderr() != "recovered\n" {
		t.Errorf("after the worker failed: exit %d %q, want the one-shot result", resp.GetExitCode(), resp.GetStderr())
	}
	waitGone(t, before)
	// A tool that crashes on the input crashes one-shot too, and Buck2
	// gets its real exit code.
	if resp := h.execute(t, nil, "--crash"); resp.GetExitCode() != 3 {
		t.Errorf("--crash: exit %d, want the one-shot run's 3", resp.GetExitCode())
	}
	if after := h.pid(t); after == before {
		t.Errorf("the failed worker %d served again", before)
	}
}

func TestStreaming(t *testing.T) {
	h := startBridge(t, Config{Concurrency: 3})
	stream, err := h.stream.ExecuteStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		req := &bpb.ExecuteCommandStream{Request: command(nil, "--sleep="+strconv.Itoa(300*(3-i))+"ms", "--say=n"+strconv.Itoa(i)), Id: uint64(10 + i)}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]string{}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[msg.GetId()] = msg.GetResponse().GetStderr()
	}
	for i := range 3 {
		if want := "n" + strconv.Itoa(i) + "\n"; got[uint64(10+i)] != want {
			t.Errorf("id %d: %q, want %q (all: %v)", 10+i, got[uint64(10+i)], want, got)
		}
	}
}

func TestBadInput(t *testing.T) {
	h := startBridge(t, Config{})
	for name, c := range map[string]*bpb.ExecuteCommand{
		"argument not UTF-8": {Argv: [][]byte{{0xff, 0xfe}}},
		"NUL in argument":    {Argv: [][]byte{[]byte("a\x00b")}},
		"env without name":   {Env: []*bpb.ExecuteCommand_EnvironmentEntry{{Value: []byte("v")}}},
		"env name with =":    {Env: []*bpb.ExecuteCommand_EnvironmentEntry{{Key: []byte("A=B"), Value: []byte("v")}}},
	} {
		if _, err := h.worker.Execute(t.Context(), c); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	stream, err := h.worker.Exec(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bpb.ExecuteEvent{Data: &bpb.ExecuteEvent_Cancel{Cancel: &bpb.ExecuteCancel{}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Exec starting with a cancel: %v, want InvalidArgument", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	good := Config{Argv: []string{"/bin/true"}, Concurrency: 1, WorkDir: dir, PoolDir: t.TempDir()}
	for name, mutate := range map[string]func(*Config){
		"no command":         func(c *Config) { c.Argv = nil },
		"missing executable": func(c *Config) { c.Argv = []string{"/nonexistent/tool"} },
		"zero concurrency":   func(c *Config) { c.Concurrency = 0 },
		"relative work dir":  func(c *Config) { c.WorkDir = "rel" },
		"missing input dir":  func(c *Config) { c.InputDirs = []string{"nope"} },
		"unknown protocol":   func(c *Config) { c.Protocol = 7 },
	} {
		cfg := good
		mutate(&cfg)
		if b, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
			if b != nil {
				b.Close()
			}
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}
}
