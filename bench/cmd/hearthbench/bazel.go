package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Scenario bazel: a clean build of a generated workspace of small genrules,
// once with local execution and once with --remote_executor pointing at a
// fresh `hearth serve` (empty data directory, so nothing is a cache hit).
// Each build has its own output base, and its Bazel server is started
// (untimed) before the timed `bazel build`, so the two builds pay the same
// loading and analysis and neither pays the JVM start.
//
// The workspace builds offline with Bazel 4.2.3 thanks to the stub
// repositories of e2e/testdata/bazel/stubs (see the README there).

// bazelBuildFlags match the e2e tests': no convenience symlinks, no disk
// cache, plain output, and an action environment independent of PATH.
var bazelBuildFlags = []string{
	"--symlink_prefix=/",
	"--disk_cache=",
	"--color=no",
	"--curses=no",
	"--noshow_progress",
	"--nosandbox_debug",
	"--incompatible_strict_action_env",
	"--verbose_failures",
}

// bazelBuild is the outcome of one timed build.
type bazelBuild struct {
	wall      time.Duration
	bazelCPU  cpuTimes // the Bazel server's own CPU, and its local actions'
	hearthCPU cpuTimes // zero for the local build
	processes string   // Bazel's "N processes: ..." summary
}

func runBazel(ctx context.Context, b *bench) (*result, error) {
	n := b.opts.genrules
	if _, err := exec.LookPath("bazel"); err != nil {
		return nil, fmt.Errorf("bazel is not installed (scripts/install-test-deps.sh installs it): %w", err)
	}
	dir, err := b.scratch("bazel")
	if err != nil {
		return nil, err
	}
	ws, err := writeGenruleWorkspace(b.moduleRoot, dir, n)
	if err != nil {
		return nil, err
	}
	env := bazelEnv(filepath.Join(dir, "home"))
	if err := os.MkdirAll(filepath.Join(dir, "home"), 0o755); err != nil {
		return nil, err
	}

	var wall, actionCPU, totalCPU comparison
	var hearthSelf, bazelSelfRemote, bazelSelfLocal []float64
	var local, remote bazelBuild
	for round := range b.opts.bazelRounds {
		b.logger.Info("bazel: round", "round", round+1, "genrules", n)
		if local, remote, err = bazelRound(ctx, b, dir, ws, env, round); err != nil {
			return nil, err
		}
		wall.add(remote.wall.Seconds(), local.wall.Seconds())
		actionCPU.add(remote.hearthCPU.Children.Seconds(), local.bazelCPU.Children.Seconds())
		remoteTotal := remote.hearthCPU.Self + remote.hearthCPU.Children + remote.bazelCPU.Self + remote.bazelCPU.Children
		totalCPU.add(remoteTotal.Seconds(), (local.bazelCPU.Self + local.bazelCPU.Children).Seconds())
		hearthSelf = append(hearthSelf, remote.hearthCPU.Self.Seconds())
		bazelSelfRemote = append(bazelSelfRemote, remote.bazelCPU.Self.Seconds())
		bazelSelfLocal = append(bazelSelfLocal, local.bazelCPU.Self.Seconds())
	}

	r := &result{}
	name := fmt.Sprintf("Bazel clean build, %d genrules", n)
	r.add(wall.row(name, "wall time of bazel build (remote vs local)", "local build", secondsFormat))
	r.add(actionCPU.row(name, "CPU of the actions (hearth's children vs Bazel's)", "local", secondsFormat))
	r.add(row{Scenario: name, Measure: "hearth serve CPU (self, incl. embedded executor)", Hearth: secondsFormat(median(hearthSelf)),
		Baseline: fmt.Sprintf("Bazel server, remote build: %s; local build: %s", secondsFormat(median(bazelSelfRemote)), secondsFormat(median(bazelSelfLocal)))})
	r.add(totalCPU.row(name, "total CPU (Bazel + hearth + actions)", "local", secondsFormat))
	jobs := "Bazel's default --jobs"
	if b.opts.bazelJobs > 0 {
		jobs = fmt.Sprintf("--jobs=%d", b.opts.bazelJobs)
	}
	r.note("Bazel %s, %s, %d round(s); last local build: %q; last remote build (--remote_executor, fresh data dir): %q",
		bazelVersion(ctx, env), jobs, b.opts.bazelRounds, local.processes, remote.processes)
	r.note("each genrule cats its own one-line source file and appends a line; wall time is the `bazel build //...` command after its Bazel server was started untimed, on its own new output base")
	r.note("CPU from /proc/PID/stat: children are the processes that exited and were waited for (the actions: hearth's embedded executor runs them as its children, a local build as the Bazel server's)")
	return r, nil
}

