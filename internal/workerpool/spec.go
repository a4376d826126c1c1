package workerpool

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// Spec describes the worker processes of one pool key.
type Spec struct {
	// Key identifies the pool. The caller computes it (a hash of the
	// instance, the startup args, the environment, the protocol and the tool
	// digests); workers are shared only within a key, so a tool that changes
	// gets a new key and can never be served by a stale process.
	Key string
	// Family, when set, names what stays the same when the tool changes
	// (e.g. the instance and the client's persistentWorkerKey without the
	// tool digests). Starting to use a key stops the idle workers of other
	// keys in its family, whose tool is presumably outdated (reason
	// tool_change), instead of leaving them until the idle timeout.
	Family string
	// Argv is the startup command line; the pool appends
	// "--persistent_worker". Argv[0] is resolved like a Command's
	// arguments[0], relative to the workspace and with Env's PATH.
	Argv []string
	// Env is the complete environment ("NAME=value"); nothing is inherited.
	Env []string
	// Protocol is the encoding on stdin and stdout.
	Protocol workerproto.Protocol
	// Multiplex: the worker accepts several requests, with request_id ≠ 0.
	Multiplex bool
	// Sandboxing: a multiplex worker that honours WorkRequest.sandbox_dir.
	// Only such workers get several requests at once (see the package
	// comment).
	Sandboxing bool
	// Cancellable: the worker answers WorkRequest{cancel: true}
	// (supports-worker-cancellation).
	Cancellable bool
	// MemoryLimit, when non-zero, lowers the resident memory allowed to one
	// worker's process tree below Options.MemoryLimitBytes; it never raises
	// it.
	MemoryLimit uint64
	// WorkDir, when set, is the processes' working directory instead of
	// their own workspaces: the client's requests name files relative to
	// it (Buck2's local workers run in the project root), and the client,
	// not the pool, keeps concurrent requests' files apart, as Bazel's
	// local multiplex workers share the execroot. So a multiplex process
	// takes several requests at once without sandbox_dir, and Lease.Dir is
	// WorkDir. Not with the bwrap sandbox, which hides it.
	WorkDir string
	// Tools are the files a new worker's workspace needs before it starts
	// (the tool inputs of the action), which Options.Prepare puts there. The
	// pool keeps the latest Spec of each key to prewarm workers, so they
	// must be complete without any action at hand.
	Tools []Tool
}

// Tool is one file of a worker's workspace, kept there for the worker's life.
type Tool struct {
	// Path is relative to the workspace, slash-separated and clean.
	Path       string
	Digest     digest.Digest
	Executable bool
}

func (s *Spec) validate() error {
	if s == nil {
		return fmt.Errorf("%w: nil spec", ErrInvalidSpec)
	}
	if s.Key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidSpec)
	}
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return fmt.Errorf("%w: key %s: empty startup command", ErrInvalidSpec, s.Key)
	}
	for i, a := range s.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: key %s: startup argument %d %q contains a NUL byte", ErrInvalidSpec, s.Key, i, a)
		}
	}
	seen := make(map[string]bool, len(s.Env))
	for _, kv := range s.Env {
		name, _, ok := strings.Cut(kv, "=")
		switch {
		case strings.IndexByte(kv, 0) >= 0:
			return fmt.Errorf("%w: key %s: environment entry %q contains a NUL byte", ErrInvalidSpec, s.Key, kv)
		case !ok || name == "":
			return fmt.Errorf("%w: key %s: environment entry %q is not NAME=value", ErrInvalidSpec, s.Key, kv)
		case seen[name]:
			return fmt.Errorf("%w: key %s: environment variable %q set twice", ErrInvalidSpec, s.Key, name)
		}
		seen[name] = true
	}
	if s.Protocol != workerproto.Proto && s.Protocol != workerproto.JSON {
		return fmt.Errorf("%w: key %s: unknown protocol %v", ErrInvalidSpec, s.Key, s.Protocol)
	}
	for _, t := range s.Tools {
		if t.Path == "" || path.IsAbs(t.Path) || path.Clean(t.Path) != t.Path || t.Path == ".." || strings.HasPrefix(t.Path, "../") {
			return fmt.Errorf("%w: key %s: tool path %q is not a clean relative path", ErrInvalidSpec, s.Key, t.Path)
		}
	}
	if s.WorkDir != "" && (!filepath.IsAbs(s.WorkDir) || s.Sandboxing) {
		return fmt.Errorf("%w: key %s: work dir %q must be absolute and excludes sandboxing", ErrInvalidSpec, s.Key, s.WorkDir)
	}
	if s.Sandboxing && !s.Multiplex {
		return fmt.Errorf("%w: key %s: sandboxing is only defined for multiplex workers", ErrInvalidSpec, s.Key)
	}
	return nil
}

// sameProcess reports whether workers started from s and t are
// interchangeable. A key must always come with the same process; anything
// else is a bug in the caller's key computation, which the pool refuses
// rather than serve a request with the wrong tool.
func (s *Spec) sameProcess(t *Spec) bool {
	return slices.Equal(s.Argv, t.Argv) && slices.Equal(s.Env, t.Env) && s.Protocol == t.Protocol &&
		s.Multiplex == t.Multiplex && s.Sandboxing == t.Sandboxing && s.Cancellable == t.Cancellable &&
		s.WorkDir == t.WorkDir
}

// maxInFlight is how many requests one process of s may carry at once.
func (s *Spec) maxInFlight(multiplexLimit int) int {
	if s.Multiplex && (s.Sandboxing || s.WorkDir != "") {
		return multiplexLimit
	}
	return 1
}

// clone copies s so that the caller may reuse its slices.
func (s *Spec) clone() *Spec {
	c := *s
	c.Argv = slices.Clone(s.Argv)
	c.Env = append(make([]string, 0, len(s.Env)), s.Env...)
	c.Tools = slices.Clone(s.Tools)
	return &c
}
