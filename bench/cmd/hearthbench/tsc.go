package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Scenario tsc: a chain of N TypeScript libraries (each importing the one
// before) compiled by the real tsc_wrapped persistent worker, in three
// modes measured back to back in each round:
//
//   - local: Bazel's own local persistent worker (--strategy=TsCompile=worker);
//   - persistent: remote on `hearth serve`, exec_properties persistentWorkerKey,
//     --noremote_accept_cached;
//   - oneshot: remote on `hearth serve`, no worker key, so every action
//     starts node and tsc afresh.
//
// Every mode has its own Bazel server and output base. An untimed warm-up
// build brings the Bazel server (and, remotely, hearth's CAS) up to date;
// then `bazel clean`, a new version string in every index.ts (so that every
// action and output of the timed build is new), and the timed clean build. Bazel's clean stops its
// local workers, so for the remote modes the hearth process is restarted on
// the same data directory before the timed build: both sides start their
// workers cold, and only the CAS (the tool files, uploaded once) is kept.
// With -tsc-executors 2, one more persistent build runs on `hearth server`
// plus two `hearth worker` processes, for the warm-hit ratio across
// executors.

// tscKey is the persistentWorkerKey the persistent mode sets.
const tscKey = "tsc_wrapped"

// tscBuild is the outcome of one timed build.
type tscBuild struct {
	wall         time.Duration
	criticalPath time.Duration // from Bazel's "Critical Path:" line
	processes    string
	stages       *stageStats // remote builds only
}

func runTsc(ctx context.Context, b *bench) (*result, error) {
	n := b.opts.tscLibs
	for _, tool := range []string{"bazel", "node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (scripts/install-test-deps.sh installs bazel; node and npm: apt-get install nodejs npm): %w", tool, err)
		}
	}
	dir, err := b.scratch("tsc")
	if err != nil {
		return nil, err
	}
	if b.opts.tscProfile != "" {
		// Bazel runs in the workspace, so the path it is given must be absolute.
		if b.opts.tscProfile, err = filepath.Abs(b.opts.tscProfile); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(b.opts.tscProfile, 0o755); err != nil {
			return nil, err
		}
	}
	npmDir, err := installTscWorker(ctx, b.moduleRoot)
	if err != nil {
		return nil, err
	}
	ws, err := writeTscWorkspace(b.moduleRoot, dir, npmDir, n)
	if err != nil {
		return nil, err
	}
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return nil, err
	}
	env := bazelEnv(home)

	var persistentVsLocal, oneshotVsPersistent, cpVsLocal comparison
	var last map[string]tscBuild
	var overheads []float64
	for round := range b.opts.tscRounds {
		b.logger.Info("tsc: round", "round", round+1, "libraries", n)
		builds := map[string]tscBuild{}
		for _, mode := range []string{"local", "persistent", "oneshot"} {
			if !slices.Contains(strings.Split(b.opts.tscModes, ","), mode) {
				continue
			}
			name := fmt.Sprintf("%s%d", mode, round)
			var res tscBuild
			if mode == "local" {
				res, err = tscBuildLocal(ctx, b, dir, ws, env, name)
			} else {
				res, err = tscBuildRemote(ctx, b, dir, ws, env, name, mode == "persistent")
			}
			if err != nil {
				return nil, fmt.Errorf("%s build: %w", mode, err)
			}
			if err := checkTscProcesses(mode, res.processes, n); err != nil {
				return nil, err
			}
			b.logger.Info("tsc: build done", "mode", mode, "wall", res.wall.Round(time.Millisecond), "critical_path", res.criticalPath, "processes", res.processes)
			builds[mode] = res
		}
		local, persistent, oneshot := builds["local"], builds["persistent"], builds["oneshot"]
		if local.wall > 0 && persistent.wall > 0 {
			persistentVsLocal.add(persistent.wall.Seconds(), local.wall.Seconds())
			cpVsLocal.add(persistent.criticalPath.Seconds(), local.criticalPath.Seconds())
		}
		if oneshot.wall > 0 && persistent.wall > 0 {
			oneshotVsPersistent.add(oneshot.wall.Seconds(), persistent.wall.Seconds())
		}
		if persistent.stages != nil {
			overheads = append(overheads, persistent.stages.overheadP50().Seconds())
		}
		last = builds
	}

	r := &result{}
	name := fmt.Sprintf("tsc_wrapped worker, chain of %d libraries", n)
	// With -tsc-modes leaving a mode out, its comparisons are left out too.
	if len(persistentVsLocal.hearth) > 0 {
		rw := persistentVsLocal.row(name, "wall, Hearth persistent vs Bazel local worker", "Bazel local worker", secondsFormat)
		rw.Goal, rw.Met = "≤ 1.1× (floor 1.3×)", metText(persistentVsLocal.ratio() <= 1.1)
		r.add(rw)
	}
	if len(oneshotVsPersistent.hearth) > 0 {
		rw := oneshotVsPersistent.row(name, "wall, Hearth one-shot vs Hearth persistent", "Hearth persistent", secondsFormat)
		rw.Goal, rw.Met = "≥ 4×", metText(oneshotVsPersistent.ratio() >= 4)
		r.add(rw)
	}
	if len(cpVsLocal.hearth) > 0 {
		rw := cpVsLocal.row(name, "Bazel critical path, Hearth persistent vs local worker", "Bazel local worker", secondsFormat)
		rw.Goal, rw.Met = "≤ 1.5×", metText(cpVsLocal.ratio() <= 1.5)
		r.add(rw)
	}
	if len(overheads) > 0 {
		r.add(row{Scenario: name, Measure: "server-side overhead per warm action, p50 (worker start→completed minus execution)",
			Hearth: formatDuration(time.Duration(median(overheads) * float64(time.Second))), Goal: "≤ 5 ms", Met: metText(median(overheads) <= 0.005)})
	}
	for _, mode := range []string{"persistent", "oneshot"} {
		if s := last[mode].stages; s != nil {
			r.add(row{Scenario: name, Measure: "Hearth " + mode + ", per-stage time summed over the run (p50 per action)", Hearth: s.summary()})
		}
	}
	if b.opts.tscExecutors > 1 {
		res, err := tscBuildCluster(ctx, b, dir, ws, env, b.opts.tscExecutors)
		if err != nil {
			return r, fmt.Errorf("cluster build: %w", err)
		}
		s := res.stages
		rw := row{Scenario: name, Measure: fmt.Sprintf("warm hits, persistent build on %d `hearth worker`s", b.opts.tscExecutors),
			Hearth:   fmt.Sprintf("%.1f%% (%d warm, %d cold, %d one-shot; per executor %s)", 100*s.warmFraction(), s.warm, s.cold, s.oneShot, s.perExecutor()),
			Baseline: "wall " + secondsFormat(res.wall.Seconds()) + ", critical path " + secondsFormat(res.criticalPath.Seconds()),
			Goal:     "≥ 95%", Met: metText(s.warmFraction() >= 0.95)}
		r.add(rw)
	}
	if f := strings.Fields(b.opts.tscRemote); len(f) > 0 {
		r.note("the remote builds (not the local one) also had %s", strings.Join(f, " "))
	}
	r.note("Bazel %s, Bazel's default --jobs, %d round(s); last builds: local %q, persistent %q, one-shot %q",
		bazelVersion(ctx, env), b.opts.tscRounds, last["local"].processes, last["persistent"].processes, last["oneshot"].processes)
	r.note("each library: types.ts and index.ts (interfaces, a generic class, 9 functions) importing the previous library; tsc_wrapped from npm @bazel/concatjs 5.8.1 with TypeScript 4.9.5 (scripts/npm-install.sh: npm ci from e2e/testdata/tsc/package-lock.json), proto worker protocol, `node tsc_wrapped.js @@tsconfig` as rules_nodejs's ts_library; node_modules (%s) are tool inputs of every action", npmSummary(npmDir))
	r.note("per mode: own Bazel server and output base, an untimed warm-up build, `bazel clean`, a new version constant in every index.ts (every action and output new), then the timed clean build; remote modes restart hearth serve (--max-inflight=%d) on the warm-up's data directory first, so workers start cold on both sides and only the CAS is warm", b.opts.tscInflight)
	r.note("per-stage breakdown from each action's ExecutedActionMetadata in hearth's action cache (entries written during the timed build): queued→worker start, input fetch, execution (the WorkRequest round trip on a warm worker, the process for one-shot), output upload; overhead = worker start→completed minus execution")
	return r, nil
}

