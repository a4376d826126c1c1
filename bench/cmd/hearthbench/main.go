// Command hearthbench measures the real hearth binary against plain baselines
// measured in the same run: it builds cmd/hearth, starts `hearth serve` on
// loopback with its data in a scratch directory on the same disk as the
// baselines' files, runs the chosen scenarios and prints one markdown table.
//
// The machines it runs on are shared and noisy, so every number comes with
// the ratio to a baseline taken minutes apart in the same process (cp, a
// plain Go loop, fork+exec, a local Bazel build): compare ratios across runs,
// not absolute numbers.
//
// Usage (from the hearth checkout):
//
//	go run ./bench/cmd/hearthbench                  # every scenario, default sizes
//	go run ./bench/cmd/hearthbench -run bytestream,execute -size 256MiB
//
// Scenarios: bytestream, findmissing, batchupdate, restart, execute, bazel,
// access, buck2worker, tsc (a chain of TypeScript libraries on the real tsc_wrapped persistent
// worker: Bazel's local worker vs Hearth persistent vs Hearth one-shot).
// There are no tests here: benchmarks are not timed unit tests.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags; each scenario reads its own.
type options struct {
	run        string
	work       string
	keep       bool
	hearthBin  string
	out        string
	rounds     int
	profileDir string

	size byteSize // bytestream

	fmStored   int // findmissing
	fmDigests  int
	fmClients  int
	fmDuration time.Duration

	batchBlobs    int // batchupdate
	batchBlobSize byteSize
	batchClients  int

	restartBlobs   int // restart
	restartWriters int

	execLatency     int // execute
	execThroughput  int
	execConcurrency int

	genrules    int // bazel
	bazelJobs   int
	bazelRounds int

	accessSize byteSize // access

	buck2Requests int // buck2worker
	buck2Small    int
	buck2Rounds   int

	tscLibs      int // tsc
	tscRounds    int
	tscInflight  int
	tscExecutors int
	tscModes     string
	tscRemote    string // extra Bazel flags of the remote builds
	tscProfile   string // directory for Bazel's --profile of each timed build
}

// scenario is one measurement; run returns its rows and notes.
type scenario struct {
	name string
	run  func(ctx context.Context, b *bench) (*result, error)
}

var scenarios = []scenario{
	{"bytestream", runByteStream},
	{"findmissing", runFindMissing},
	{"batchupdate", runBatchUpdate},
	{"restart", runRestart},
	{"execute", runExecute},
	{"bazel", runBazel},
	{"access", runAccess},
	{"redissched", runRedisSched},
	{"buck2worker", runBuck2Worker},
	{"tsc", runTsc},
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "hearthbench:", err)
		os.Exit(1)
	}
}

