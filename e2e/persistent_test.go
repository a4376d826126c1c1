package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// This file holds the persistent worker tests: a Bazel 4.2.3 build whose
// actions run on Hearth's warm workers (below), and a plain REAPI client's
// view of the worker metadata and the one-shot fallback
// (persistent_fallback_test.go). Both use the scripted test worker of
// internal/workerproto/testworker as the tool.

// workerUnits is the number of worker_compile targets in
// testdata/bazel/workers/BUILD.
const workerUnits = 20

// workerClientKey is the persistentWorkerKey the workspace's targets set
// through exec_properties.
const workerClientKey = "e2e-key"

// TestBazelPersistentWorkersRemote builds twenty worker_compile actions of one
// worker key, locally one-shot first, then on `hearth serve`, and checks:
//   - the remote outputs equal the local one-shot outputs, every spawn ran
//     remotely, and /status shows the key served warm (at most one cold start
//     per executor slot, the rest warm hits, no fallback);
//   - after one source changes, only its action reruns, on a warm worker;
//   - after the tool changes (same client key, same command line), every
//     action reruns under a new pool key with a cold start, and no live
//     worker process runs the old tool.
func TestBazelPersistentWorkersRemote(t *testing.T) {
	tool := buildScriptedWorker(t, t.TempDir())
	b := newBazelIn(t, "workers")
	for i := range workerUnits {
		writeWorkspaceFile(t, b, unitSource(i), fmt.Sprintf("--content=source %02d, version 1\n", i))
	}
	copyExecutable(t, tool, filepath.Join(b.workspace, "tools", "testworker"))

	// The reference: every action run one-shot by Bazel itself (not on
	// Bazel's own local persistent worker), which is what a persistent
	// worker must be indistinguishable from.
	localLog := filepath.Join(b.root, "local-build.exec.json")
	b.run("build", "--strategy=WorkerCompile=local", "--execution_log_json_file="+localLog, "//...")
	localSpawns := mustReadExecutionLog(t, localLog)
	if len(localSpawns) != workerUnits {
		t.Errorf("local build: %d spawns ran, want %d:\n%s", len(localSpawns), workerUnits, spawnList(localSpawns))
	}
	for _, s := range localSpawns {
		if s.Mnemonic != "WorkerCompile" || s.Runner != "local" || s.ExitCode != 0 {
			t.Errorf("local build: want a successful one-shot WorkerCompile (runner \"local\", not Bazel's own worker), got %s (exit code %d)", s, s.ExitCode)
		}
	}
	bin := b.info("bazel-bin")
	local := unitOutputs(t, bin)
	want := map[string]string{}
	for i := range workerUnits {
		want[unitOutput(i)] = unitContent(i, 1)
	}
	checkUnitContents(t, "local one-shot build", bin, want)

	p := startServe(t, t.TempDir(), "--max-inflight=2")
	remote := append(remoteExecutionFlags(p.GRPCAddr), "//...")

	// 1. Every action, remotely, on warm workers.
	b.run("clean")
	spawns := buildRemotely(t, b, "first remote build", remote)
	checkWorkerSpawns(t, "first remote build", spawns, workerUnits)
	compareSnapshots(t, "first remote build", local, unitOutputs(t, bin), true)
	st := waitWorkerStatus(t, p, "the first build's 20 acquisitions", func(s workerStatus) bool {
		return s.clientAcquisitions(workerClientKey) >= workerUnits
	})
	maxInflight := st.executor(t).MaxInflight
	first := st.onlyKey(t, workerClientKey)
	t.Logf("after the first remote build: %+v", first)
	if first.WarmHits+first.ColdStarts != workerUnits {
		t.Errorf("key %s: %d warm hits + %d cold starts, want %d acquisitions, one per action", first.Key, first.WarmHits, first.ColdStarts, workerUnits)
	}
	if first.ColdStarts < 1 || first.ColdStarts > int64(maxInflight) {
		t.Errorf("key %s: %d cold starts, want 1 to %d (one per executor slot at most)", first.Key, first.ColdStarts, maxInflight)
	}
	if first.WarmHits < workerUnits/2 {
		t.Errorf("key %s: %d warm hits, want at least %d of %d actions served by a warm worker", first.Key, first.WarmHits, workerUnits/2, workerUnits)
	}
	if len(first.Fallbacks) > 0 {
		t.Errorf("key %s: fallbacks %v, want none: every action should run on a worker", first.Key, first.Fallbacks)
	}
	checkPoolMetrics(t, p, first.Key, first.WarmHits, first.ColdStarts)

	// 2. One source changes: one action reruns, on a warm worker.
	writeWorkspaceFile(t, b, unitSource(7), "--content=source 07, version 2\n")
	want[unitOutput(7)] = unitContent(7, 2)
	spawns = buildRemotely(t, b, "rebuild after a source change", remote)
	checkWorkerSpawns(t, "rebuild after a source change", spawns, 1)
	if len(spawns) == 1 && (len(spawns[0].ActualOutputs) != 1 || !strings.HasSuffix(spawns[0].ActualOutputs[0].Path, "/"+unitOutput(7))) {
		t.Errorf("rebuild after a source change: the spawn that ran is %s, want the one of %s", spawns[0], unitOutput(7))
	}
	checkUnitContents(t, "rebuild after a source change", bin, want)
	st = waitWorkerStatus(t, p, "the rebuild's acquisition", func(s workerStatus) bool {
		return s.clientAcquisitions(workerClientKey) >= workerUnits+1
	})
	second := st.onlyKey(t, workerClientKey)
	switch {
	case second.Key != first.Key:
		t.Errorf("a source change moved the action to pool key %s, want %s: only tool changes make a new key", second.Key, first.Key)
	case second.WarmHits != first.WarmHits+1 || second.ColdStarts != first.ColdStarts:
		t.Errorf("rebuild after a source change: warm hits %d → %d, cold starts %d → %d; want one more warm hit and no cold start",
			first.WarmHits, second.WarmHits, first.ColdStarts, second.ColdStarts)
	}

	// 3. The tool changes under the same client key and command line.
	// Bytes appended to an ELF file leave it runnable.
	toolPath := filepath.Join(b.workspace, "tools", "testworker")
	appendToFile(t, toolPath, "\nhearth e2e: tool version 2\n")
	newToolSum := fileSHA256(t, toolPath)
	spawns = buildRemotely(t, b, "rebuild after a tool change", remote)
	checkWorkerSpawns(t, "rebuild after a tool change", spawns, workerUnits)
	checkUnitContents(t, "rebuild after a tool change", bin, want)
	st = waitWorkerStatus(t, p, "the new tool's acquisitions", func(s workerStatus) bool {
		k, ok := s.keyOtherThan(workerClientKey, first.Key)
		return ok && k.WarmHits+k.ColdStarts >= workerUnits
	})
	third, ok := st.keyOtherThan(workerClientKey, first.Key)
	if !ok {
		t.Fatalf("after the tool change, /status shows no pool key for client key %s but the old one, %s: the changed tool was served by the old workers\n%s", workerClientKey, first.Key, st.raw)
	}
	t.Logf("after the tool change: %+v", third)
	if third.ColdStarts < 1 || third.ColdStarts > int64(maxInflight) {
		t.Errorf("new tool's key %s: %d cold starts, want 1 to %d", third.Key, third.ColdStarts, maxInflight)
	}
	if third.WarmHits < workerUnits/2 {
		t.Errorf("new tool's key %s: %d warm hits, want at least %d", third.Key, third.WarmHits, workerUnits/2)
	}
	if len(third.Fallbacks) > 0 {
		t.Errorf("new tool's key %s: fallbacks %v, want none", third.Key, third.Fallbacks)
	}
	if old, ok := st.key(first.Key); ok && old.WarmHits+old.ColdStarts > second.WarmHits+second.ColdStarts {
		t.Errorf("the old tool's key %s served %d more actions after the tool changed", first.Key, old.WarmHits+old.ColdStarts-second.WarmHits-second.ColdStarts)
	}
	if n := st.executor(t).PersistentWorkers.Total.Recycles["tool_change"]; n < 1 {
		t.Errorf("no worker was recycled for a tool change (recycles %v); the old tool's processes are still alive", st.executor(t).PersistentWorkers.Total.Recycles)
	}
	workers := persistentWorkerProcesses(t, p.cmd.Process.Pid)
	if len(workers) == 0 {
		t.Errorf("no live persistent worker process under hearth (pid %d) after the build", p.cmd.Process.Pid)
	}
	t.Logf("live persistent worker processes after the tool change (pid → sha256 of its executable): %v; the new tool's is %s", workers, newToolSum)
	for pid, sum := range workers {
		if sum != newToolSum {
			t.Errorf("worker process %d runs an executable with sha256 %.12s, want the new tool's %.12s", pid, sum, newToolSum)
		}
	}
}

