package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// QueryCmdTimeout bounds one query_cmd run. NativeLink waits forever; a
// worker that hangs at start on a stuck probe is worse than one that fails
// with a message naming the probe.
const QueryCmdTimeout = 30 * time.Second

// maxQueryOutput bounds what a query_cmd may print: property values are
// short, and a runaway command must not fill the worker's memory.
const maxQueryOutput = 1 << 20

// ErrQueryCmd is wrapped by the errors of a failed query_cmd.
var ErrQueryCmd = errors.New("platform property query_cmd failed")

// ResolvePlatformProperties returns the values of every platform property,
// running the query_cmd ones concurrently. As in NativeLink, a query_cmd runs
// without a shell (write "sh -c '...'" for one), with stdin empty and an
// environment holding only the static additional_environment entries (value
// and from_environment); each output line, trimmed, is a value. Unlike
// NativeLink, blank lines are skipped, a property with no values is left out
// of the result (so the worker does not advertise it), and each command must
// finish within QueryCmdTimeout.
func (w *LocalWorker) ResolvePlatformProperties(ctx context.Context) (map[string][]string, error) {
	env := []string{} // non-nil: an empty environment, not the worker's
	static := w.StaticEnvironment(os.LookupEnv)
	for _, name := range sortedKeys(static) {
		env = append(env, name+"="+static[name])
	}
	names := sortedKeys(w.PlatformProperties)
	values := make([][]string, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		p := w.PlatformProperties[name]
		if len(p.QueryCmd) == 0 {
			values[i] = slices.Clone(p.Values)
			continue
		}
		wg.Go(func() {
			values[i], errs[i] = runQueryCmd(ctx, fieldPath("platform_properties", name), p.QueryCmd, env)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make(map[string][]string, len(names))
	for i, name := range names {
		if len(values[i]) > 0 {
			out[name] = values[i]
		}
	}
	return out, nil
}

// queryCmdTimeout is QueryCmdTimeout; tests shorten it.
var queryCmdTimeout = QueryCmdTimeout

func runQueryCmd(parent context.Context, path string, argv, env []string) ([]string, error) {
	ctx, cancel := context.WithTimeout(parent, queryCmdTimeout)
	defer cancel()
	var stdout, stderr cappedBuffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// Its own process group, so a timeout kills whatever the command
	// started too, and WaitDelay so a leftover grandchild holding stdout
	// cannot keep us waiting.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) && cmd.Process != nil {
		// It exited but left processes in its group holding stdout open;
		// the group id stays reserved while they live, so this is safe.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	what := fmt.Sprintf("%s: query_cmd %q", path, strings.Join(argv, " "))
	switch {
	case parent.Err() != nil:
		return nil, fmt.Errorf("%s: %w: %w", what, ErrQueryCmd, parent.Err())
	case ctx.Err() != nil:
		return nil, fmt.Errorf("%s: %w: killed after %v", what, ErrQueryCmd, queryCmdTimeout)
	case err != nil:
		return nil, fmt.Errorf("%s: %w: %w%s", what, ErrQueryCmd, err, stderrNote(stderr.String()))
	case stdout.overflow:
		return nil, fmt.Errorf("%s: %w: printed more than %d bytes", what, ErrQueryCmd, maxQueryOutput)
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		slog.WarnContext(ctx, "query_cmd wrote to stderr", "property", path, "cmd", argv, "stderr", s)
	}
	var values []string
	for _, line := range strings.Split(stdout.String(), "\n") {
		if v := strings.TrimSpace(line); v != "" {
			values = append(values, v)
		}
	}
	return values, nil
}

func stderrNote(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	const keep = 500
	if len(s) > keep {
		s = "..." + s[len(s)-keep:]
	}
	return "; stderr: " + s
}

// cappedBuffer keeps the first maxQueryOutput bytes and drops the rest
// while reporting success, so the child is never blocked on a full pipe.
type cappedBuffer struct {
	buf      bytes.Buffer
	overflow bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := maxQueryOutput - b.buf.Len()
	if len(p) > room {
		b.overflow = true
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *cappedBuffer) String() string { return b.buf.String() }