func parseOptions(args []string) (options, error) {
	o := options{size: 1 << 30, batchBlobSize: 4 << 10, accessSize: 512 << 20}
	fs := flag.NewFlagSet("hearthbench", flag.ContinueOnError)
	names := make([]string, len(scenarios))
	for i, s := range scenarios {
		names[i] = s.name
	}
	fs.StringVar(&o.run, "run", "all", "comma-separated scenarios to run, or all: "+strings.Join(names, ","))
	fs.StringVar(&o.work, "work", "", "scratch directory, on the disk to measure (default: a new directory under $TMPDIR, removed afterwards)")
	fs.BoolVar(&o.keep, "keep", false, "keep the scratch directory (server logs, Bazel output) after the run")
	fs.StringVar(&o.hearthBin, "hearth", "", "hearth binary to measure (default: go build ./cmd/hearth)")
	fs.StringVar(&o.out, "out", "", "also write the markdown report to this file")
	fs.StringVar(&o.profileDir, "profile", "", "write CPU profiles of the server's measured phases to this directory (builds hearth with a profiling hook added by go build -overlay)")
	fs.IntVar(&o.rounds, "rounds", 3, "times each scenario measures hearth and its baseline back to back (medians are reported)")
	fs.Var(&o.size, "size", "bytestream: blob size (e.g. 1GiB, 256MiB)")
	fs.IntVar(&o.fmStored, "findmissing-stored", 10_000, "findmissing: blobs in the store")
	fs.IntVar(&o.fmDigests, "findmissing-digests", 10_000, "findmissing: digests per request, half present and half missing")
	fs.IntVar(&o.fmClients, "findmissing-clients", 4, "findmissing: concurrent clients, one connection each")
	fs.DurationVar(&o.fmDuration, "findmissing-duration", 3*time.Second, "findmissing: how long each side is measured")
	fs.IntVar(&o.batchBlobs, "batch-blobs", 10_000, "batchupdate: blobs to upload")
	fs.Var(&o.batchBlobSize, "batch-blob-size", "batchupdate: size of each blob")
	fs.IntVar(&o.batchClients, "batch-clients", 1, "batchupdate: concurrent BatchUpdateBlobs calls")
	fs.IntVar(&o.restartBlobs, "restart-blobs", 1_000_000, "restart: blobs in the store whose index is rebuilt")
	fs.IntVar(&o.restartWriters, "restart-writers", 64, "restart: goroutines creating the blobs (setup only)")
	fs.IntVar(&o.execLatency, "exec-latency-actions", 500, "execute: actions run one at a time for latency")
	fs.IntVar(&o.execThroughput, "exec-throughput-actions", 2000, "execute: actions run concurrently for throughput")
	fs.IntVar(&o.execConcurrency, "exec-concurrency", 8, "execute: concurrent clients in the throughput phase, and the server's --max-inflight")
	fs.IntVar(&o.genrules, "genrules", 500, "bazel: genrules in the generated workspace")
	fs.IntVar(&o.bazelJobs, "bazel-jobs", 0, "bazel: --jobs for both builds (0: Bazel's default)")
	fs.IntVar(&o.bazelRounds, "bazel-rounds", 1, "bazel: rounds of the (slow) local and remote builds; overrides -rounds")
	fs.Var(&o.accessSize, "access-size", "access: blob size of the ByteStream transfers (latency uses -exec-latency-actions)")
	fs.IntVar(&o.buck2Requests, "buck2-requests", 200, "buck2worker: TypeScript compilations through the bridge and one-shot")
	fs.IntVar(&o.buck2Small, "buck2-small-requests", 1000, "buck2worker: trivial requests for the bridge's overhead")
	fs.IntVar(&o.buck2Rounds, "buck2-rounds", 1, "buck2worker: rounds (each compiles -buck2-requests modules one-shot, ~0.7 s each); overrides -rounds")
	fs.IntVar(&o.tscLibs, "tsc-libs", 40, "tsc: TypeScript libraries in the dependency chain")
	fs.IntVar(&o.tscRounds, "tsc-rounds", 2, "tsc: rounds of the three builds (local worker, Hearth persistent, Hearth one-shot); overrides -rounds")
	fs.IntVar(&o.tscInflight, "tsc-inflight", 2, "tsc: --max-inflight of hearth serve (and max_inflight_tasks of each hearth worker)")
	fs.IntVar(&o.tscExecutors, "tsc-executors", 2, "tsc: `hearth worker`s of the extra persistent build on `hearth server` that measures warm hits across executors (0 or 1: skip it)")
	fs.StringVar(&o.tscRemote, "tsc-remote-flags", "", "tsc: extra Bazel flags of the remote builds, space-separated (e.g. --remote_download_minimal); the local build is unchanged")
	fs.StringVar(&o.tscProfile, "tsc-bazel-profile", "", "tsc: write Bazel's JSON trace profile (--profile) of each timed build to this directory as MODE.profile.gz, to compare where the client's time goes per mode")
	fs.StringVar(&o.tscModes, "tsc-modes", "local,persistent,oneshot", "tsc: the modes to build, for a quick look at one (ratios need local and persistent; one-shot/persistent needs both)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for name, v := range map[string]int{
		"-findmissing-stored": o.fmStored, "-findmissing-digests": o.fmDigests, "-findmissing-clients": o.fmClients,
		"-batch-blobs": o.batchBlobs, "-batch-clients": o.batchClients, "-restart-blobs": o.restartBlobs,
		"-restart-writers": o.restartWriters, "-exec-latency-actions": o.execLatency,
		"-exec-throughput-actions": o.execThroughput, "-exec-concurrency": o.execConcurrency, "-genrules": o.genrules,
		"-rounds": o.rounds, "-bazel-rounds": o.bazelRounds, "-buck2-requests": o.buck2Requests,
		"-buck2-small-requests": o.buck2Small, "-buck2-rounds": o.buck2Rounds,
		"-tsc-libs": o.tscLibs, "-tsc-rounds": o.tscRounds, "-tsc-inflight": o.tscInflight,
	} {
		if v <= 0 {
			return o, fmt.Errorf("%s must be positive, got %d", name, v)
		}
	}
	if o.size <= 0 || o.batchBlobSize <= 0 || o.accessSize <= 0 {
		return o, errors.New("-size and -batch-blob-size must be positive")
	}
	if o.fmDuration <= 0 {
		return o, fmt.Errorf("-findmissing-duration must be positive, got %s", o.fmDuration)
	}
	if o.tscExecutors < 0 {
		return o, fmt.Errorf("-tsc-executors must be ≥ 0, got %d", o.tscExecutors)
	}
	if o.bazelJobs < 0 {
		return o, fmt.Errorf("-bazel-jobs must be ≥ 0, got %d", o.bazelJobs)
	}
	return o, nil
}