// unitSource and unitOutput name unit i's source (workspace-relative) and
// output (relative to bazel-bin).
func unitSource(i int) string { return fmt.Sprintf("src/unit%02d.args", i) }
func unitOutput(i int) string { return fmt.Sprintf("unit%02d.out", i) }

// unitContent is unit i's output when its source is at version v; see
// testdata/bazel/workers/BUILD for the greetings.
func unitContent(i, v int) string {
	greeting := "bonjour"
	if i%2 == 1 {
		greeting = "hello"
	}
	return fmt.Sprintf("%s from unit%02d: source %02d, version %d", greeting, i, i, v)
}

// buildRemotely runs a build with remote and returns the spawns of its
// execution log, failing the test on any remote warning.
func buildRemotely(t *testing.T, b *bazelRunner, what string, remote []string) []spawnRecord {
	t.Helper()
	execLog := filepath.Join(b.root, fmt.Sprintf("build-%02d.exec.json", b.runs+1))
	out := b.run("build", append([]string{"--execution_log_json_file=" + execLog}, remote...)...)
	for _, p := range remoteProblems(out) {
		t.Errorf("%s: %s", what, p)
	}
	spawns, err := readExecutionLog(execLog)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return spawns
}

// checkWorkerSpawns fails the test unless spawns are exactly n WorkerCompile
// actions, each executed remotely (not a cache hit) and successful.
func checkWorkerSpawns(t *testing.T, what string, spawns []spawnRecord, n int) {
	t.Helper()
	if len(spawns) != n {
		t.Errorf("%s: %d spawns ran, want %d:\n%s", what, len(spawns), n, spawnList(spawns))
	}
	for _, s := range spawns {
		if s.Mnemonic != "WorkerCompile" || s.Runner != "remote" || s.RemoteCacheHit || s.Status != "" || s.ExitCode != 0 {
			t.Errorf("%s: want a successful remotely executed WorkerCompile, got %s (status %q, exit code %d)", what, s, s.Status, s.ExitCode)
		}
	}
}

