package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/casclient"
)

// The shared harness: building hearth, running `hearth serve` as a child
// process, reading its resource use from /proc, and dropping the page cache.

// bench is what every scenario gets: the options, the hearth binary and a
// scratch directory on the same disk as the server's data.
type bench struct {
	opts       options
	hearthBin  string
	moduleRoot string
	work       string // everything of this run lives below
	logger     *slog.Logger
	// dropErr is why the page cache cannot be dropped (nil if it can);
	// scenarios then measure with a warm cache and say so.
	dropErr error
}

// scratch returns an empty directory below the run's work directory, so
// that nothing a previous run left in a reused -work directory is measured.
func (b *bench) scratch(name string) (string, error) {
	dir := filepath.Join(b.work, name)
	if err := removeAll(dir); err != nil {
		return "", err
	}
	return dir, os.MkdirAll(dir, 0o755)
}

// removeAll removes dir like os.RemoveAll, first making its directories
// writable: Bazel leaves read-only ones in its output bases.
func removeAll(dir string) error {
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(path, 0o755)
		}
		return nil
	})
	return os.RemoveAll(dir)
}

// coldCache writes dirty pages back and drops the page cache, so that the
// next measurement reads from the disk. If that is impossible here it only
// syncs, and the result carries a note saying the cache was warm.
func (b *bench) coldCache() {
	unix.Sync()
	if b.dropErr == nil {
		b.dropErr = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o644)
		if b.dropErr != nil {
			b.logger.Warn("cannot drop the page cache; reads are measured warm", "err", b.dropErr)
		}
	}
}

// cacheNote says how reads were measured.
func (b *bench) cacheNote() string {
	if b.dropErr != nil {
		return "page cache could not be dropped (" + b.dropErr.Error() + "): reads were warm"
	}
	return "page cache dropped before each transfer"
}

// findModuleRoot returns the directory of the go.mod that the current
// directory belongs to, which must be hearth's.
func findModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module: run hearthbench from the hearth checkout, or pass -hearth")
	}
	return filepath.Dir(gomod), nil
}

// buildHearth builds cmd/hearth (without -race: these are performance
// numbers) into dir and returns the binary's path.
func buildHearth(ctx context.Context, moduleRoot, dir string) (string, error) {
	bin := filepath.Join(dir, "hearth")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/hearth-build/hearth/cmd/hearth")
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/hearth: %w\n%s", err, out)
	}
	return bin, nil
}

// readyTimeout bounds how long `hearth serve` may take to start serving; an
// index rebuild of a million blobs is part of that.
const readyTimeout = 5 * time.Minute

// hearthServer is one running `hearth serve` child process.
type hearthServer struct {
	cmd      *exec.Cmd
	log      *serverLog
	done     chan struct{} // closed once the process has exited
	started  time.Time
	ready    time.Time // when the serving line was seen
	GRPCAddr string
	HTTPAddr string
	DataDir  string
	// scheme and dialOpts are how clients reach it: "grpc" without options
	// unless startHearthWith says otherwise.
	scheme   string
	dialOpts casclient.DialOptions
}

// startHearth starts `hearth serve` on loopback ports with dataDir and waits
// until it answers GetCapabilities. Its log goes to logPath.
func (b *bench) startHearth(ctx context.Context, dataDir, logPath string, extraArgs ...string) (*hearthServer, error) {
	return b.startHearthWith(ctx, dataDir, logPath, "grpc", casclient.DialOptions{}, extraArgs...)
}

// startHearthWith is startHearth for a server that clients reach with
// scheme (grpc or grpcs) and dialOpts (TLS settings, a token).
func (b *bench) startHearthWith(ctx context.Context, dataDir, logPath, scheme string, dialOpts casclient.DialOptions, extraArgs ...string) (*hearthServer, error) {
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", dataDir}, extraArgs...)
	s, err := b.startHearthProcess(logPath, args)
	if err != nil {
		return nil, err
	}
	s.DataDir, s.scheme, s.dialOpts = dataDir, scheme, dialOpts
	if err := s.waitReady(ctx); err != nil {
		s.kill()
		return nil, fmt.Errorf("hearth %s did not become ready: %w (log: %s)", args[0], err, logPath)
	}
	return s, nil
}