// checkTscProcesses checks that every library compiled where the mode says.
func checkTscProcesses(mode, processes string, n int) error {
	want := map[string]string{"local": "worker", "persistent": "remote", "oneshot": "remote"}[mode]
	m := regexp.MustCompile(`(\d+) ` + want + `\b`).FindStringSubmatch(processes)
	if m == nil || atoi(m[1]) < n {
		return fmt.Errorf("%s build did not run all %d compilations as %q: %q", mode, n, want, processes)
	}
	if strings.Contains(processes, "cache hit") {
		return fmt.Errorf("%s build had cache hits: %q", mode, processes)
	}
	return nil
}

// tscBazel runs Bazel commands on one output base.
type tscBazel struct {
	ctx     context.Context
	ws      string
	env     []string
	startup []string
}

func newTscBazel(ctx context.Context, dir, ws string, env []string, name string) *tscBazel {
	return &tscBazel{ctx: ctx, ws: ws, env: env, startup: []string{
		"--nohome_rc", "--noworkspace_rc",
		"--output_user_root=" + filepath.Join(dir, "user_root"),
		"--output_base=" + filepath.Join(dir, "output_base_"+name),
		"--max_idle_secs=300", "--host_jvm_args=-Xmx1g",
	}}
}

func (z *tscBazel) run(args ...string) (string, error) {
	cmd := exec.CommandContext(z.ctx, "bazel", append(z.startup, args...)...)
	cmd.Dir, cmd.Env = z.ws, z.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("bazel %s: %w\n%s", strings.Join(args, " "), err, tail(out.String(), 30))
	}
	return out.String(), err
}