func spawnList(spawns []spawnRecord) string {
	lines := make([]string, len(spawns))
	for i, s := range spawns {
		lines[i] = "  " + s.String()
	}
	return strings.Join(lines, "\n")
}

// unitOutputs snapshots the worker_compile outputs under bin. The rest of
// bazel-bin differs by strategy for reasons that are Bazel's own: a local
// spawn materializes its param file there, a remote one sends it as a
// virtual input.
func unitOutputs(t *testing.T, bin string) outputSnapshot {
	t.Helper()
	snap := snapshotOutputs(t, bin)
	for path := range snap {
		if !strings.HasSuffix(path, ".out") {
			delete(snap, path)
		}
	}
	if len(snap) != workerUnits {
		t.Errorf("bazel-bin holds %d unit outputs, want %d", len(snap), workerUnits)
	}
	return snap
}

// checkUnitContents fails the test unless every output in want has exactly
// that content.
func checkUnitContents(t *testing.T, what, bin string, want map[string]string) {
	t.Helper()
	for _, name := range sortedKeys(want) {
		got, err := os.ReadFile(filepath.Join(bin, name))
		if err != nil {
			t.Errorf("%s: %v", what, err)
		} else if string(got) != want[name] {
			t.Errorf("%s: %s holds %q, want %q", what, name, got, want[name])
		}
	}
}

// buildScriptedWorker builds internal/workerproto/testworker into dir and
// returns its path. It is built static (no cgo) so that it runs wherever the
// executor stages it.
func buildScriptedWorker(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "testworker")
	build := exec.Command("go", "build", "-o", path, "github.com/hearth-build/hearth/internal/workerproto/testworker")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the test worker: %v\n%s", err, out)
	}
	return path
}