// startHearthProcess starts `hearth ARGS...` with its output in logPath,
// without waiting for it to serve (waitReady does that for a server, which
// clients reach with plain grpc unless the caller says otherwise).
func (b *bench) startHearthProcess(logPath string, args []string) (*hearthServer, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.hearthBin, args...)
	if b.opts.profileDir != "" {
		cmd.Env = append(os.Environ(), "HEARTHBENCH_PROFILE_ADDR=127.0.0.1:0")
	}
	log := &serverLog{file: logFile, serving: make(chan string, 1)}
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so that a kill takes its actions with it;
	// Pdeathsig, so that a crashed hearthbench leaves no server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s := &hearthServer{cmd: cmd, log: log, done: make(chan struct{}), started: time.Now(), scheme: "grpc"}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", b.hearthBin, err)
	}
	go func() {
		cmd.Wait()
		logFile.Close()
		close(s.done)
	}()
	return s, nil
}

func (s *hearthServer) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var line string
	select {
	case line = <-s.log.serving:
	case <-s.done:
		return fmt.Errorf("exited with %v before serving", s.cmd.ProcessState)
	case <-ctx.Done():
		return ctx.Err()
	}
	s.ready = time.Now()
	s.GRPCAddr, s.HTTPAddr = logValue(line, "grpc"), logValue(line, "http")
	if s.GRPCAddr == "" {
		return fmt.Errorf("serving line without grpc=: %s", line)
	}
	conn, err := s.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for {
		_, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("GetCapabilities: %w", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PID is the server's process id, for /proc.
func (s *hearthServer) PID() int { return s.cmd.Process.Pid }

// dial opens a client connection to the server.
func (s *hearthServer) dial(ctx context.Context) (*grpc.ClientConn, error) {
	return casclient.DialWith(ctx, s.scheme+"://"+s.GRPCAddr, s.dialOpts)
}

// stop asks the server to shut down and waits; after a grace period it kills
// the whole process group. It reports any ERROR the server logged, since a
// benchmark of a server that failed requests measures nothing.
func (s *hearthServer) stop() error {
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-s.done:
	case <-time.After(40 * time.Second):
		s.kill()
		return errors.New("hearth did not exit within 40s of SIGTERM; killed it")
	}
	if errs := s.log.errorLines(); len(errs) > 0 {
		return fmt.Errorf("hearth logged %d errors, first: %s", len(errs), errs[0])
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("hearth exited with %v", s.cmd.ProcessState)
	}
	return nil
}

// kill ends the server's whole process group, unless it has exited.
func (s *hearthServer) kill() {
	select {
	case <-s.done:
		return
	default:
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

// serverLog copies the server's output to a file, remembers ERROR lines and
// hands the "hearth serving" line to waitReady.
type serverLog struct {
	file    *os.File
	serving chan string

	mu      sync.Mutex
	partial []byte
	errors  []string
	lines   []string // the few lines the harness looks up later
}

func (l *serverLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.file.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		switch {
		case strings.Contains(line, "level=ERROR"):
			l.errors = append(l.errors, line)
		case strings.Contains(line, `msg="hearth serving"`):
			select {
			case l.serving <- line:
			default:
			}
		}
		if strings.Contains(line, `msg="CAS index loaded"`) || strings.HasPrefix(line, profileLine) {
			l.lines = append(l.lines, line)
		}
	}
	return len(p), nil
}

func (l *serverLog) errorLines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errors)
}

// find returns the first remembered line containing substr.
func (l *serverLog) find(substr string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			return line, true
		}
	}
	return "", false
}

