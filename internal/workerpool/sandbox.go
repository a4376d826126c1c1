package workerpool

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// bwrapProbeTimeout bounds the check at New that bubblewrap works here.
const bwrapProbeTimeout = 10 * time.Second

// bwrapArgs returns the command line that runs exe with args under bubblewrap,
// confined as the package comment describes. poolDir is hidden behind an
// empty tmpfs so that a worker sees neither the other workers' workspaces nor
// the logs; its own workspace is then bound back, writable, at the same path.
// Order matters: later mounts go on top of earlier ones.
func bwrapArgs(bwrap, poolDir, workspace, exe string, args []string) []string {
	argv := []string{
		bwrap,
		"--ro-bind", "/", "/",
		"--dev", "/dev",
		"--proc", "/proc",
		"--tmpfs", "/tmp",
		"--tmpfs", poolDir,
		"--bind", workspace, workspace,
		"--chdir", workspace,
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

// findBwrap returns the bubblewrap binary to use: path when set, else bwrap
// from the executor's PATH.
func findBwrap(path string) (string, error) {
	if path == "" {
		path = "bwrap"
	}
	found, err := exec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v (install bubblewrap, e.g. apt-get install bubblewrap, or set sandbox: none)",
			ErrSandboxUnavailable, err)
	}
	return filepath.Abs(found)
}

// probeBwrap runs a trivial command under exactly the confinement workers
// get, so that a host without user namespaces or mount permissions fails at
// start-up with bwrap's own explanation instead of every worker dying.
func probeBwrap(ctx context.Context, bwrap, poolDir string) error {
	ws, err := os.MkdirTemp(poolDir, "bwrap-probe-")
	if err != nil {
		return fmt.Errorf("workerpool: checking bubblewrap: %w", err)
	}
	defer os.RemoveAll(ws)
	ctx, cancel := context.WithTimeout(ctx, bwrapProbeTimeout)
	defer cancel()
	// bwrap itself is a program that surely exists inside the sandbox.
	argv := bwrapArgs(bwrap, poolDir, ws, bwrap, []string{"--version"})
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = []string{}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no answer within %v", bwrapProbeTimeout)
		}
		return fmt.Errorf("%w: %s %s: %v: %s", ErrSandboxUnavailable, bwrap,
			strings.Join(argv[1:len(argv)-2], " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
