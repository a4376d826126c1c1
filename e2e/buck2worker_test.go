package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/buck2worker"
	bpb "github.com/hearth-build/hearth/internal/buck2worker/buck2workerpb"
	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// These tests play Buck2 against `hearth buck2-worker`: start the binary in
// the project directory with WORKER_SOCKET set, wait for the socket, send
// concurrent ExecuteCommands and cancel one, and compare every answer and
// output file with a one-shot run of the same tool.

// startBuck2Worker starts `hearth buck2-worker flags... -- argv...` in
// projectDir as Buck2 would and returns a Worker client on its socket.
func startBuck2Worker(t *testing.T, projectDir string, flags []string, argv ...string) (bpb.WorkerClient, *hearthProcess) {
	t.Helper()
	// Buck2 keeps sockets short (Unix socket paths are limited to 108 bytes).
	sockDir, err := os.MkdirTemp("", "b2w-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	socket := filepath.Join(sockDir, "socket")
	args := append(append([]string{"buck2-worker"}, flags...), "--")
	p := launchHearth(t, projectDir, []string{buck2worker.SocketEnv + "=" + socket}, append(args, argv...)...)
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	conn, err := buck2worker.Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return bpb.NewWorkerClient(conn), p
}

func buck2Command(env map[string]string, args ...string) *bpb.ExecuteCommand {
	c := &bpb.ExecuteCommand{}
	for _, a := range args {
		c.Argv = append(c.Argv, []byte(a))
	}
	for k, v := range env {
		c.Env = append(c.Env, &bpb.ExecuteCommand_EnvironmentEntry{Key: []byte(k), Value: []byte(v)})
	}
	return c
}

// runOneShotIn runs argv in dir with env and returns its exit code and
// combined output, as the fallback of a Buck2 worker action would.
func runOneShotIn(t *testing.T, dir string, env []string, argv ...string) (int32, string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("one-shot %q: %v", argv, err)
	}
	return int32(cmd.ProcessState.ExitCode()), string(out)
}

