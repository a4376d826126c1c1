// Package sandbox owns the bubblewrap confinement Hearth offers for
// persistent workers and one-shot actions alike: the host file system
// read-only, a private /tmp, no network, no shared IPC, an own PID namespace
// (so that everything inside dies with the sandbox), and only the process's
// own directory writable, with its siblings hidden.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hearth-build/hearth/internal/runner"
)

// ErrUnavailable is wrapped when bubblewrap is missing or does not work here.
var ErrUnavailable = errors.New("bubblewrap sandbox unavailable")

// Kind is how a process is isolated.
type Kind int

// The kinds of isolation.
const (
	// None runs the process directly in its directory.
	None Kind = iota
	// Bwrap runs it under bubblewrap, as the package comment describes.
	Bwrap
)

func (k Kind) String() string {
	switch k {
	case None:
		return "none"
	case Bwrap:
		return "bwrap"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// bwrapProbeTimeout bounds the check that bubblewrap works here.
const bwrapProbeTimeout = 10 * time.Second

// Args returns the command line that runs exe with args under bubblewrap,
// confined as the package comment describes. hidden is hidden behind an
// empty tmpfs (the directory holding every worker's workspace, or every
// action's directory) so that the process sees none of its siblings;
// workspace, inside it, is then bound back, writable, at the same path, and
// is the working directory. Order matters: later mounts go on top of earlier
// ones.
func Args(bwrap, hidden, workspace, exe string, args []string) []string {
	return ArgsIn(bwrap, hidden, workspace, workspace, exe, args)
}

// ArgsIn is Args with a working directory other than the writable one (an
// action's working_directory inside its input root).
func ArgsIn(bwrap, hidden, workspace, chdir, exe string, args []string) []string {
	argv := []string{
		bwrap,
		"--ro-bind", "/", "/",
		"--dev", "/dev",
		"--proc", "/proc",
		"--tmpfs", "/tmp",
		"--tmpfs", hidden,
		"--bind", workspace, workspace,
		"--chdir", chdir,
		"--unshare-net",
		"--unshare-ipc",
		// Its own PID namespace: when bwrap dies, the kernel kills every
		// process inside, including any that left the process group. The
		// executor still sees host PIDs in /proc for memory accounting.
		"--unshare-pid",
		"--die-with-parent",
		"--",
		exe,
	}
	return append(argv, args...)
}

// Find returns the bubblewrap binary to use: path when set, else bwrap from
// the executor's PATH.
func Find(path string) (string, error) {
	if path == "" {
		path = "bwrap"
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	// Found as the runner finds a program, on the executor's own PATH.
	found, err := runner.ResolveExecutable(path, []string{"PATH=" + os.Getenv("PATH")}, cwd)
	if err != nil {
		return "", fmt.Errorf("%w: %v (install bubblewrap, e.g. apt-get install bubblewrap, or set sandbox: none)",
			ErrUnavailable, err)
	}
	return found, nil
}

// Probe runs a trivial command under exactly the confinement processes get,
// so that a host without user namespaces or mount permissions fails at
// start-up with bwrap's own explanation instead of every action failing.
// hidden must exist; a scratch directory is made inside it.
func Probe(ctx context.Context, bwrap, hidden string) error {
	ws, err := os.MkdirTemp(hidden, "bwrap-probe-")
	if err != nil {
		return fmt.Errorf("sandbox: checking bubblewrap: %w", err)
	}
	defer os.RemoveAll(ws)
	// bwrap itself is a program that surely exists inside the sandbox.
	argv := Args(bwrap, hidden, ws, bwrap, []string{"--version"})
	dir, err := filepath.Abs(ws)
	if err != nil {
		return fmt.Errorf("sandbox: checking bubblewrap: %w", err)
	}
	// RunHelper's error quotes bwrap's stderr, where it explains itself.
	if _, err := runner.RunHelper(ctx, runner.Helper{Args: argv, Dir: dir, Timeout: bwrapProbeTimeout}); err != nil {
		return fmt.Errorf("%w: %s %s: %v", ErrUnavailable, bwrap, strings.Join(argv[1:len(argv)-2], " "), err)
	}
	return nil
}
