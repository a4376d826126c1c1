package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// How long a hearth process may take to become ready and to exit. Generous:
// CI runs on two shared cores, and the server's own shutdown grace period is
// ten seconds.
const (
	readyTimeout = 60 * time.Second
	exitTimeout  = 40 * time.Second
)

// hearthProcess is one running hearth child: `hearth serve`, `hearth server`
// or `hearth worker`.
type hearthProcess struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *lineLog
	done chan struct{} // closed when the process has exited and been reaped

	// Filled in by waitReady from the "hearth serving" log line.
	GRPCAddr string
	HTTPAddr string
	DataDir  string

	stopped bool // the test stopped or awaited it; Cleanup then does nothing
}

// startServe starts `hearth serve` on free loopback ports with dataDir and
// waits until it is healthy. Cleanup stops it with SIGTERM and fails the test
// unless it exits 0.
func startServe(t *testing.T, dataDir string, extraArgs ...string) *hearthProcess {
	t.Helper()
	return startServer(t, "serve", dataDir, nil, extraArgs...)
}

// startServer starts `hearth command` (serve or server) like startServe,
// with extraEnv ("NAME=value") added to the test's own environment.
func startServer(t *testing.T, command, dataDir string, extraEnv []string, extraArgs ...string) *hearthProcess {
	t.Helper()
	args := append([]string{
		command,
		"--listen", "127.0.0.1:0",
		"--http", freeLoopbackAddr(t),
		"--data", dataDir,
	}, extraArgs...)
	p := launchHearth(t, t.TempDir(), extraEnv, args...)
	if err := p.waitReady(t.Context()); err != nil {
		t.Fatalf("hearth %s did not become ready: %v\n%s", command, err, p.log.tail(50))
	}
	return p
}

// launchServe starts `hearth serve args...` in dir without waiting for it.
func launchServe(t *testing.T, dir string, args ...string) *hearthProcess {
	t.Helper()
	return launchHearth(t, dir, nil, append([]string{"serve"}, args...)...)
}

// launchHearth starts `hearth args...` in dir, with extraEnv added to the
// test's environment, without waiting for it.
func launchHearth(t *testing.T, dir string, extraEnv []string, args ...string) *hearthProcess {
	t.Helper()
	cmd := exec.Command(hearthBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extraEnv...)
	log := newLineLog()
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so that kill takes down anything it spawns
	// (the embedded executor's actions); Pdeathsig so that a crashed test
	// binary leaves no server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting hearth: %v", err)
	}
	p := &hearthProcess{t: t, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.stopped {
			p.stop(syscall.SIGTERM)
		}
		p.checkLog()
		if t.Failed() {
			t.Logf("hearth %v output (last 60 lines):\n%s", args, p.log.tail(60))
		}
	})
	return p
}

// waitReady waits for the "hearth serving" log line, records the addresses it
// names, then polls /healthz until it answers 200.
func (p *hearthProcess) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	line, err := p.log.waitFor(ctx, p.done, `msg="hearth serving"`)
	if err != nil {
		return err
	}
	kv := parseLogfmt(line)
	p.GRPCAddr, p.HTTPAddr, p.DataDir = kv["grpc"], kv["http"], kv["data"]
	if p.GRPCAddr == "" || p.HTTPAddr == "" || p.DataDir == "" {
		return fmt.Errorf("serving log line lacks grpc=, http= or data=: %s", line)
	}
	url := "http://" + p.HTTPAddr + "/healthz"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		select {
		case <-p.done:
			return fmt.Errorf("hearth exited (%v) before %s answered", p.cmd.ProcessState, url)
		case <-ctx.Done():
			return fmt.Errorf("%s never healthy: %w (last error: %v)", url, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends sig to hearth and fails the test unless it exits 0 in time.
func (p *hearthProcess) stop(sig syscall.Signal) {
	p.t.Helper()
	p.signal(sig)
	p.waitExit(0)
}

// signal sends sig to hearth only (not its group), as a supervisor would.
func (p *hearthProcess) signal(sig syscall.Signal) {
	p.t.Helper()
	p.stopped = true
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Errorf("signalling hearth: %v", err)
	}
}

// waitExit waits for hearth to exit and fails the test unless its exit code
// is want. A process that does not exit in time is killed.
func (p *hearthProcess) waitExit(want int) {
	p.t.Helper()
	p.stopped = true
	select {
	case <-p.done:
	case <-time.After(exitTimeout):
		p.killGroup()
		<-p.done
		p.t.Errorf("hearth did not exit within %v; killed it", exitTimeout)
		return
	}
	if got := p.cmd.ProcessState.ExitCode(); got != want {
		p.t.Errorf("hearth exited with %v, want exit code %d\n%s", p.cmd.ProcessState, want, p.log.tail(30))
	}
}

// kill simulates a crash: SIGKILL to hearth and its whole process group.
func (p *hearthProcess) kill() {
	p.t.Helper()
	p.stopped = true
	p.killGroup()
	<-p.done
}

func (p *hearthProcess) killGroup() {
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.t.Errorf("killing hearth's process group: %v", err)
	}
}

// checkLog fails the test if hearth reported a data race (it is built with
// -race; a killed process never gets to exit with the race exit code) or
// logged at ERROR level.
func (p *hearthProcess) checkLog() {
	p.t.Helper()
	for _, line := range strings.Split(p.log.String(), "\n") {
		switch {
		case strings.Contains(line, "WARNING: DATA RACE"):
			p.t.Errorf("hearth reported a data race (full report below)")
		case strings.Contains(line, "level=ERROR"):
			p.t.Errorf("hearth logged an error: %s", line)
		}
	}
}

// freeLoopbackAddr returns a loopback address whose port was free a moment
// ago. Used only for the HTTP listener, whose bound address the serving log
// line does not report back; gRPC listens on port 0.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// parseLogfmt parses the key=value pairs of a log/slog text line; quoted
// values are unquoted.
func parseLogfmt(line string) map[string]string {
	kv := map[string]string{}
	for s := strings.TrimSpace(line); s != ""; s = strings.TrimSpace(s) {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			break
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			end := closingQuote(s)
			val, s = unquoteOr(s[:end]), s[end:]
		} else {
			end := strings.IndexByte(s, ' ')
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		kv[key] = val
	}
	return kv
}

// closingQuote returns the index just past the quoted string s starts with.
func closingQuote(s string) int {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(s)
}

func unquoteOr(q string) string {
	if out, err := strconv.Unquote(q); err == nil {
		return out
	}
	return strings.Trim(q, `"`)
}