// build runs `bazel build //...` with flags and returns its outcome.
func (z *tscBazel) build(flags ...string) (tscBuild, string, error) {
	args := append(append([]string{"build"}, bazelBuildFlags...), flags...)
	start := time.Now()
	out, err := z.run(append(args, "//...")...)
	res := tscBuild{wall: time.Since(start)}
	if err != nil {
		return res, out, err
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, " processes: ") || strings.Contains(line, " process: ") {
			res.processes = strings.TrimPrefix(strings.TrimSpace(line), "INFO: ")
		}
		if m := regexp.MustCompile(`Critical Path: ([0-9.]+)s`).FindStringSubmatch(line); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			res.criticalPath = time.Duration(v * float64(time.Second))
		}
		if (strings.HasPrefix(line, "WARNING:") || strings.HasPrefix(line, "ERROR:")) && strings.Contains(strings.ToLower(line), "remote") {
			return res, out, fmt.Errorf("bazel reported a remote problem: %s", line)
		}
	}
	return res, out, nil
}

func tscBuildLocal(ctx context.Context, b *bench, dir, ws string, env []string, name string) (tscBuild, error) {
	if err := setTscMode(ws, ""); err != nil {
		return tscBuild{}, err
	}
	z := newTscBazel(ctx, dir, ws, env, name)
	defer z.run("shutdown")
	flags := []string{"--strategy=TsCompile=worker"}
	if _, _, err := z.build(flags...); err != nil {
		return tscBuild{}, fmt.Errorf("warm-up: %w", err)
	}
	if _, err := z.run("clean"); err != nil {
		return tscBuild{}, err
	}
	if err := setTscSources(ws, b.opts.tscLibs, name); err != nil {
		return tscBuild{}, err
	}
	res, out, err := z.build(append(flags, b.tscProfileFlags(name)...)...)
	os.WriteFile(filepath.Join(dir, name+"-build.log"), []byte(out), 0o644)
	return res, err
}

func tscBuildRemote(ctx context.Context, b *bench, dir, ws string, env []string, name string, persistent bool) (tscBuild, error) {
	key := ""
	if persistent {
		key = tscKey
	}
	if err := setTscMode(ws, key); err != nil {
		return tscBuild{}, err
	}
	dataDir := filepath.Join(dir, "data_"+name)
	serveArgs := []string{"--max-inflight=" + strconv.Itoa(b.opts.tscInflight)}
	srv, err := b.startHearth(ctx, dataDir, filepath.Join(dir, name+"-warmup-hearth.log"), serveArgs...)
	if err != nil {
		return tscBuild{}, err
	}
	defer srv.kill()
	z := newTscBazel(ctx, dir, ws, env, name)
	defer z.run("shutdown")
	flags := func(s *hearthServer) []string {
		return append([]string{"--remote_executor=grpc://" + s.GRPCAddr, "--noremote_accept_cached"}, strings.Fields(b.opts.tscRemote)...)
	}
	if _, _, err := z.build(flags(srv)...); err != nil {
		return tscBuild{}, fmt.Errorf("warm-up: %w", err)
	}
	if err := srv.stop(); err != nil {
		return tscBuild{}, fmt.Errorf("warm-up server: %w", err)
	}
	if _, err := z.run("clean"); err != nil {
		return tscBuild{}, err
	}
	if err := setTscSources(ws, b.opts.tscLibs, name); err != nil {
		return tscBuild{}, err
	}
	if srv, err = b.startHearth(ctx, dataDir, filepath.Join(dir, name+"-hearth.log"), serveArgs...); err != nil {
		return tscBuild{}, err
	}
	defer srv.kill()
	stopProfile := b.profile(srv, "tsc-"+name)
	start := time.Now()
	res, out, err := z.build(append(flags(srv), b.tscProfileFlags(name)...)...)
	stopProfile()
	os.WriteFile(filepath.Join(dir, name+"-build.log"), []byte(out), 0o644)
	if err != nil {
		return res, err
	}
	if err := srv.stop(); err != nil {
		return res, err
	}
	if res.stages, err = readStageStats(filepath.Join(dataDir, "ac"), start); err != nil {
		return res, err
	}
	return res, res.stages.writeActions(filepath.Join(dir, name+"-actions.txt"))
}

// tscProfileFlags asks Bazel for its trace profile of the timed build named
// name, with -tsc-bazel-profile; the untimed warm-ups never write one.
func (b *bench) tscProfileFlags(name string) []string {
	if b.opts.tscProfile == "" {
		return nil
	}
	return []string{"--profile=" + filepath.Join(b.opts.tscProfile, name+".profile.gz")}
}

// npmSummary describes the installed node_modules: files and bytes.
func npmSummary(npmDir string) string {
	files, bytes := 0, int64(0)
	filepath.Walk(filepath.Join(npmDir, "node_modules"), func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			files++
			bytes += info.Size()
		}
		return nil
	})
	return fmt.Sprintf("%d files, %.0f MiB", files, float64(bytes)/(1<<20))
}