// bazelRound builds the workspace locally, then remotely on a new server.
func bazelRound(ctx context.Context, b *bench, dir, ws string, env []string, round int) (local, remote bazelBuild, err error) {
	n := b.opts.genrules
	local, err = timedBazelBuild(ctx, b, dir, ws, env, fmt.Sprintf("local%d", round), nil)
	if err != nil {
		return local, remote, err
	}
	if !strings.Contains(local.processes, "sandbox") && !strings.Contains(local.processes, "local") {
		return local, remote, fmt.Errorf("local build ran no local processes: %q", local.processes)
	}
	srv, err := b.startHearth(ctx, filepath.Join(dir, fmt.Sprintf("data%d", round)), filepath.Join(dir, fmt.Sprintf("hearth%d.log", round)))
	if err != nil {
		return local, remote, err
	}
	defer srv.kill()
	remote, err = timedBazelBuild(ctx, b, dir, ws, env, fmt.Sprintf("remote%d", round), srv, "--remote_executor=grpc://"+srv.GRPCAddr)
	if err != nil {
		return local, remote, err
	}
	if err := srv.stop(); err != nil {
		return local, remote, err
	}
	if m := regexp.MustCompile(`(\d+) remote\b`).FindStringSubmatch(remote.processes); m == nil || atoi(m[1]) < n {
		return local, remote, fmt.Errorf("remote build did not run all %d genrules remotely: %q", n, remote.processes)
	}
	if strings.Contains(remote.processes, "cache hit") {
		return local, remote, fmt.Errorf("remote build had cache hits on a fresh server: %q", remote.processes)
	}
	return local, remote, nil
}

