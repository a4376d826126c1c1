package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/hearth-build/hearth/internal/buck2worker"
	bpb "github.com/hearth-build/hearth/internal/buck2worker/buck2workerpb"
	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// Scenario buck2worker: `hearth buck2-worker` played as Buck2 plays a local
// worker (the binary started with WORKER_SOCKET in the project directory,
// one ExecuteCommand at a time, as Buck2 sends them with concurrency None).
//
//   - Speed-up: N TypeScript compilations (one module each) through the
//     bridge over tsc_wrapped (@bazel/concatjs, TypeScript 4.9.5, from
//     e2e/testdata/tsc via scripts/npm-install.sh), start-up of the bridge
//     and of node included, against N one-shot `node tsc_wrapped.js
//     tsconfig.json` runs of the same compilations.
//   - Overhead: the p50 latency of a request through the bridge against the
//     same request written straight to the same Bazel worker's stdin by this
//     process (what Buck2 would see if it spoke Bazel's protocol itself):
//     for the test worker (a trivial request: the bridge's own cost) and for
//     tsc_wrapped, where the direct client sends the input digests it
//     computed before the clock started, while the bridge lists and stats
//     them per request.

const (
	buck2GoalSpeedup  = 5.0
	buck2GoalOverhead = time.Millisecond
	buck2SmallWarmup  = 20
)

func runBuck2Worker(ctx context.Context, b *bench) (*result, error) {
	o := b.opts
	dir, err := b.scratch("buck2worker")
	if err != nil {
		return nil, err
	}
	tscDir := filepath.Join(b.moduleRoot, "e2e/testdata/tsc")
	if err := runQuiet(ctx, b.moduleRoot, "bash", "scripts/npm-install.sh", tscDir); err != nil {
		return nil, err
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, err
	}
	script := filepath.Join(tscDir, "node_modules/@bazel/concatjs/internal/tsc_wrapped/tsc_wrapped.js")
	libDir, err := filepath.EvalSymlinks(filepath.Join(tscDir, "node_modules/typescript/lib"))
	if err != nil {
		return nil, err
	}
	project := filepath.Join(dir, "project")
	if err := writeTSModules(project, o.buck2Requests); err != nil {
		return nil, err
	}
	testWorker := filepath.Join(dir, "testworker")
	if err := runQuiet(ctx, b.moduleRoot, "go", "build", "-o", testWorker, "./internal/workerproto/testworker"); err != nil {
		return nil, err
	}
	tscArgv := []string{node, "--expose-gc", script}
	tscFlags := []string{"--concurrency=1", "--input-dir=src", "--input-dir=" + libDir}
	tsconfig := func(i int) string { return fmt.Sprintf("tsconfig-m%d.json", i) }
	inputs, err := listInputs(project, []string{"src", libDir})
	if err != nil {
		return nil, err
	}

	var total, tscP50, smallP50 comparison
	var smallOverhead, tscOverhead []float64
	for round := range o.buck2Rounds {
		b.logger.Info("buck2worker: round", "round", round+1, "requests", o.buck2Requests)
		bridgeTotal, bridgeLat, err := viaBridge(ctx, b, dir, project, tscFlags, tscArgv, o.buck2Requests, tsconfig)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		for i := range o.buck2Requests {
			if err := runQuiet(ctx, project, node, "--expose-gc", script, tsconfig(i)); err != nil {
				return nil, fmt.Errorf("one-shot compilation %d: %w", i, err)
			}
		}
		total.add(bridgeTotal.Seconds(), time.Since(start).Seconds())
		directLat, err := viaWorker(ctx, project, tscArgv, o.buck2Requests, func(i int) *pb.WorkRequest {
			return &pb.WorkRequest{Arguments: []string{tsconfig(i)}, Inputs: inputs}
		})
		if err != nil {
			return nil, err
		}
		// The first (cold) request of each is left out of the latencies.
		bp, dp := percentile(bridgeLat[1:], 0.5), percentile(directLat[1:], 0.5)
		tscP50.add(bp.Seconds(), dp.Seconds())
		tscOverhead = append(tscOverhead, (bp - dp).Seconds())

		n := o.buck2Small + buck2SmallWarmup
		say := func(int) string { return "--say=ok" }
		_, smallBridge, err := viaBridge(ctx, b, dir, project, []string{"--concurrency=1"}, []string{testWorker}, n, say)
		if err != nil {
			return nil, err
		}
		smallDirect, err := viaWorker(ctx, project, []string{testWorker}, n, func(int) *pb.WorkRequest {
			return &pb.WorkRequest{Arguments: []string{"--say=ok"}}
		})
		if err != nil {
			return nil, err
		}
		bp = percentile(sortedFrom(smallBridge, buck2SmallWarmup), 0.5)
		dp = percentile(sortedFrom(smallDirect, buck2SmallWarmup), 0.5)
		smallP50.add(bp.Seconds(), dp.Seconds())
		smallOverhead = append(smallOverhead, (bp - dp).Seconds())
	}

	r := &result{}
	scen := fmt.Sprintf("Buck2 bridge, %d tsc compilations", o.buck2Requests)
	speedup := 1 / total.ratio()
	tr := total.row(scen, "wall time, one at a time (bridge start included)", "one-shot node tsc_wrapped", secondsFormat)
	tr.Goal, tr.Met = fmt.Sprintf("≤ %.2f× (≥ %.0f× faster)", 1/buck2GoalSpeedup, buck2GoalSpeedup), metText(speedup >= buck2GoalSpeedup)
	r.add(tr)
	r.add(tscP50.row(scen, "p50 latency per compilation, warm", "tsc_wrapped worker driven directly", secondsFormat))
	r.add(row{Scenario: scen, Measure: "bridge overhead, p50 (bridge − direct)", Hearth: secondsFormat(median(tscOverhead))})
	small := fmt.Sprintf("Buck2 bridge, %d trivial requests", o.buck2Small)
	r.add(smallP50.row(small, "p50 latency per request", "test worker driven directly", secondsFormat))
	ov := median(smallOverhead)
	r.add(row{Scenario: small, Measure: "bridge overhead, p50 (bridge − direct)", Hearth: secondsFormat(ov),
		Goal: "≤ " + formatDuration(buck2GoalOverhead), Met: metText(ov <= buck2GoalOverhead.Seconds())})
	r.note("speed-up of the bridge over one-shot runs: %.1f×; Buck2's side is a Go gRPC client on the Unix socket, sending one ExecuteCommand at a time", speedup)
	r.note("tsc: each request compiles its own module (src/m<i>.ts, strict, declarations) with lib es2017 and skipLibCheck; the bridge lists src/ and TypeScript's lib/ as WorkRequest.inputs (tsc_wrapped reads only declared inputs)")
	r.note("direct: this process writes WorkRequests to the worker's stdin and reads WorkResponses, proto framing; latencies leave out the first (cold) tsc request and the first %d trivial ones", buck2SmallWarmup)
	return r, nil
}

