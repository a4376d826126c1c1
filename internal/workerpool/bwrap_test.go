package workerpool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/sandbox"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

func TestBwrapConfinesWrites(t *testing.T) {
	etcProbe := fmt.Sprintf("/etc/hearth-workerpool-probe-%d", os.Getpid())
	hostTmpProbe := filepath.Join(os.TempDir(), fmt.Sprintf("hearth-workerpool-probe-%d", os.Getpid()))
	t.Cleanup(func() { os.Remove(etcProbe); os.Remove(hostTmpProbe) })
	// Each attempt reports 0 (written) or 1 (refused) in the output.
	body := `r=""
for f in inside.txt ../escape.txt ` + etcProbe + ` ` + hostTmpProbe + `; do
  if echo x 2>/dev/null > "$f"; then r="$r 0"; else r="$r 1"; fi
done
echo "{\"exitCode\": 0, \"output\": \"$r\"}"`
	spec := shellWorker(t, "k", "", body)
	p := newPool(t, Options{Sandbox: sandbox.Bwrap, Prepare: stageInWorkspace(t, spec)})
	l := acquire(t, p, spec)
	defer l.Release()
	out := strings.Fields(do(t, l, "x").GetOutput())
	if len(out) != 4 {
		t.Fatalf("worker output %q, want 4 results", out)
	}
	if out[0] != "0" {
		t.Errorf("writing into its workspace failed")
	}
	if _, err := os.Stat(filepath.Join(l.Dir(), "inside.txt")); err != nil {
		t.Errorf("a file written in the workspace is not visible to the executor: %v", err)
	}
	if out[2] != "1" {
		t.Errorf("the worker could write %s", etcProbe)
	}
	// The parent directory and /tmp are private tmpfs mounts: a write may
	// succeed there, but it must never reach the host.
	for _, host := range []string{filepath.Join(filepath.Dir(l.Dir()), "escape.txt"), etcProbe, hostTmpProbe} {
		if _, err := os.Stat(host); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a write of the sandboxed worker reached the host: %s (%v)", host, err)
		}
	}
}