// writeGenruleWorkspace writes a workspace of n genrules, each with its own
// source file, beside a copy of the offline stub repositories. It returns
// the workspace directory.
func writeGenruleWorkspace(moduleRoot, dir string, n int) (string, error) {
	src := filepath.Join(dir, "src")
	ws := filepath.Join(src, "ws")
	if err := os.RemoveAll(src); err != nil {
		return "", err
	}
	if err := os.CopyFS(filepath.Join(src, "stubs"), os.DirFS(filepath.Join(moduleRoot, "e2e", "testdata", "bazel", "stubs"))); err != nil {
		return "", fmt.Errorf("copying the Bazel stub repositories: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(ws, "in"), 0o755); err != nil {
		return "", err
	}
	var workspace strings.Builder
	workspace.WriteString("workspace(name = \"hearthbench\")\n")
	for _, repo := range []string{"rules_cc", "rules_java", "remote_coverage_tools"} {
		fmt.Fprintf(&workspace, "\nlocal_repository(\n    name = %q,\n    path = \"../stubs/%s\",\n)\n", repo, repo)
	}
	var build strings.Builder
	for i := range n {
		fmt.Fprintf(&build, "genrule(\n    name = \"g%d\",\n    srcs = [\"in/%d.txt\"],\n    outs = [\"out/%d.txt\"],\n    cmd = \"cat $< > $@ && echo genrule %d >> $@\",\n)\n\n", i, i, i, i)
		if err := os.WriteFile(filepath.Join(ws, "in", fmt.Sprintf("%d.txt", i)), fmt.Appendf(nil, "input %d\n", i), 0o644); err != nil {
			return "", err
		}
	}
	for name, content := range map[string]string{"WORKSPACE": workspace.String(), "BUILD": build.String()} {
		if err := os.WriteFile(filepath.Join(ws, name), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	return ws, nil
}

// bazelEnv is this process's environment without what would redirect Bazel
// (its output root, rc files, version), with HOME set to home.
func bazelEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "HOME", "TEST_TMPDIR", "BAZELRC", "USE_BAZEL_VERSION":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

// timedBazelBuild starts a Bazel server on its own output base (untimed),
// then times `bazel build //...` and the CPU Bazel and hearth (srv, may be
// nil) used during it. The Bazel server is shut down afterwards.
func timedBazelBuild(ctx context.Context, b *bench, dir, ws string, env []string, name string, srv *hearthServer, flags ...string) (bazelBuild, error) {
	startup := []string{
		"--nohome_rc", "--noworkspace_rc",
		"--output_user_root=" + filepath.Join(dir, "user_root"),
		"--output_base=" + filepath.Join(dir, "output_base_"+name),
		"--max_idle_secs=300", "--host_jvm_args=-Xmx1g",
	}
	bazel := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "bazel", append(startup, args...)...)
		cmd.Dir, cmd.Env = ws, env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if err != nil {
			err = fmt.Errorf("bazel %s: %w\n%s", strings.Join(args, " "), err, tail(out.String(), 30))
		}
		return out.String(), err
	}
	defer bazel("shutdown")

	out, err := bazel("info", "server_pid")
	if err != nil {
		return bazelBuild{}, err
	}
	bazelPID := atoi(strings.TrimSpace(tail(out, 1)))
	if bazelPID <= 0 {
		return bazelBuild{}, fmt.Errorf("bazel info server_pid printed %q", out)
	}
	args := append([]string{"build"}, bazelBuildFlags...)
	if b.opts.bazelJobs > 0 {
		args = append(args, "--jobs="+strconv.Itoa(b.opts.bazelJobs))
	}
	args = append(append(args, flags...), "//...")

	var res bazelBuild
	bazel0, err := readCPUTimes(bazelPID)
	if err != nil {
		return res, err
	}
	var hearth0 cpuTimes
	if srv != nil {
		if hearth0, err = readCPUTimes(srv.PID()); err != nil {
			return res, err
		}
	}
	stopProfile := func() {}
	if srv != nil {
		stopProfile = b.profile(srv, "bazel-"+name)
	}
	start := time.Now()
	out, err = bazel(args...)
	res.wall = time.Since(start)
	stopProfile()
	if err != nil {
		return res, err
	}
	os.WriteFile(filepath.Join(dir, name+"-build.log"), []byte(out), 0o644)
	bazel1, err := readCPUTimes(bazelPID)
	if err != nil {
		return res, err
	}
	res.bazelCPU = bazel1.sub(bazel0)
	if srv != nil {
		hearth1, err := readCPUTimes(srv.PID())
		if err != nil {
			return res, err
		}
		res.hearthCPU = hearth1.sub(hearth0)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, " processes: ") || strings.Contains(line, " process: ") {
			res.processes = strings.TrimPrefix(strings.TrimSpace(line), "INFO: ")
		}
		if (strings.HasPrefix(line, "WARNING:") || strings.HasPrefix(line, "ERROR:")) && strings.Contains(strings.ToLower(line), "remote") {
			return res, fmt.Errorf("%s build: Bazel reported a remote problem: %s", name, line)
		}
	}
	return res, nil
}

// bazelVersion returns Bazel's release, e.g. "4.2.3". Debian's build
// calls itself "no_version", so the package's version is asked then.
func bazelVersion(ctx context.Context, env []string) string {
	cmd := exec.CommandContext(ctx, "bazel", "--version")
	cmd.Env = env
	out, err := cmd.Output()
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "bazel ")
	if err == nil && v != "no_version" {
		return v
	}
	if out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f", "${Version}", "bazel-bootstrap").Output(); err == nil {
		return strings.TrimSpace(string(out)) + " (Debian bazel-bootstrap)"
	}
	return "(unknown version)"
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}