// viaBridge starts `hearth buck2-worker flags -- argv` in project as Buck2
// does, sends n ExecuteCommands one at a time (the positional args of
// request i are args(i)), and returns the time from the start of the process
// to the last answer and each request's latency in order.
func viaBridge(ctx context.Context, b *bench, dir, project string, flags, argv []string, n int,
	args func(int) string) (time.Duration, []time.Duration, error) {
	sockDir, err := os.MkdirTemp("", "b2wbench")
	if err != nil {
		return 0, nil, err
	}
	defer os.RemoveAll(sockDir)
	socket := filepath.Join(sockDir, "socket")
	log, err := os.Create(filepath.Join(dir, "bridge.log"))
	if err != nil {
		return 0, nil, err
	}
	defer log.Close()
	cmdArgs := append(append([]string{"buck2-worker"}, flags...), "--")
	cmd := exec.Command(b.hearthBin, append(cmdArgs, argv...)...)
	cmd.Dir, cmd.Env = project, append(os.Environ(), buck2worker.SocketEnv+"="+socket)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	dialCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := buck2worker.Dial(dialCtx, socket)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	client := bpb.NewWorkerClient(conn)
	lat := make([]time.Duration, n)
	for i := range n {
		t := time.Now()
		resp, err := client.Execute(ctx, &bpb.ExecuteCommand{Argv: [][]byte{[]byte(args(i))}})
		if err != nil {
			return 0, nil, fmt.Errorf("bridge request %d: %w", i, err)
		}
		if resp.GetExitCode() != 0 {
			return 0, nil, fmt.Errorf("bridge request %d: exit code %d: %s", i, resp.GetExitCode(), resp.GetStderr())
		}
		lat[i] = time.Since(t)
	}
	return time.Since(start), lat, nil
}

