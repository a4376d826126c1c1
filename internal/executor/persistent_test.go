package executor_test

import (
	"cmp"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/metadatapb"
)

var testWorkerBinary []byte

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hearth-executor-test-")
	if err != nil {
		panic(err)
	}
	bin := filepath.Join(dir, "testworker")
	if out, err := exec.Command("go", "build", "-o", bin, "../workerproto/testworker").CombinedOutput(); err != nil {
		panic("building the test worker: " + err.Error() + "\n" + string(out))
	}
	if testWorkerBinary, err = os.ReadFile(bin); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func workerConfig() *config.PersistentWorkers {
	w := config.NewLocalWorker()
	w.WorkDirectory = "/unused"
	w.MaxInflightTasks = 4
	w.ApplyDefaults(config.DetectMachine())
	return &w.PersistentWorkers
}

// workerAction is a Bazel-style worker action: the tool is an input marked
// bazel_tool_input, the request arguments are in a flag file.
func (c *cluster) workerAction(tool []byte, key string, requestArgs []string, outputs []string, extraProps ...string) *repb.Digest {
	c.t.Helper()
	return c.workerActionWith(tool, key, nil, requestArgs, outputs, extraProps...)
}

func (c *cluster) workerActionWith(tool []byte, key string, startupExtra, requestArgs []string, outputs []string, extraProps ...string) *repb.Digest {
	c.t.Helper()
	flags := strings.Join(requestArgs, "\n") + "\n"
	root := &repb.Directory{
		Files: []*repb.FileNode{{Name: "args.txt", Digest: c.put([]byte(flags))}},
		Directories: []*repb.DirectoryNode{{Name: "tools", Digest: c.putProto(&repb.Directory{Files: []*repb.FileNode{{
			Name: "testworker", Digest: c.put(tool), IsExecutable: true,
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: inputtree.ToolInputProperty}}},
		}}})}},
	}
	props := []*repb.Platform_Property{{Name: "persistentWorkerKey", Value: key}}
	for i := 0; i < len(extraProps); i += 2 {
		props = append(props, &repb.Platform_Property{Name: extraProps[i], Value: extraProps[i+1]})
	}
	// REAPI: sorted by name, then value (the server refuses other orders).
	slices.SortFunc(props, func(a, b *repb.Platform_Property) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Value, b.Value))
	})
	cmd := &repb.Command{
		Arguments:   append(append([]string{"tools/testworker"}, startupExtra...), "@args.txt"),
		OutputPaths: outputs,
		Platform:    &repb.Platform{Properties: props},
	}
	return c.action(cmd, root, func(a *repb.Action) { a.Platform = cmd.Platform })
}

func workerInfo(t *testing.T, r *repb.ActionResult) *metadatapb.PersistentWorkerInfo {
	t.Helper()
	for _, a := range r.GetExecutionMetadata().GetAuxiliaryMetadata() {
		info := &metadatapb.PersistentWorkerInfo{}
		if a.MessageIs(info) {
			if err := a.UnmarshalTo(info); err != nil {
				t.Fatal(err)
			}
			return info
		}
	}
	t.Fatal("no PersistentWorkerInfo in auxiliary_metadata")
	return nil
}

func (c *cluster) run(ad *repb.Digest) *repb.ExecuteResponse {
	c.t.Helper()
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad, SkipCacheLookup: true})
	if err != nil {
		c.t.Fatal(err)
	}
	if resp.GetStatus().GetCode() != 0 {
		c.t.Fatalf("status %v", resp.GetStatus())
	}
	return resp
}

func outputFile(c *cluster, r *repb.ActionResult, path string) string {
	c.t.Helper()
	for _, f := range r.GetOutputFiles() {
		if f.GetPath() == path {
			return c.read(f.GetDigest())
		}
	}
	c.t.Fatalf("no output %s in %v", path, r.GetOutputFiles())
	return ""
}