func TestBuck2WorkerBridgeWithTestWorker(t *testing.T) {
	project := t.TempDir()
	worker := buildScriptedWorker(t, t.TempDir())
	client, _ := startBuck2Worker(t, project, []string{"--concurrency=3"}, worker)
	if err := os.WriteFile(filepath.Join(project, "action.args"), []byte("--say=from an argfile\n--getenv=ACTION\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// Three actions at once and a fourth that Buck2 cancels.
	var wg sync.WaitGroup
	responses := make([]*bpb.ExecuteResponse, 3)
	start := time.Now()
	for i := range 3 {
		wg.Go(func() {
			args := []string{"--sleep=500ms", fmt.Sprintf("--out=buck-out/gen/a%d.txt", i), fmt.Sprintf("--content=action %d", i), "@action.args"}
			resp, err := client.Execute(t.Context(), buck2Command(map[string]string{"ACTION": strconv.Itoa(i)}, args...))
			if err != nil {
				t.Errorf("action %d: %v", i, err)
				return
			}
			responses[i] = resp
		})
	}
	cancelled := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(200*time.Millisecond, cancel)
		_, err := client.Execute(ctx, buck2Command(nil, "--sleep=30s"))
		cancelled <- err
	}()
	wg.Wait()
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("three 500ms actions with --concurrency=3 took %v", took)
	}
	select {
	case err := <-cancelled:
		if status.Code(err) != codes.Canceled {
			t.Errorf("cancelled action: %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled action did not end")
	}

	// Every answer and output equals a one-shot run of the same command.
	oneShotDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(oneShotDir, "action.args"), []byte("--say=from an argfile\n--getenv=ACTION\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, resp := range responses {
		if resp == nil {
			continue
		}
		out := fmt.Sprintf("buck-out/gen/a%d.txt", i)
		code, stderr := runOneShotIn(t, oneShotDir, []string{"ACTION=" + strconv.Itoa(i)},
			worker, "--sleep=1ms", "--out="+out, fmt.Sprintf("--content=action %d", i), "@action.args")
		if resp.GetExitCode() != code || resp.GetStderr() != stderr {
			t.Errorf("action %d: bridge exit %d %q, one-shot exit %d %q", i, resp.GetExitCode(), resp.GetStderr(), code, stderr)
		}
		got, err1 := os.ReadFile(filepath.Join(project, out))
		want, err2 := os.ReadFile(filepath.Join(oneShotDir, out))
		if err1 != nil || err2 != nil || string(got) != string(want) {
			t.Errorf("%s: bridge wrote %q (%v), one-shot %q (%v)", out, got, err1, want, err2)
		}
	}
}

// tscDir is where scripts/npm-install.sh puts tsc_wrapped and TypeScript.
const tscDir = "testdata/tsc"

// installTSC installs the locked npm packages (a no-op when up to date) and
// returns the tsc_wrapped script and TypeScript's lib directory.
func installTSC(t *testing.T) (script, libDir string) {
	t.Helper()
	cmd := exec.Command("bash", "../scripts/npm-install.sh", tscDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/npm-install.sh %s: %v\n%s", tscDir, err, out)
	}
	abs, err := filepath.Abs(tscDir)
	if err != nil {
		t.Fatal(err)
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(abs, "node_modules/@bazel/concatjs/internal/tsc_wrapped/tsc_wrapped.js"),
		filepath.Join(abs, "node_modules/typescript/lib")
}

// writeTSProject writes n TypeScript modules, each with the tsconfig.json
// (with tsc_wrapped's bazelOptions) that compiles it into out/m<i>/.
// Module bad has a type error.
func writeTSProject(t *testing.T, dir string, n int) {
	t.Helper()
	write := func(name, content string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	module := func(name, body string) {
		write("src/"+name+".ts", body)
		write("tsconfig-"+name+".json", fmt.Sprintf(`{
  "compilerOptions": {"target": "es2017", "module": "commonjs", "outDir": "out/%[1]s", "declaration": true,
    "rootDir": ".", "rootDirs": ["."], "skipLibCheck": true, "types": [], "lib": ["es2017"], "strict": true},
  "files": ["src/%[1]s.ts"],
  "bazelOptions": {"target": "//src:%[1]s", "package": "src", "workspaceName": "project",
    "compilationTargetSrc": ["src/%[1]s.ts"], "disableStrictDeps": true, "typeCheck": true, "tsickle": false, "untyped": false,
    "typeBlackListPaths": [], "allowedStrictDeps": [], "es5Mode": false, "manifest": "", "expectedDiagnostics": []}
}
`, name))
	}
	for i := range n {
		module(fmt.Sprintf("m%d", i), fmt.Sprintf(`export interface Point%[1]d { x: number; y: number }
export function norm%[1]d(p: Point%[1]d): number { return Math.sqrt(p.x * p.x + p.y * p.y) * %[1]d; }
export const origin%[1]d: Point%[1]d = { x: 0, y: %[1]d };
`, i))
	}
	module("bad", "export const n: number = \"not a number\";\n")
}

func TestBuck2WorkerBridgeWithTscWrapped(t *testing.T) {
	script, libDir := installTSC(t)
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node: %v (Node.js 20 is a test dependency)", err)
	}
	const n = 6
	project, oneShotDir := t.TempDir(), t.TempDir()
	writeTSProject(t, project, n)
	writeTSProject(t, oneShotDir, n)
	argv := []string{node, "--expose-gc", script}
	// tsc_wrapped reads only the files a WorkRequest lists as inputs.
	client, bridge := startBuck2Worker(t, project,
		[]string{"--concurrency=2", "--input-dir=src", "--input-dir=" + libDir}, argv...)

	names := []string{"bad"}
	for i := range n {
		names = append(names, fmt.Sprintf("m%d", i))
	}
	responses := make(map[string]*bpb.ExecuteResponse)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			resp, err := client.Execute(t.Context(), buck2Command(nil, "tsconfig-"+name+".json"))
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			mu.Lock()
			responses[name] = resp
			mu.Unlock()
		})
	}
	// One more compilation, cancelled by Buck2 while it runs.
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	_, cancelErr := client.Execute(ctx, buck2Command(nil, "tsconfig-m0.json"))
	cancel()
	wg.Wait()
	if c := status.Code(cancelErr); c != codes.DeadlineExceeded && c != codes.OK {
		t.Errorf("cancelled compilation: %v", cancelErr)
	}

	for _, name := range names {
		resp := responses[name]
		if resp == nil {
			continue
		}
		code, stderr := runOneShotIn(t, oneShotDir, os.Environ(), append(argv, "tsconfig-"+name+".json")...)
		wantCode := int32(0)
		if name == "bad" {
			wantCode = 1
		}
		if resp.GetExitCode() != wantCode || code != wantCode {
			t.Errorf("%s: bridge exit %d, one-shot exit %d, want %d\nbridge stderr: %s\none-shot: %s",
				name, resp.GetExitCode(), code, wantCode, resp.GetStderr(), stderr)
		}
		if name == "bad" && (!strings.Contains(resp.GetStderr(), "TS2322") || resp.GetStderr() != stderr) {
			t.Errorf("bad: want the type error TS2322 as in the one-shot run: bridge %q, one-shot %q", resp.GetStderr(), stderr)
		}
	}
	if log := bridge.log.String(); strings.Contains(log, "one-shot") {
		t.Errorf("the bridge fell back to one-shot runs: tsc_wrapped did not serve as a persistent worker\n%s", log)
	}
	for i := range n {
		for _, f := range []string{"src/m%d.mjs", "src/m%d.d.ts"} {
			rel := filepath.Join(fmt.Sprintf("out/m%d", i), fmt.Sprintf(f, i))
			got, err1 := os.ReadFile(filepath.Join(project, rel))
			want, err2 := os.ReadFile(filepath.Join(oneShotDir, rel))
			if err1 != nil || err2 != nil || string(got) != string(want) {
				t.Errorf("%s: bridge %q (%v), one-shot %q (%v)", rel, got, err1, want, err2)
			}
		}
	}
}

// Without $WORKER_SOCKET (a remote executor running the same WorkerInfo
// command line, or a one-shot run) the bridge is the Bazel worker itself.
func TestBuck2WorkerWithoutSocketIsTheBazelWorker(t *testing.T) {
	worker := buildScriptedWorker(t, t.TempDir())
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, buck2worker.SocketEnv+"=") })

	code, out := runOneShotIn(t, t.TempDir(), env, hearthBin, "buck2-worker", "--concurrency=2", "--", worker, "--say=one-shot", "--exit=5")
	if code != 5 || out != "one-shot\n" {
		t.Errorf("one-shot through the bridge: exit %d %q, want 5 \"one-shot\\n\"", code, out)
	}

	cmd := exec.Command(hearthBin, "buck2-worker", "--", worker, "--persistent_worker")
	cmd.Env, cmd.Dir = env, t.TempDir()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	w := workerproto.NewRequestWriter(workerproto.Proto, stdin)
	r := workerproto.NewResponseReader(workerproto.Proto, stdout, 0)
	for i := range 2 {
		if err := w.Write(&pb.WorkRequest{Arguments: []string{"--counter"}}); err != nil {
			t.Fatal(err)
		}
		resp, err := r.Read()
		if want := strconv.Itoa(i+1) + "\n"; err != nil || resp.GetOutput() != want {
			t.Fatalf("request %d: %v, %v; want output %q from one persistent process", i, resp, err, want)
		}
	}
}