func writeWorkspaceFile(t *testing.T, b *bazelRunner, name, content string) {
	t.Helper()
	path := filepath.Join(b.workspace, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func appendToFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("hashing %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// persistentWorkerProcesses maps each live persistent worker process below
// pid (its descendants whose command line ends with --persistent_worker) to
// the sha256 of the executable it runs, read through /proc/PID/exe, which
// still names the file the process was started from even when its path has
// been replaced since.
func persistentWorkerProcesses(t *testing.T, pid int) map[int]string {
	t.Helper()
	parents := map[int]int{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name, in parentheses, may contain blanks: the
		// fields after it are state, then ppid.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 {
			parents[child], _ = strconv.Atoi(fields[1])
		}
	}
	below := func(p int) bool {
		for p > 1 {
			if p = parents[p]; p == pid {
				return true
			}
		}
		return false
	}
	workers := map[int]string{}
	for child := range parents {
		if !below(child) {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child))
		args := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
		if err != nil || args[len(args)-1] != "--persistent_worker" || filepath.Base(args[0]) == "bwrap" {
			continue
		}
		workers[child] = fileSHA256(t, fmt.Sprintf("/proc/%d/exe", child))
	}
	return workers
}

// workerStatus is the part of hearth's /status the persistent worker tests
// read.
type workerStatus struct {
	Executors []workerStatusExecutor `json:"executors"`
	raw       string
}

// workerStatusExecutor is one executor in /status.
type workerStatusExecutor struct {
	Name              string            `json:"name"`
	MaxInflight       int               `json:"max_inflight"`
	PersistentWorkers *workerPoolStatus `json:"persistent_workers"`
}

// workerPoolStatus is an executor's persistent worker report.
type workerPoolStatus struct {
	Total workerKeyStatus   `json:"total"`
	Keys  []workerKeyStatus `json:"keys"`
}

// workerKeyStatus is one pool key (or the executor's total) in /status.
type workerKeyStatus struct {
	Key              string           `json:"key"`
	ClientKey        string           `json:"client_key"`
	WarmHits         int64            `json:"warm_hits"`
	ColdStarts       int64            `json:"cold_starts"`
	Prewarmed        int64            `json:"prewarmed"`
	Idle             int              `json:"idle"`
	Busy             int              `json:"busy"`
	Recycles         map[string]int64 `json:"recycles"`
	Fallbacks        map[string]int64 `json:"fallbacks"`
	Verified         int64            `json:"verified"`
	VerifyMismatches int64            `json:"verify_mismatches"`
}

func (k workerKeyStatus) fallbackCount() int64 {
	var n int64
	for _, c := range k.Fallbacks {
		n += c
	}
	return n
}

// fetchWorkerStatus reads hearth's /status.
func fetchWorkerStatus(p *hearthProcess) (workerStatus, error) {
	var st workerStatus
	resp, err := http.Get("http://" + p.HTTPAddr + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /status: %s: %s", resp.Status, body)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("GET /status: %w\n%s", err, body)
	}
	st.raw = string(body)
	return st, nil
}

// workerStatusWait bounds waitWorkerStatus: an executor reports its workers
// with each heartbeat, every 5 seconds.
const workerStatusWait = 20 * time.Second

// waitWorkerStatus polls /status until ready holds, and returns the last
// status read, ready or not (the caller's checks then say what is wrong).
func waitWorkerStatus(t *testing.T, p *hearthProcess, what string, ready func(workerStatus) bool) workerStatus {
	t.Helper()
	deadline := time.Now().Add(workerStatusWait)
	for {
		st, err := fetchWorkerStatus(p)
		if err != nil {
			t.Fatal(err)
		}
		if ready(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Errorf("/status did not show %s within %v:\n%s", what, workerStatusWait, st.raw)
			return st
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// executor returns the one executor that reports persistent workers (`hearth
// serve` embeds one).
func (s workerStatus) executor(t *testing.T) workerStatusExecutor {
	t.Helper()
	var found []workerStatusExecutor
	for _, e := range s.Executors {
		if e.PersistentWorkers != nil {
			found = append(found, e)
		}
	}
	if len(found) != 1 {
		t.Fatalf("/status lists %d executors with persistent workers, want 1:\n%s", len(found), s.raw)
	}
	return found[0]
}

// keysOf returns every pool key served for clientKey, on any executor.
func (s workerStatus) keysOf(clientKey string) []workerKeyStatus {
	var keys []workerKeyStatus
	for _, e := range s.Executors {
		if e.PersistentWorkers == nil {
			continue
		}
		for _, k := range e.PersistentWorkers.Keys {
			if k.ClientKey == clientKey {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// clientAcquisitions is the number of worker acquisitions and fallbacks
// recorded for clientKey.
func (s workerStatus) clientAcquisitions(clientKey string) int64 {
	var n int64
	for _, k := range s.keysOf(clientKey) {
		n += k.WarmHits + k.ColdStarts + k.fallbackCount()
	}
	return n
}

// onlyKey returns the single pool key of clientKey, failing the test if
// there are several or none.
func (s workerStatus) onlyKey(t *testing.T, clientKey string) workerKeyStatus {
	t.Helper()
	keys := s.keysOf(clientKey)
	if len(keys) != 1 {
		t.Fatalf("/status lists %d pool keys for client key %q, want 1:\n%s", len(keys), clientKey, s.raw)
	}
	return keys[0]
}

// key returns the pool key named key.
func (s workerStatus) key(key string) (workerKeyStatus, bool) {
	for _, e := range s.Executors {
		if e.PersistentWorkers == nil {
			continue
		}
		if i := slices.IndexFunc(e.PersistentWorkers.Keys, func(k workerKeyStatus) bool { return k.Key == key }); i >= 0 {
			return e.PersistentWorkers.Keys[i], true
		}
	}
	return workerKeyStatus{}, false
}

// keyOtherThan returns the pool key of clientKey that is not old.
func (s workerStatus) keyOtherThan(clientKey, old string) (workerKeyStatus, bool) {
	for _, k := range s.keysOf(clientKey) {
		if k.Key != old {
			return k, true
		}
	}
	return workerKeyStatus{}, false
}
