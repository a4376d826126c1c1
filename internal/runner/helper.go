package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrHelperFailed is wrapped when a helper command ran but did not succeed:
// it exited non-zero, was killed by a signal, or timed out.
var ErrHelperFailed = errors.New("helper command failed")

// DefaultHelperOutput is how many bytes of each stream RunHelper keeps when
// Helper.MaxOutput is 0.
const DefaultHelperOutput = 64 << 10

// helperWaitDelay bounds the wait for pipe EOF after a helper's process group
// is gone: only a descendant that escaped the group (setsid) can hold a pipe
// then, and nothing it prints later matters to the caller.
const helperWaitDelay = 500 * time.Millisecond

// stderrNoteBytes is how much of a failed helper's stderr its error quotes.
const stderrNoteBytes = 500

// Helper is a short command the executor runs for itself rather than for a
// client: a platform property's query_cmd, the precondition script, the
// sandbox probe. It is started like an action (own process group, SIGKILL on
// the executor's death, exactly Env), and anything it leaves running in its
// process group is killed when it exits.
type Helper struct {
	Args []string
	// Env is the complete environment; nil is an empty one, never the
	// executor's.
	Env []string
	// Dir is the absolute working directory.
	Dir string
	// SearchPath, when Env sets no PATH, is searched for a bare Args[0]
	// instead of DefaultPath: the executor passes its own PATH, as
	// NativeLink finds its query_cmd and precondition script on the
	// worker's PATH while giving them an environment without one.
	SearchPath string
	// Timeout is required: a helper that hangs must not hang its caller.
	Timeout time.Duration
	// MaxOutput bounds the bytes kept of each of stdout and stderr
	// (default DefaultHelperOutput). The rest is read and dropped, so the
	// command never blocks on a full pipe.
	MaxOutput int
}

// HelperOutput is how a helper ended and what it printed.
type HelperOutput struct {
	Result
	Stdout, Stderr []byte
	// StdoutTruncated and StderrTruncated report output beyond MaxOutput.
	StdoutTruncated, StderrTruncated bool
}

// RunHelper runs h to completion and captures its output. The error is nil
// only when the command exited 0 within its timeout; it wraps ErrHelperFailed
// (with the end of stderr) when the command failed, timed out or was
// killed, the caller's ctx error when ctx ended, and Run's start errors
// (ErrCommandNotFound...) otherwise. The output is returned in every case.
func RunHelper(ctx context.Context, h Helper) (HelperOutput, error) {
	if h.Timeout <= 0 {
		return HelperOutput{}, fmt.Errorf("%w: helper %q needs a positive timeout, got %v", ErrInvalidRequest, h.Args, h.Timeout)
	}
	limit := h.MaxOutput
	if limit <= 0 {
		limit = DefaultHelperOutput
	}
	stdout, stderr := &cappedBuffer{limit: limit}, &cappedBuffer{limit: limit}
	env := h.Env
	if env == nil {
		env = []string{}
	}
	args := h.Args
	if _, hasPath := lookupEnv(env, "PATH"); !hasPath && h.SearchPath != "" && len(args) > 0 && args[0] != "" && !strings.Contains(args[0], "/") {
		path, err := ResolveExecutable(args[0], []string{"PATH=" + h.SearchPath}, h.Dir)
		if err != nil {
			return HelperOutput{}, err
		}
		args = append([]string{path}, args[1:]...)
	}
	res, err := Run(ctx, Request{
		Args: args, Env: env, Dir: h.Dir, Timeout: h.Timeout, WaitDelay: helperWaitDelay,
		Stdout: stdout, Stderr: stderr,
	})
	out := HelperOutput{
		Result: res, Stdout: stdout.buf, Stderr: stderr.buf,
		StdoutTruncated: stdout.truncated, StderrTruncated: stderr.truncated,
	}
	name := strings.Join(h.Args, " ")
	switch {
	case err != nil:
		return out, err
	case res.TimedOut:
		return out, fmt.Errorf("%w: %q killed after %v%s", ErrHelperFailed, name, h.Timeout, stderrNote(out.Stderr))
	case res.Signal != 0:
		return out, fmt.Errorf("%w: %q killed by signal %v%s", ErrHelperFailed, name, res.Signal, stderrNote(out.Stderr))
	case res.ExitCode != 0:
		return out, fmt.Errorf("%w: %q exited with code %d%s", ErrHelperFailed, name, res.ExitCode, stderrNote(out.Stderr))
	}
	return out, nil
}

// stderrNote quotes the end of a failed helper's (captured) stderr for its
// error.
func stderrNote(stderr []byte) string {
	s := strings.TrimSpace(string(stderr))
	if s == "" {
		return ""
	}
	if len(s) > stderrNoteBytes {
		// The last words usually say why.
		s = "..." + s[len(s)-stderrNoteBytes:]
	}
	return "; stderr: " + s
}

// cappedBuffer keeps the first limit bytes and drops the rest while
// reporting success, so the child is never blocked and the runner never
// sees a write error.
type cappedBuffer struct {
	limit     int
	buf       []byte
	truncated bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.limit - len(b.buf)
	if len(p) > room {
		b.truncated = true
		b.buf = append(b.buf, p[:max(room, 0)]...)
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}
