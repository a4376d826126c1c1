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
		start := time.Now()
		bridge, err := startBridge(ctx, b, dir, project, tscFlags, tscArgv)
		if err != nil {
			return nil, err
		}
		for i := range o.buck2Requests {
			if _, err := bridge.send(ctx, tsconfig(i)); err != nil {
				bridge.stop()
				return nil, err
			}
		}
		bridgeTotal := time.Since(start)
		start = time.Now()
		for i := range o.buck2Requests {
			if err := runQuiet(ctx, project, node, "--expose-gc", script, tsconfig(i)); err != nil {
				bridge.stop()
				return nil, fmt.Errorf("one-shot compilation %d: %w", i, err)
			}
		}
		total.add(bridgeTotal.Seconds(), time.Since(start).Seconds())
		bridge.stop()
		// Latencies: a new bridge and a worker driven directly take turns,
		// so that the machine's changing load hits both alike, and both
		// worker processes compile the same modules in the same order (a
		// tsc_wrapped worker that compiled more carries a larger heap into
		// the global.gc() it runs after every request).
		if bridge, err = startBridge(ctx, b, dir, project, tscFlags, tscArgv); err != nil {
			return nil, err
		}
		bp, dp, err := alternate(ctx, bridge, project, tscArgv, o.buck2Requests, 1, tsconfig, func(i int) *pb.WorkRequest {
			return &pb.WorkRequest{Arguments: []string{tsconfig(i)}, Inputs: inputs}
		})
		bridge.stop()
		if err != nil {
			return nil, err
		}
		tscP50.add(bp.Seconds(), dp.Seconds())
		tscOverhead = append(tscOverhead, (bp - dp).Seconds())

		small, err := startBridge(ctx, b, dir, project, []string{"--concurrency=1"}, []string{testWorker})
		if err != nil {
			return nil, err
		}
		bp, dp, err = alternate(ctx, small, project, []string{testWorker}, o.buck2Small, buck2SmallWarmup,
			func(int) string { return "--say=ok" },
			func(int) *pb.WorkRequest { return &pb.WorkRequest{Arguments: []string{"--say=ok"}} })
		small.stop()
		if err != nil {
			return nil, err
		}
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
	r.add(row{Scenario: scen, Measure: "bridge overhead, p50 (bridge − direct)", Hearth: signedSeconds(median(tscOverhead))})
	small := fmt.Sprintf("Buck2 bridge, %d trivial requests", o.buck2Small)
	r.add(smallP50.row(small, "p50 latency per request", "test worker driven directly", secondsFormat))
	ov := median(smallOverhead)
	r.add(row{Scenario: small, Measure: "bridge overhead, p50 (bridge − direct)", Hearth: signedSeconds(ov),
		Goal: "≤ " + formatDuration(buck2GoalOverhead), Met: metText(ov <= buck2GoalOverhead.Seconds())})
	r.note("speed-up of the bridge over one-shot runs: %.1f×; Buck2's side is a Go gRPC client on the Unix socket, sending one ExecuteCommand at a time", speedup)
	r.note("tsc: each request compiles its own module (src/m<i>.ts, strict, declarations) with lib es2017 and skipLibCheck; the bridge lists src/ and TypeScript's lib/ as WorkRequest.inputs (tsc_wrapped reads only declared inputs)")
	r.note("direct: this process writes WorkRequests to the worker's stdin and reads WorkResponses, proto framing; bridge and direct requests take turns; latencies leave out the first (cold) tsc request and the first %d trivial ones", buck2SmallWarmup)
	return r, nil
}

// bridgeSession is a running `hearth buck2-worker` with a Buck2-side client.
type bridgeSession struct {
	cmd    *exec.Cmd
	conn   interface{ Close() error }
	client bpb.WorkerClient
	clean  func()
}

// startBridge starts `hearth buck2-worker flags -- argv` in project as Buck2
// does and connects to its socket.
func startBridge(ctx context.Context, b *bench, dir, project string, flags, argv []string) (*bridgeSession, error) {
	sockDir, err := os.MkdirTemp("", "b2wbench")
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(sockDir, "socket")
	log, err := os.OpenFile(filepath.Join(dir, "bridge.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		os.RemoveAll(sockDir)
		return nil, err
	}
	cmdArgs := append(append([]string{"buck2-worker"}, flags...), "--")
	cmd := exec.Command(b.hearthBin, append(cmdArgs, argv...)...)
	cmd.Dir, cmd.Env = project, append(os.Environ(), buck2worker.SocketEnv+"="+socket)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s := &bridgeSession{cmd: cmd, clean: func() { log.Close(); os.RemoveAll(sockDir) }}
	if err := cmd.Start(); err != nil {
		s.clean()
		return nil, err
	}
	dialCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := buck2worker.Dial(dialCtx, socket)
	if err != nil {
		s.stop()
		return nil, err
	}
	s.conn, s.client = conn, bpb.NewWorkerClient(conn)
	return s, nil
}

// send runs one ExecuteCommand with one positional argument and returns its
// latency.
func (s *bridgeSession) send(ctx context.Context, arg string) (time.Duration, error) {
	t := time.Now()
	resp, err := s.client.Execute(ctx, &bpb.ExecuteCommand{Argv: [][]byte{[]byte(arg)}})
	if err != nil {
		return 0, fmt.Errorf("bridge request %s: %w", arg, err)
	}
	if resp.GetExitCode() != 0 {
		return 0, fmt.Errorf("bridge request %s: exit code %d: %s", arg, resp.GetExitCode(), resp.GetStderr())
	}
	return time.Since(t), nil
}

func (s *bridgeSession) stop() {
	if s.conn != nil {
		s.conn.Close()
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	_ = s.cmd.Wait()
	s.clean()
}

// alternate sends n requests to the bridge and n to a worker started from
// argv --persistent_worker in project and driven directly over its stdin, as
// Bazel drives it, taking turns, and returns both p50 latencies, leaving
// out the first skip requests of each.
func alternate(ctx context.Context, bridge *bridgeSession, project string, argv []string, n, skip int,
	arg func(int) string, req func(int) *pb.WorkRequest) (time.Duration, time.Duration, error) {
	cmd := exec.CommandContext(ctx, argv[0], append(slices.Clone(argv[1:]), "--persistent_worker")...)
	cmd.Dir = project
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	w := workerproto.NewRequestWriter(workerproto.Proto, stdin)
	r := workerproto.NewResponseReader(workerproto.Proto, stdout, 0)
	var viaBridge, direct []time.Duration
	for i := range n + skip {
		bt, err := bridge.send(ctx, arg(i%n))
		if err != nil {
			return 0, 0, err
		}
		t := time.Now()
		if err := w.Write(req(i % n)); err != nil {
			return 0, 0, err
		}
		resp, err := r.Read()
		if err != nil {
			return 0, 0, err
		}
		if resp.GetExitCode() != 0 {
			return 0, 0, fmt.Errorf("direct request %d: exit code %d: %s", i, resp.GetExitCode(), resp.GetOutput())
		}
		if i >= skip {
			viaBridge, direct = append(viaBridge, bt), append(direct, time.Since(t))
		}
	}
	return percentile(slices.Sorted(slices.Values(viaBridge)), 0.5), percentile(slices.Sorted(slices.Values(direct)), 0.5), nil
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

// signedSeconds formats a difference of latencies, which noise can make
// negative.
func signedSeconds(v float64) string {
	if v < 0 {
		return "−" + secondsFormat(-v)
	}
	return secondsFormat(v)
}