// logValue returns the value of key in a log/slog text line ("" if absent).
// Hearth's values of interest (addresses, durations, counts) are unquoted.
func logValue(line, key string) string {
	for _, field := range strings.Fields(line) {
		if k, v, ok := strings.Cut(field, "="); ok && k == key {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// procMemory is a process's resident set from /proc/PID/status.
type procMemory struct {
	RSS  int64 // VmRSS, bytes
	Peak int64 // VmHWM: the highest RSS since the process started, bytes
}

func readProcMemory(pid int) (procMemory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMemory{}, err
	}
	defer f.Close()
	var m procMemory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "VmRSS" && name != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return procMemory{}, fmt.Errorf("/proc/%d/status %s: %w", pid, name, err)
		}
		if name == "VmRSS" {
			m.RSS = kb << 10
		} else {
			m.Peak = kb << 10
		}
	}
	return m, sc.Err()
}

// rssSampler polls a process's VmRSS and keeps the highest value seen.
type rssSampler struct {
	stopc chan struct{}
	done  chan int64
}

func sampleRSS(pid int, every time.Duration) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan int64, 1)}
	go func() {
		var peak int64
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if m, err := readProcMemory(pid); err == nil {
				peak = max(peak, m.RSS)
			}
			select {
			case <-s.stopc:
				s.done <- peak
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// stop ends sampling and returns the peak RSS in bytes.
func (s *rssSampler) stop() int64 {
	close(s.stopc)
	return <-s.done
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// cpuTimes is a process's CPU use from /proc/PID/stat.
type cpuTimes struct {
	Self     time.Duration // utime + stime
	Children time.Duration // cutime + cstime: children that exited and were waited for
}

func (c cpuTimes) sub(o cpuTimes) cpuTimes {
	return cpuTimes{Self: c.Self - o.Self, Children: c.Children - o.Children}
}

func (c cpuTimes) add(o cpuTimes) cpuTimes {
	return cpuTimes{Self: c.Self + o.Self, Children: c.Children + o.Children}
}

func readCPUTimes(pid int) (cpuTimes, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuTimes{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return cpuTimes{}, fmt.Errorf("/proc/%d/stat: no ')' in %q", pid, data)
	}
	fields := strings.Fields(string(data[end+1:]))
	// fields[0] is field 3 (state); utime..cstime are fields 14..17.
	if len(fields) < 15 {
		return cpuTimes{}, fmt.Errorf("/proc/%d/stat: %d fields after the name, want ≥ 15", pid, len(fields))
	}
	var ticks [4]int64
	for i := range ticks {
		ticks[i], err = strconv.ParseInt(fields[11+i], 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("/proc/%d/stat field %d: %w", pid, 14+i, err)
		}
	}
	tick := time.Second / clockTicks
	return cpuTimes{Self: time.Duration(ticks[0]+ticks[1]) * tick, Children: time.Duration(ticks[2]+ticks[3]) * tick}, nil
}

// percentile returns the q-quantile (0 < q ≤ 1) of ds by the nearest-rank
// method; ds must be sorted.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// runQuiet runs a command and returns its error with the tail of its output.
func runQuiet(ctx context.Context, dir string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 20))
	}
	return nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// fsyncPath fsyncs a file or directory.
func fsyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// parallel runs f(ctx, 0..n-1) on n goroutines and returns the first error;
// the first failure cancels the context the others see.
func parallel(ctx context.Context, n int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx, i); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && ctx.Err() != nil {
		return err
	}
	return nil
}

// quietLogger discards what in-process stores log.
func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// measureCPU starts measuring the CPU used by the process pid and by this
// one; the function it returns gives both so far. A pid whose /proc entry
// cannot be read counts as zero.
func measureCPU(pid int) func() (server, self time.Duration) {
	server0, _ := readCPUTimes(pid)
	own0 := ownCPU()
	return func() (time.Duration, time.Duration) {
		server1, _ := readCPUTimes(pid)
		return server1.sub(server0).Self, ownCPU().sub(own0).Self
	}
}

// ownCPU is this process's CPU use and its waited-for children's.
func ownCPU() cpuTimes {
	var self, children syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	return cpuTimes{Self: rusageCPU(self), Children: rusageCPU(children)}
}

func rusageCPU(ru syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