func TestBwrapHasNoNetwork(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatalf("this test needs bash for /dev/tcp: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			accepted <- struct{}{}
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	body := fmt.Sprintf(`if bash -c 'echo hi > /dev/tcp/127.0.0.1/%d' 2>/dev/null; then echo '{"exitCode": 0}'; else echo '{"exitCode": 1}'; fi`, port)
	tests := []struct {
		sandbox  sandbox.Kind
		wantExit int32
	}{
		{sandbox.None, 0}, // the control: the listener is reachable
		{sandbox.Bwrap, 1},
	}
	for _, tc := range tests {
		t.Run(tc.sandbox.String(), func(t *testing.T) {
			spec := shellWorker(t, "k", "", body)
			p := newPool(t, Options{Sandbox: tc.sandbox, Prepare: stageInWorkspace(t, spec)})
			l := acquire(t, p, spec)
			defer l.Release()
			if got := do(t, l, "x").GetExitCode(); got != tc.wantExit {
				t.Errorf("connecting to 127.0.0.1:%d: exit %d, want %d", port, got, tc.wantExit)
			}
		})
	}
	if len(accepted) != 1 {
		t.Errorf("the listener accepted %d connections, want 1 (the unsandboxed control)", len(accepted))
	}
}

func TestBwrapRefusesAProgramItWouldHide(t *testing.T) {
	p := newPool(t, Options{Sandbox: sandbox.Bwrap})
	dir, err := os.MkdirTemp("/tmp", "workerpool-hidden-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	program := filepath.Join(dir, "worker")
	if err := os.WriteFile(program, []byte("#!/bin/sh\nexec cat\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := &Spec{Key: "k", Argv: []string{program}, Env: []string{}}
	_, err = p.Acquire(context.Background(), spec)
	if !errors.Is(err, ErrStartFailed) || !strings.Contains(err.Error(), "which the bwrap sandbox hides") {
		t.Fatalf("Acquire = %v, want ErrStartFailed explaining the program is hidden", err)
	}
}

func TestBwrapMissingFailsAtNew(t *testing.T) {
	_, err := New(Options{Dir: t.TempDir(), Sandbox: sandbox.Bwrap, BwrapPath: "/nonexistent/bwrap"})
	if !errors.Is(err, ErrSandboxUnavailable) {
		t.Fatalf("New = %v, want ErrSandboxUnavailable", err)
	}
	// A "bwrap" that cannot sandbox: the probe reports its complaint.
	fake := filepath.Join(t.TempDir(), "bwrap")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = New(Options{Dir: t.TempDir(), Sandbox: sandbox.Bwrap, BwrapPath: fake})
	if !errors.Is(err, ErrSandboxUnavailable) || !strings.Contains(err.Error(), "No permissions to create new namespace") {
		t.Fatalf("New = %v, want ErrSandboxUnavailable with bwrap's message", err)
	}
}

// helperEnv makes the test binary act as an executor that starts one worker,
// prints its pids and waits to be killed.
const helperEnv = "HEARTH_WORKERPOOL_HELPER_SANDBOX"

func TestHelperExecutor(t *testing.T) {
	kind := os.Getenv(helperEnv)
	if kind == "" {
		return // only meaningful as the child of TestWorkersDieWithTheExecutor
	}
	opts := Options{Dir: os.Getenv("HEARTH_WORKERPOOL_HELPER_DIR")}
	startup := ""
	if kind == "bwrap" {
		opts.Sandbox = sandbox.Bwrap
		// Under bwrap even a process that leaves the group must die.
		startup = "setsid sleep 1000 &"
	}
	spec := shellWorker(t, "k", startup, `echo '{}'`)
	opts.Prepare = stageInWorkspace(t, spec)
	p, err := New(opts)
	if err != nil {
		fmt.Println("ERROR", err)
		return
	}
	l, err := p.Acquire(context.Background(), spec)
	if err == nil {
		_, err = l.Do(context.Background(), &pb.WorkRequest{})
	}
	if err != nil {
		fmt.Printf("ERROR %q\n", err)
		return
	}
	pids := append([]int{l.PID()}, descendants(t, l.PID())...)
	fmt.Println("PIDS", strings.Trim(fmt.Sprint(pids), "[]"))
	time.Sleep(time.Minute)
}

func TestWorkersDieWithTheExecutor(t *testing.T) {
	for _, sandbox := range []string{"none", "bwrap"} {
		t.Run(sandbox, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperExecutor$", "-test.count=1")
			// TMPDIR: the helper's own temporary files end up in ours,
			// which are removed even though the helper is killed.
			cmd.Env = append(os.Environ(), helperEnv+"="+sandbox, "HEARTH_WORKERPOOL_HELPER_DIR="+t.TempDir(),
				"TMPDIR="+t.TempDir())
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			lines := bufio.NewScanner(stdout)
			var pids []int
			for pids == nil && lines.Scan() {
				if rest, ok := strings.CutPrefix(lines.Text(), "PIDS "); ok {
					for _, f := range strings.Fields(rest) {
						pid, _ := strconv.Atoi(f)
						pids = append(pids, pid)
					}
				} else if strings.HasPrefix(lines.Text(), "ERROR") {
					t.Fatal(lines.Text())
				}
			}
			wantProcs := 1
			if sandbox == "bwrap" {
				wantProcs = 4 // bwrap, bwrap's init in the PID namespace, the worker, its escaped child
			}
			if len(pids) < wantProcs {
				t.Fatalf("helper reported pids %v, want at least %d", pids, wantProcs)
			}
			for _, pid := range pids {
				if !alive(pid) {
					t.Fatalf("process %d of %v is not running before the executor dies", pid, pids)
				}
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			waitGone(t, pids...)
		})
	}
}
