package workerpool

import (
	"bytes"
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
	"syscall"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

var (
	buildOnce     sync.Once
	testWorkerBin string
	buildErr      error
	buildDir      string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// testWorker returns the path of the real test worker program, built once.
func testWorker(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "workerpool-test-")
		if buildErr != nil {
			return
		}
		testWorkerBin = filepath.Join(buildDir, "testworker")
		cmd := exec.Command("go", "build", "-o", testWorkerBin, "github.com/hearth-build/hearth/internal/workerproto/testworker")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = errors.New(err.Error() + ": " + string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("building the test worker: %v", buildErr)
	}
	return testWorkerBin
}

// newPool returns a pool closed at the end of the test. opts.Dir defaults to
// a fresh temporary directory.
func newPool(t *testing.T, opts Options) *Pool {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// quietLogger keeps the pools' expected warnings out of the test output.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// workerSpec is a spec for the test worker; flags are startup flags.
func workerSpec(t *testing.T, key string, protocol workerproto.Protocol, flags ...string) *Spec {
	argv := append([]string{testWorker(t), "--protocol=" + protocol.String()}, flags...)
	return &Spec{Key: key, Argv: argv, Env: []string{"PATH=/usr/bin:/bin"}, Protocol: protocol}
}

func acquire(t *testing.T, p *Pool, spec *Spec) *Lease {
	t.Helper()
	l, err := p.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", spec.Key, err)
	}
	return l
}

// do sends one request with args and fails the test on an error.
func do(t *testing.T, l *Lease, args ...string) *pb.WorkResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := l.Do(ctx, &pb.WorkRequest{Arguments: args})
	if err != nil {
		t.Fatalf("Do(%q): %v", args, err)
	}
	return resp
}

// roundTrip acquires, sends one request, releases, and returns the pid.
func roundTrip(t *testing.T, p *Pool, spec *Spec, args ...string) int {
	t.Helper()
	l := acquire(t, p, spec)
	defer l.Release()
	do(t, l, args...)
	return l.PID()
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

// waitGone fails unless every pid is dead within a few seconds.
func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("process %d is still alive", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// waitFor polls cond for up to 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func keyStats(p *Pool, key string) KeyStats {
	for _, ks := range p.Stats().Keys {
		if ks.Key == key {
			return ks
		}
	}
	return KeyStats{Key: key}
}

// descendants returns the pids of every process below root.
func descendants(t *testing.T, root int) []int {
	t.Helper()
	table, err := readProcTable()
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		parent := queue[0]
		queue = queue[1:]
		for pid, e := range table {
			if e.ppid == parent {
				out = append(out, pid)
				queue = append(queue, pid)
			}
		}
	}
	return out
}

// shellWorker writes a /bin/sh script speaking the JSON protocol (one object
// per line) and returns a spec running it. body runs once per request line,
// with the line in $line.
func shellWorker(t *testing.T, key, startup, body string) *Spec {
	t.Helper()
	script := filepath.Join(t.TempDir(), "worker.sh")
	text := "#!/bin/sh\n" + startup + "\nwhile read -r line; do\n" + body + "\ndone\n"
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Spec{Key: key, Argv: []string{script}, Env: []string{"PATH=/usr/bin:/bin"}, Protocol: workerproto.JSON}
}

// stageInWorkspace makes spec run its program from the workspace, copied
// there by the returned Prepare, as the builder stages tools (and as a
// bwrap-sandboxed worker needs: the host's /tmp is hidden from it).
func stageInWorkspace(t *testing.T, spec *Spec) func(context.Context, string, *Spec) error {
	t.Helper()
	program, err := os.ReadFile(spec.Argv[0])
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(spec.Argv[0])
	spec.Argv[0] = "./" + name
	return func(_ context.Context, ws string, _ *Spec) error {
		return os.WriteFile(filepath.Join(ws, name), program, 0o555)
	}
}