// selected returns the scenarios named by -run, in the canonical order.
func selected(spec string) ([]scenario, error) {
	if spec == "all" {
		return scenarios, nil
	}
	want := map[string]bool{}
	for _, name := range strings.Split(spec, ",") {
		name = strings.TrimSpace(name)
		known := false
		for _, s := range scenarios {
			known = known || s.name == name
		}
		if !known {
			return nil, fmt.Errorf("-run: unknown scenario %q", name)
		}
		want[name] = true
	}
	var out []scenario
	for _, s := range scenarios {
		if want[s.name] {
			out = append(out, s)
		}
	}
	return out, nil
}

func run() error {
	opts, err := parseOptions(os.Args[1:])
	if err != nil {
		return err
	}
	chosen, err := selected(opts.run)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	b := &bench{opts: opts, logger: logger}

	if b.work = opts.work; b.work == "" {
		if b.work, err = os.MkdirTemp("", "hearthbench-"); err != nil {
			return err
		}
		if !opts.keep {
			defer removeAll(b.work)
		}
	} else if err := os.MkdirAll(b.work, 0o755); err != nil {
		return err
	}
	logger.Info("scratch directory", "dir", b.work)
	if b.moduleRoot, err = findModuleRoot(ctx); err != nil && opts.hearthBin == "" {
		return err
	}
	if err := b.prepareBinary(ctx); err != nil {
		return err
	}

	started := time.Now()
	results := map[string]*result{}
	var order, failures []string
	for _, s := range chosen {
		logger.Info("scenario starting", "scenario", s.name)
		t := time.Now()
		r, err := s.run(ctx, b)
		logger.Info("scenario done", "scenario", s.name, "took", time.Since(t).Round(time.Millisecond), "err", err)
		if r != nil {
			r.note("scenario took %s including setup", time.Since(t).Round(time.Second))
		}
		results[s.name] = r
		order = append(order, s.name)
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", s.name, err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	args := append([]string{"go run ./bench/cmd/hearthbench"}, os.Args[1:]...)
	writeReport(os.Stdout, started, args, opts.hearthBin, results, order, failures)
	if opts.out != "" {
		f, err := os.Create(opts.out)
		if err != nil {
			return err
		}
		writeReport(f, started, args, opts.hearthBin, results, order, failures)
		if err := f.Close(); err != nil {
			return err
		}
	}
	if len(failures) > 0 {
		return fmt.Errorf("%d scenario(s) failed", len(failures))
	}
	return nil
}

// prepareBinary builds the hearth binary to measure, unless -hearth names
// one; with -profile it adds the profiling hook.
func (b *bench) prepareBinary(ctx context.Context) error {
	if b.opts.hearthBin != "" {
		if b.opts.profileDir != "" {
			return errors.New("-profile builds its own binary; it cannot be combined with -hearth")
		}
		b.hearthBin = b.opts.hearthBin
		return nil
	}
	binDir, err := b.scratch("bin")
	if err != nil {
		return err
	}
	b.logger.Info("building hearth")
	if b.opts.profileDir == "" {
		b.hearthBin, err = buildHearth(ctx, b.moduleRoot, binDir)
		return err
	}
	if b.opts.profileDir, err = filepath.Abs(b.opts.profileDir); err != nil {
		return err
	}
	if err := os.MkdirAll(b.opts.profileDir, 0o755); err != nil {
		return err
	}
	b.hearthBin, err = buildProfilingHearth(ctx, b.moduleRoot, binDir)
	return err
}

// byteSize is a flag holding a size such as 1GiB, 64MiB, 4KiB or 4096.
type byteSize int64

func (s *byteSize) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *byteSize) Set(v string) error {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		num, ok := strings.CutSuffix(v, u.suffix)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n <= 0 || n > (1<<62)/u.mult {
			return fmt.Errorf("%q is not a positive size like 1GiB, 64MiB, 4KiB or 4096", v)
		}
		*s = byteSize(n * u.mult)
		return nil
	}
	return fmt.Errorf("%q is not a size", v)
}