// viaWorker starts argv --persistent_worker in project and sends it n
// requests one at a time over its stdin, as Bazel does, returning each
// request's latency in order.
func viaWorker(ctx context.Context, project string, argv []string, n int, req func(int) *pb.WorkRequest) ([]time.Duration, error) {
	cmd := exec.CommandContext(ctx, argv[0], append(slices.Clone(argv[1:]), "--persistent_worker")...)
	cmd.Dir = project
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	w := workerproto.NewRequestWriter(workerproto.Proto, stdin)
	r := workerproto.NewResponseReader(workerproto.Proto, stdout, 0)
	lat := make([]time.Duration, n)
	for i := range n {
		t := time.Now()
		if err := w.Write(req(i)); err != nil {
			return nil, err
		}
		resp, err := r.Read()
		if err != nil {
			return nil, err
		}
		if resp.GetExitCode() != 0 {
			return nil, fmt.Errorf("direct request %d: exit code %d: %s", i, resp.GetExitCode(), resp.GetOutput())
		}
		lat[i] = time.Since(t)
	}
	return lat, nil
}

// sortedFrom returns ds[from:] sorted.
func sortedFrom(ds []time.Duration, from int) []time.Duration {
	return slices.Sorted(slices.Values(ds[from:]))
}

// listInputs lists every file under dirs (relative to project or absolute)
// with its SHA-256 in hex, as the bridge's --input-dir does.
func listInputs(project string, dirs []string) ([]*pb.Input, error) {
	var inputs []*pb.Input
	for _, d := range dirs {
		root := d
		if !filepath.IsAbs(d) {
			root = filepath.Join(project, d)
		}
		err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			name := path
			if !filepath.IsAbs(d) {
				name, _ = filepath.Rel(project, path)
			}
			inputs = append(inputs, &pb.Input{Path: name, Digest: []byte(hex.EncodeToString(sum[:]))})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if len(inputs) == 0 {
		return nil, errors.New("no inputs found")
	}
	return inputs, nil
}

// writeTSModules writes n TypeScript modules, each with a tsconfig.json
// carrying tsc_wrapped's bazelOptions that compiles it into out/m<i>/.
func writeTSModules(dir string, n int) error {
	if err := os.MkdirAll(filepath.Join(dir, "src"), 0o755); err != nil {
		return err
	}
	for i := range n {
		src := fmt.Sprintf(`export interface Point%[1]d { x: number; y: number }
export function norm%[1]d(p: Point%[1]d): number { return Math.sqrt(p.x * p.x + p.y * p.y) * %[1]d; }
export class Shape%[1]d { constructor(readonly points: Point%[1]d[]) {} perimeter(): number { return this.points.map(norm%[1]d).reduce((a, b) => a + b, 0); } }
`, i)
		cfg := fmt.Sprintf(`{
  "compilerOptions": {"target": "es2017", "module": "commonjs", "outDir": "out/m%[1]d", "declaration": true,
    "rootDir": ".", "rootDirs": ["."], "skipLibCheck": true, "types": [], "lib": ["es2017"], "strict": true},
  "files": ["src/m%[1]d.ts"],
  "bazelOptions": {"target": "//src:m%[1]d", "package": "src", "workspaceName": "project",
    "compilationTargetSrc": ["src/m%[1]d.ts"], "disableStrictDeps": true, "typeCheck": true, "tsickle": false,
    "untyped": false, "typeBlackListPaths": [], "allowedStrictDeps": [], "es5Mode": false, "manifest": "",
    "expectedDiagnostics": []}
}
`, i)
		if err := os.WriteFile(filepath.Join(dir, "src", fmt.Sprintf("m%d.ts", i)), []byte(src), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("tsconfig-m%d.json", i)), []byte(cfg), 0o644); err != nil {
			return err
		}
	}
	return nil
}