func TestPersistentWorkerWarmReuse(t *testing.T) {
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: workerConfig()})
	first := c.run(c.workerAction(testWorkerBinary, "k1", []string{"--out=out/a.txt", "--content=one", "--say=hello", "--counter"}, []string{"out/a.txt"}))
	info := workerInfo(t, first.GetResult())
	if info.GetWarm() || info.GetFellBack() || info.GetInvocation() != 1 {
		t.Fatalf("first action: %+v", info)
	}
	if got := outputFile(c, first.GetResult(), "out/a.txt"); got != "one" {
		t.Fatalf("output = %q", got)
	}
	if got := c.read(first.GetResult().GetStderrDigest()); got != "hello\n1\n" {
		t.Fatalf("stderr (WorkResponse.output) = %q", got)
	}
	// The second action leaves a stray file; the third must not see it.
	second := c.run(c.workerAction(testWorkerBinary, "k1", []string{"--out=stray.txt", "--content=x", "--counter"}, nil))
	info = workerInfo(t, second.GetResult())
	if !info.GetWarm() || info.GetInvocation() != 2 || c.read(second.GetResult().GetStderrDigest()) != "2\n" {
		t.Fatalf("second action was not warm: %+v stderr %q", info, c.read(second.GetResult().GetStderrDigest()))
	}
	third := c.run(c.workerAction(testWorkerBinary, "k1", []string{"--cat=stray.txt"}, nil))
	if third.GetResult().GetExitCode() == 0 {
		t.Fatal("a file of the previous action was visible to the next")
	}
	if !workerInfo(t, third.GetResult()).GetWarm() {
		t.Fatal("third action not warm")
	}
	if keys := c.builder.Workers.WarmClientKeys(); len(keys) != 1 || keys[0] != "k1" {
		t.Fatalf("warm keys = %v", keys)
	}
	// A changed tool under the same client key never reaches the old process.
	changed := append(append([]byte(nil), testWorkerBinary...), []byte("\x00changed")...)
	fourth := c.run(c.workerAction(changed, "k1", []string{"--counter"}, nil))
	if info := workerInfo(t, fourth.GetResult()); info.GetWarm() || info.GetPoolKey() == workerInfo(t, first.GetResult()).GetPoolKey() {
		t.Fatalf("changed tool served warm: %+v", info)
	}
	status, _ := json.Marshal(c.builder.Workers.Status())
	if !strings.Contains(string(status), `"warm_hits":2`) {
		t.Fatalf("status does not count the warm hits: %s", status)
	}
}

func TestPersistentWorkerFailureFallsBackToOneShot(t *testing.T) {
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: workerConfig()})
	// --garbage breaks the protocol in a worker but is harmless one-shot.
	resp := c.run(c.workerAction(testWorkerBinary, "k2", []string{"--garbage", "--out=o.txt", "--content=fine"}, []string{"o.txt"}))
	info := workerInfo(t, resp.GetResult())
	if !info.GetFellBack() || !strings.Contains(info.GetFallbackReason(), "worker_failed") {
		t.Fatalf("info = %+v", info)
	}
	if got := outputFile(c, resp.GetResult(), "o.txt"); got != "fine" {
		t.Fatalf("one-shot fallback output = %q", got)
	}
	// A legitimate non-zero exit code is a result, not a failure.
	resp = c.run(c.workerAction(testWorkerBinary, "k2", []string{"--exit=7", "--say=compile error"}, nil))
	if resp.GetResult().GetExitCode() != 7 || workerInfo(t, resp.GetResult()).GetFellBack() {
		t.Fatalf("exit code %d info %+v", resp.GetResult().GetExitCode(), workerInfo(t, resp.GetResult()))
	}
}

func TestPersistentWorkerJSONProtocol(t *testing.T) {
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: workerConfig()})
	for i := range 2 {
		resp := c.run(c.workerActionWith(testWorkerBinary, "kj", []string{"--protocol=json"}, []string{"--say=json", "--counter"}, nil, "persistentWorkerProtocol", "json"))
		info := workerInfo(t, resp.GetResult())
		if info.GetFellBack() || int(info.GetInvocation()) != i+1 {
			t.Fatalf("run %d: %+v", i, info)
		}
	}
}

