package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// bazelCommandTimeout bounds one Bazel invocation; a clean build of the test
// workspace takes seconds, but the first one also starts the JVM.
const bazelCommandTimeout = 10 * time.Minute

// bazelRunner runs Bazel on a private copy of testdata/bazel/ws with its own
// output base and HOME, so that no user or system cache, bazelrc in HOME, or
// earlier run leaks in. The Bazel server it starts is shut down in Cleanup
// (and idles out by itself should the test binary die).
type bazelRunner struct {
	t          *testing.T
	root       string // everything of this runner lives below
	workspace  string
	outputBase string
	logDir     string
	env        []string
	runs       int
	// targets are what localBaseline and checkRemoteMatchesLocal build and
	// test: //... unless a test adds manual targets.
	targets []string
	// extraStartup are more startup options (see enableTLS).
	extraStartup []string
}

// newBazel returns a runner on a private copy of testdata/bazel/ws.
func newBazel(t *testing.T) *bazelRunner {
	t.Helper()
	return newBazelIn(t, "ws")
}

// newGeneratedBazel returns a runner on a workspace made of files (path
// relative to the workspace root → content), written beside a copy of the
// offline stubs, which its WORKSPACE file must map as ws/WORKSPACE does.
func newGeneratedBazel(t *testing.T, files map[string]string) *bazelRunner {
	t.Helper()
	b := newBazelIn(t, "generated")
	for name, content := range files {
		path := filepath.Join(b.workspace, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// newBazelIn sets up a runner whose workspace is src/wsName below its root,
// with testdata/bazel copied to src.
func newBazelIn(t *testing.T, wsName string) *bazelRunner {
	t.Helper()
	if _, err := exec.LookPath("bazel"); err != nil {
		t.Fatalf("bazel is not installed (scripts/install-test-deps.sh installs Debian's bazel-bootstrap): %v", err)
	}
	root := t.TempDir()
	b := &bazelRunner{
		t:          t,
		root:       root,
		workspace:  filepath.Join(root, "src", wsName),
		outputBase: filepath.Join(root, "output_base"),
		logDir:     filepath.Join(root, "logs"),
		targets:    []string{"//..."},
	}
	home := filepath.Join(root, "home")
	for _, dir := range []string{home, b.logDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The workspace refers to its stubs by relative path, so both are copied.
	if err := os.CopyFS(filepath.Join(root, "src"), os.DirFS("testdata/bazel")); err != nil {
		t.Fatalf("copying the test workspace: %v", err)
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "HOME", "TEST_TMPDIR", "BAZELRC", "USE_BAZEL_VERSION":
			// HOME is replaced below; TEST_TMPDIR would move Bazel's output
			// root; the others select a different rc file or Bazel.
			continue
		}
		b.env = append(b.env, kv)
	}
	b.env = append(b.env, "HOME="+home)
	t.Cleanup(b.cleanup)
	return b
}

// startupOptions go before the command and must be the same on every call,
// or Bazel restarts its server. The system bazelrc is kept: Debian's sets the
// install base its bazel needs.
func (b *bazelRunner) startupOptions() []string {
	return append([]string{
		"--nohome_rc",
		"--noworkspace_rc",
		"--output_user_root=" + filepath.Join(b.root, "user_root"),
		"--output_base=" + b.outputBase,
		"--max_idle_secs=300",
		"--host_jvm_args=-Xmx1g",
	}, b.extraStartup...)
}

// buildFlags are added to every build and test: no convenience symlinks in
// the workspace, no disk cache, plain output, an action environment that
// does not depend on the caller's PATH (it is part of every action's key),
// and ctx.actions.declare_symlink (experimental in Bazel 4) for
// //symlinks:dangling.
var buildFlags = []string{
	"--experimental_allow_unresolved_symlinks",
	"--symlink_prefix=/",
	"--disk_cache=",
	"--color=no",
	"--curses=no",
	"--noshow_progress",
	"--nosandbox_debug",
	"--incompatible_strict_action_env",
	"--verbose_failures",
	"--test_output=errors",
}

// run runs `bazel <command> [buildFlags] args...` and returns its stdout and
// stderr together. The output also goes to a numbered file; on failure the
// test fails with its tail.
func (b *bazelRunner) run(command string, args ...string) string {
	b.t.Helper()
	out, err := b.runErr(command, args...)
	if err != nil {
		b.t.Fatalf("bazel %s %s: %v\n--- last lines of its output ---\n%s", command, strings.Join(args, " "), err, tailLines(out, 60))
	}
	return out
}

func (b *bazelRunner) runErr(command string, args ...string) (string, error) {
	b.t.Helper()
	full := append(b.startupOptions(), command)
	if command == "build" || command == "test" {
		full = append(full, buildFlags...)
	}
	full = append(full, args...)
	ctx, cancel := context.WithTimeout(context.Background(), bazelCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bazel", full...)
	cmd.Dir = b.workspace
	cmd.Env = b.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	b.runs++
	logFile := filepath.Join(b.logDir, fmt.Sprintf("%02d-%s.log", b.runs, command))
	header := fmt.Sprintf("$ bazel %s\n(took %v, %v)\n", strings.Join(full, " "), time.Since(start).Round(time.Millisecond), err)
	if werr := os.WriteFile(logFile, append([]byte(header), out.Bytes()...), 0o644); werr != nil {
		b.t.Errorf("saving bazel output: %v", werr)
	}
	b.t.Logf("bazel %s %s: %v in %v", command, strings.Join(args, " "), errOrOK(err), time.Since(start).Round(time.Millisecond))
	return out.String(), err
}

func errOrOK(err error) any {
	if err == nil {
		return "ok"
	}
	return err
}

// info returns `bazel info key`.
func (b *bazelRunner) info(key string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bazelCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bazel", append(b.startupOptions(), "info", key)...)
	cmd.Dir = b.workspace
	cmd.Env = b.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.t.Fatalf("bazel info %s: %v\n%s", key, err, tailLines(stderr.String(), 30))
	}
	return strings.TrimSpace(string(out))
}

// cleanup stops the Bazel server and makes the output base deletable:
// Bazel leaves read-only directories that would make TempDir's removal fail
// for a non-root user.
func (b *bazelRunner) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bazel", append(b.startupOptions(), "shutdown")...)
	cmd.Dir = b.workspace
	cmd.Env = b.env
	if out, err := cmd.CombinedOutput(); err != nil {
		b.t.Errorf("bazel shutdown: %v\n%s", err, out)
	}
	filepath.WalkDir(b.root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(path, 0o755)
		}
		return nil
	})
	if b.t.Failed() {
		b.t.Logf("bazel logs were in %s (removed with the test's temp dir)", b.logDir)
	}
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// remoteProblems returns Bazel's warnings and errors about the remote cache or
// executor. Bazel treats a failing cache as a warning and goes on building
// locally, which would hide a broken server behind a green build.
func remoteProblems(output string) []string {
	var found []string
	for _, line := range strings.Split(output, "\n") {
		if (strings.HasPrefix(line, "WARNING:") || strings.HasPrefix(line, "ERROR:")) && strings.Contains(strings.ToLower(line), "remote") {
			found = append(found, line)
		}
	}
	return found
}

// spawnRecord is the part of a Bazel execution log entry the tests read.
type spawnRecord struct {
	Mnemonic       string   `json:"mnemonic"`
	Runner         string   `json:"runner"`
	RemoteCacheHit bool     `json:"remoteCacheHit"`
	Remotable      bool     `json:"remotable"`
	Cacheable      bool     `json:"cacheable"`
	Status         string   `json:"status"` // empty on success
	ExitCode       int      `json:"exitCode"`
	CommandArgs    []string `json:"commandArgs"`
	ActualOutputs  []struct {
		Path string `json:"path"`
	} `json:"actualOutputs"`
}

func (s spawnRecord) String() string {
	out := "(no outputs)"
	if len(s.ActualOutputs) > 0 {
		out = s.ActualOutputs[0].Path
	}
	return fmt.Sprintf("%s %s (runner %q, remotable %v, cacheable %v, remote cache hit %v)", s.Mnemonic, out, s.Runner, s.Remotable, s.Cacheable, s.RemoteCacheHit)
}

// readExecutionLog parses --execution_log_json_file: a stream of JSON
// objects, one per spawn.
func readExecutionLog(path string) ([]spawnRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var spawns []spawnRecord
	dec := json.NewDecoder(f)
	for {
		var s spawnRecord
		err := dec.Decode(&s)
		if errors.Is(err, io.EOF) {
			return spawns, nil
		}
		if err != nil {
			return nil, fmt.Errorf("parsing execution log %s after %d spawns: %w", path, len(spawns), err)
		}
		spawns = append(spawns, s)
	}
}