func TestVerificationQuarantinesStatefulWorker(t *testing.T) {
	cfg := workerConfig()
	cfg.VerifyFraction = 1
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: cfg})
	args := []string{"--stateful-out=state.txt"}
	first := c.run(c.workerAction(testWorkerBinary, "ks", args, []string{"state.txt"}))
	if info := workerInfo(t, first.GetResult()); !info.GetVerified() || len(info.GetMismatch()) != 0 {
		t.Fatalf("first run (fresh worker) should verify clean: %+v", info)
	}
	second := c.run(c.workerAction(testWorkerBinary, "ks", args, []string{"state.txt"}))
	info := workerInfo(t, second.GetResult())
	if len(info.GetMismatch()) != 1 || info.GetMismatch()[0] != "state.txt" {
		t.Fatalf("stateful worker not caught: %+v", info)
	}
	// The client gets the one-shot (reference) output.
	if got := outputFile(c, second.GetResult(), "state.txt"); got != outputFile(c, first.GetResult(), "state.txt") {
		t.Fatalf("returned the worker's output %q", got)
	}
	third := c.run(c.workerAction(testWorkerBinary, "ks", args, []string{"state.txt"}))
	if info := workerInfo(t, third.GetResult()); !info.GetFellBack() || !strings.Contains(info.GetFallbackReason(), "quarantined") {
		t.Fatalf("quarantined key still served by a worker: %+v", info)
	}
}

func TestPrewarmFromHistory(t *testing.T) {
	history := filepath.Join(t.TempDir(), "prewarm.json")
	cfg := workerConfig()
	cfg.Prewarm = 1
	// The first executor serves a key, and remembers it when it stops. Both
	// executors share one CAS directory only through the history file, so
	// the second must find the tool in its own CAS: it is uploaded again
	// by the action below, as a client would after a restart.
	first := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: cfg, history: history})
	first.run(first.workerAction(testWorkerBinary, "kp", []string{"--say=hi"}, nil))
	first.builder.Workers.Close()
	data, err := os.ReadFile(history)
	if err != nil || !strings.Contains(string(data), `"client_key": "kp"`) {
		t.Fatalf("history not written: %v %s", err, data)
	}

	// A restarted executor whose CAS lacks the tool does not prewarm it.
	cold := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: cfg, history: history})
	if st := cold.builder.Workers.Status(); st.Total.Prewarmed != 0 {
		t.Fatalf("prewarmed without the tool in the CAS: %+v", st.Total)
	}
	cold.builder.Workers.Close()

	// With the tool in its CAS, it starts the worker before any action.
	warm := startClusterWithCAS(t, clusterOptions{maxTimeout: time.Minute, workers: cfg, history: history}, testWorkerBinary)
	if st := warm.builder.Workers.Status(); st.Total.Prewarmed != 1 {
		t.Fatalf("not prewarmed: %+v", st.Total)
	}
	for i := 0; warm.builder.Workers.Status().Total.Idle != 1; i++ {
		if i > 500 {
			t.Fatal("the prewarmed worker never became ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp := warm.run(warm.workerAction(testWorkerBinary, "kp", []string{"--say=hi"}, nil))
	if info := workerInfo(t, resp.GetResult()); info.GetFellBack() {
		t.Fatalf("info %+v", info)
	}
	if st := warm.builder.Workers.Status(); st.Total.ColdStarts != 0 || st.Total.WarmHits != 1 {
		t.Fatalf("the first action after a restart did not find a warm worker: %+v", st.Total)
	}
}

// A multiplex worker that supports sandboxing serves concurrent actions on
// one process, each in its own sandbox_dir, and their outputs do not mix.
func TestMultiplexSandboxedWorker(t *testing.T) {
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: workerConfig()})
	props := []string{"supports-multiplex-workers", "1", "supports-multiplex-sandboxing", "1"}
	// Warm the key up first, so both concurrent actions find the process.
	c.run(c.workerActionWith(testWorkerBinary, "km", []string{"--multiplex"}, []string{"--say=warm"}, nil, props...))
	type result struct {
		resp *repb.ExecuteResponse
		err  error
	}
	results := make(chan result, 2)
	for i := range 2 {
		ad := c.workerActionWith(testWorkerBinary, "km", []string{"--multiplex"},
			[]string{"--sleep=400ms", "--out=out.txt", "--content=action" + strconv.Itoa(i), "--pid=pid.txt"}, []string{"out.txt", "pid.txt"}, props...)
		go func() {
			_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad, SkipCacheLookup: true})
			results <- result{resp, err}
		}()
	}
	pids := map[string]bool{}
	contents := map[string]bool{}
	for range 2 {
		r := <-results
		if r.err != nil || r.resp.GetStatus().GetCode() != 0 {
			t.Fatalf("execute: %v %v", r.err, r.resp.GetStatus())
		}
		info := workerInfo(t, r.resp.GetResult())
		if info.GetFellBack() {
			t.Fatalf("fell back: %+v", info)
		}
		contents[outputFile(c, r.resp.GetResult(), "out.txt")] = true
		pids[outputFile(c, r.resp.GetResult(), "pid.txt")] = true
	}
	if !contents["action0"] || !contents["action1"] {
		t.Fatalf("outputs mixed up: %v", contents)
	}
	if len(pids) != 1 {
		t.Fatalf("concurrent multiplex actions ran on %d processes, want 1", len(pids))
	}
}

// A worker (or action) that writes through a read-only input must not leave
// damaged bytes in the cache: the blob is dropped, so later actions never see
// them, and a persistent worker that does it is quarantined.
func TestWritesThroughInputsNeverReachOtherActions(t *testing.T) {
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: workerConfig()})
	original := []byte("pristine input\n")
	build := func(key string, requestArgs []string, extraArgs ...string) *repb.Digest {
		flags := strings.Join(requestArgs, "\n") + "\n"
		root := &repb.Directory{
			Files: []*repb.FileNode{{Name: "args.txt", Digest: c.put([]byte(flags))}, {Name: "in.txt", Digest: c.put(original)}},
			Directories: []*repb.DirectoryNode{{Name: "tools", Digest: c.putProto(&repb.Directory{Files: []*repb.FileNode{{
				Name: "testworker", Digest: c.put(testWorkerBinary), IsExecutable: true,
				NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: inputtree.ToolInputProperty}}},
			}}})}},
		}
		props := &repb.Platform{Properties: []*repb.Platform_Property{{Name: "persistentWorkerKey", Value: key}}}
		cmd := &repb.Command{Arguments: append([]string{"tools/testworker", "@args.txt"}, extraArgs...), Platform: props}
		return c.action(cmd, root, func(a *repb.Action) { a.Platform = props })
	}
	// The worker truncates and rewrites its input (as root, 0444 does not
	// stop it).
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: build("kt", []string{"--out=in.txt", "--content=evil"}), SkipCacheLookup: true})
	if err != nil {
		t.Fatal(err)
	}
	info := workerInfo(t, resp.GetResult())
	if !info.GetFellBack() || !strings.Contains(info.GetFallbackReason(), "damaged_inputs") {
		t.Fatalf("info = %+v", info)
	}
	// The damaged blob left the CAS (whose file the cache shared), so
	// nobody is served the damaged bytes; the client uploads it again.
	in := digest.Compute(digest.SHA256, original)
	if missing, err := c.store.FindMissing(context.Background(), []digest.Digest{in}); err != nil || len(missing) != 1 {
		t.Fatalf("damaged input still in the CAS (missing=%v, err=%v)", missing, err)
	}
	c.put(original)
	_, resp, err = c.execute(&repb.ExecuteRequest{ActionDigest: build("other", []string{"--cat=in.txt"}), SkipCacheLookup: true})
	if err != nil || resp.GetStatus().GetCode() != 0 {
		t.Fatalf("after re-upload: %v %v", err, resp.GetStatus())
	}
	if got := c.read(resp.GetResult().GetStderrDigest()); got != string(original) {
		t.Fatalf("a later action read %q, want the original", got)
	}
	st := c.builder.Workers.Status()
	quarantined := false
	for _, k := range st.Keys {
		if k.ClientKey == "kt" && strings.Contains(k.Quarantined, "in.txt") {
			quarantined = true
		}
	}
	if !quarantined {
		t.Fatalf("key not quarantined: %+v", st.Keys)
	}
}
