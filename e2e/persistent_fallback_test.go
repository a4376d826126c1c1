package e2e

import (
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/hearth-build/hearth/internal/metadatapb"
)

// TestPersistentWorkerStatusAndFallback sends worker actions through a plain
// REAPI client, with both wire protocols: a well-behaved tool is served by
// one warm process (the same pid, the invocation count rising, warm in the
// result's metadata and in /status); a tool that writes garbage on the
// protocol pipe still yields the correct outputs, run one-shot, with the
// fallback reported in the result's metadata and in /status.
func TestPersistentWorkerStatusAndFallback(t *testing.T) {
	tool := buildScriptedWorker(t, t.TempDir())
	toolData, err := os.ReadFile(tool)
	if err != nil {
		t.Fatal(err)
	}
	p := startServe(t, t.TempDir(), "--max-inflight=2")
	c := dial(t, p.GRPCAddr)
	c.uploadLarge(t, newTestBlob(toolData))

	cases := []workerCase{
		{name: "proto", clientKey: "e2e-proto"},
		{name: "json", protocol: "json", clientKey: "e2e-json", commandPlatform: true},
		{name: "proto garbage", clientKey: "e2e-proto-garbage", garbage: true},
		{name: "json garbage", protocol: "json", clientKey: "e2e-json-garbage", garbage: true, commandPlatform: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runWorkerCase(t, c, toolData, tc)
		})
	}

	// The executor reports its workers with its heartbeat, so /status is
	// read once, after every case ran.
	perAction := func(garbage bool, k workerKeyStatus) int64 {
		if garbage {
			return k.fallbackCount() // a fallback per action
		}
		return k.WarmHits + k.ColdStarts // an acquisition per action
	}
	st := waitWorkerStatus(t, p, "every case's actions", func(s workerStatus) bool {
		for _, tc := range cases {
			var n int64
			for _, k := range s.keysOf(tc.clientKey) {
				n += perAction(tc.garbage, k)
			}
			if n < workerCaseRuns {
				return false
			}
		}
		return true
	})
	for _, tc := range cases {
		k := st.onlyKey(t, tc.clientKey)
		t.Logf("/status for %s: %+v", tc.clientKey, k)
		if tc.garbage {
			// Each run started a process, which broke the protocol, was
			// discarded, and the action ran one-shot.
			if k.Fallbacks["worker_failed"] != workerCaseRuns || k.fallbackCount() != workerCaseRuns || k.WarmHits != 0 || k.Recycles["failure"] != workerCaseRuns {
				t.Errorf("key %s (%s): fallbacks %v, %d warm hits, recycles %v; want %d worker_failed fallbacks, no warm hit, %d failure recycles",
					k.Key, tc.clientKey, k.Fallbacks, k.WarmHits, k.Recycles, workerCaseRuns, workerCaseRuns)
			}
			continue
		}
		if k.ColdStarts != 1 || k.WarmHits != workerCaseRuns-1 || len(k.Fallbacks) > 0 || k.Idle != 1 {
			t.Errorf("key %s (%s): %d cold starts, %d warm hits, fallbacks %v, %d idle; want 1, %d, none, 1",
				k.Key, tc.clientKey, k.ColdStarts, k.WarmHits, k.Fallbacks, k.Idle, workerCaseRuns-1)
		}
	}
}

// workerCase is one worker key of TestPersistentWorkerStatusAndFallback.
type workerCase struct {
	name      string
	protocol  string // "" sends no protocol property: proto is the default
	clientKey string
	garbage   bool // the worker writes non-protocol bytes on every request
	// commandPlatform: the platform is in the Command (pre-v2.2 clients),
	// else in the Action.
	commandPlatform bool
}

// workerCaseRuns is how many actions each case of
// TestPersistentWorkerStatusAndFallback sends.
const workerCaseRuns = 3

// runWorkerCase sends workerCaseRuns actions of one worker key, each writing
// a different content and the pid of the process that ran it, and checks
// their outputs and worker metadata: a working tool is served by one warm
// process, a garbage-writing one falls back to one-shot runs.
func runWorkerCase(t *testing.T, c *reapiClient, toolData []byte, tc workerCase) {
	t.Helper()
	protocol, clientKey, garbage := tc.protocol, tc.clientKey, tc.garbage
	startup := []string{"tools/testworker"}
	props := map[string]string{"persistentWorkerKey": clientKey}
	if protocol != "" {
		startup = append(startup, "--protocol="+protocol)
		props["persistentWorkerProtocol"] = protocol
	}
	pids := map[string]bool{}
	for run := 1; run <= workerCaseRuns; run++ {
		content := fmt.Sprintf("%s, run %d", clientKey, run)
		request := []string{"--out=out/result.txt", "--content=" + content, "--pid=out/pid.txt"}
		if garbage {
			request = append(request, "--garbage")
		}
		a := workerAction{
			args:    append(slices.Clone(startup), "@args/request.txt"),
			outputs: []string{"out/pid.txt", "out/result.txt"}, // sorted, as REAPI requires
			files: map[string]workerInputFile{
				"tools/testworker": {data: toolData, executable: true},
				"args/request.txt": {data: []byte(strings.Join(request, "\n") + "\n")},
			},
			platform:        props,
			commandPlatform: tc.commandPlatform,
		}.build(t)
		c.upload(t, a, newTestBlob(toolData))
		resp, err := c.execute(t.Context(), a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("run %d: status %v, exit code %d, stderr %q", run, st, resp.GetResult().GetExitCode(), c.stderrOf(t, resp))
		}
		outs := c.outputFiles(t, resp.GetResult())
		if got := outs["out/result.txt"]; got != content {
			t.Errorf("run %d: out/result.txt holds %q, want %q", run, got, content)
		}
		pids[outs["out/pid.txt"]] = true

		info := workerInfoOf(t, resp)
		if info.GetClientKey() != clientKey || info.GetPoolKey() == "" {
			t.Errorf("run %d: worker metadata names client key %q and pool key %q, want %q and a pool key", run, info.GetClientKey(), info.GetPoolKey(), clientKey)
		}
		switch {
		case garbage && (!info.GetFellBack() || info.GetFallbackReason() == ""):
			t.Errorf("run %d: worker metadata %v, want a fallback with its reason", run, info)
		case !garbage && (info.GetFellBack() || info.GetWarm() != (run > 1) || info.GetInvocation() != int32(run)):
			t.Errorf("run %d: worker metadata %v, want no fallback, warm=%v, invocation %d", run, info, run > 1, run)
		}
	}
	// A warm worker writes its own pid every time; each one-shot fallback
	// is a process of its own.
	if want := map[bool]int{false: 1, true: workerCaseRuns}[garbage]; len(pids) != want {
		t.Errorf("the %d runs wrote %d distinct pids %v, want %d", workerCaseRuns, len(pids), pids, want)
	}
}

// workerAction is an action whose input files may be executable (which
// actionSpec cannot say) and which carries platform properties.
type workerAction struct {
	args     []string
	outputs  []string
	files    map[string]workerInputFile // slash-separated path → file
	platform map[string]string
	// commandPlatform puts the platform in the Command only, as clients of
	// REAPI before v2.2 do (Bazel 4 among them); else in the Action only.
	commandPlatform bool
}

type workerInputFile struct {
	data       []byte
	executable bool
}

// build serializes a.
func (a workerAction) build(t *testing.T) builtAction {
	t.Helper()
	platform := &repb.Platform{}
	for _, name := range sortedKeys(a.platform) {
		platform.Properties = append(platform.Properties, &repb.Platform_Property{Name: name, Value: a.platform[name]})
	}
	b := builtAction{files: map[string]testBlob{}}
	command := &repb.Command{Arguments: a.args, OutputPaths: a.outputs}
	action := &repb.Action{}
	if a.commandPlatform {
		//lint:ignore SA1019 what pre-v2.2 clients send, which Hearth must read
		command.Platform = platform
	} else {
		action.Platform = platform
	}
	cmd := marshalBlob(t, command)
	root := a.directory(t, &b, "")
	action.CommandDigest, action.InputRootDigest = cmd.digest, root.digest
	b.action = marshalBlob(t, action)
	b.blobs = append(b.blobs, cmd, b.action)
	return b
}

// directory builds the Directory at dir ("" for the root) from the files
// below it, adding every blob to b.
func (a workerAction) directory(t *testing.T, b *builtAction, dir string) testBlob {
	t.Helper()
	msg := &repb.Directory{}
	subdirs := map[string]bool{}
	for _, p := range sortedKeys(a.files) {
		rel := p
		if dir != "" {
			var ok bool
			if rel, ok = strings.CutPrefix(p, dir+"/"); !ok {
				continue
			}
		}
		if name, _, deeper := strings.Cut(rel, "/"); deeper {
			subdirs[name] = true
			continue
		}
		f := a.files[p]
		blob := newTestBlob(f.data)
		b.files[p] = blob
		b.blobs = append(b.blobs, blob)
		msg.Files = append(msg.Files, &repb.FileNode{Name: rel, Digest: blob.digest, IsExecutable: f.executable})
	}
	for _, name := range sortedKeys(subdirs) {
		sub := a.directory(t, b, path.Join(dir, name))
		msg.Directories = append(msg.Directories, &repb.DirectoryNode{Name: name, Digest: sub.digest})
	}
	blob := marshalBlob(t, msg)
	b.blobs = append(b.blobs, blob)
	return blob
}

// uploadLarge uploads one blob too big for a batch through ByteStream.
func (c *reapiClient) uploadLarge(t *testing.T, blob testBlob) {
	t.Helper()
	if err := c.byteStreamWrite(t.Context(), blob, 1<<20); err != nil {
		t.Fatalf("uploading %s: %v", blob, err)
	}
}

// outputFiles reads every output file of result: path → content.
func (c *reapiClient) outputFiles(t *testing.T, result *repb.ActionResult) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range result.GetOutputFiles() {
		data, err := c.byteStreamRead(t.Context(), f.GetDigest())
		if err != nil {
			t.Fatalf("reading output %s: %v", f.GetPath(), err)
		}
		out[f.GetPath()] = string(data)
	}
	return out
}

// stderrOf reads the action's stderr, or says why it cannot.
func (c *reapiClient) stderrOf(t *testing.T, resp *repb.ExecuteResponse) string {
	t.Helper()
	d := resp.GetResult().GetStderrDigest()
	if d == nil {
		return "(none)"
	}
	data, err := c.byteStreamRead(t.Context(), d)
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	return string(data)
}

// workerInfoOf returns the PersistentWorkerInfo of a result's auxiliary
// metadata, failing the test if there is not exactly one.
func workerInfoOf(t *testing.T, resp *repb.ExecuteResponse) *metadatapb.PersistentWorkerInfo {
	t.Helper()
	var found []*metadatapb.PersistentWorkerInfo
	for _, a := range resp.GetResult().GetExecutionMetadata().GetAuxiliaryMetadata() {
		info := &metadatapb.PersistentWorkerInfo{}
		if a.MessageIs(info) {
			if err := a.UnmarshalTo(info); err != nil {
				t.Fatalf("auxiliary metadata %s: %v", a.GetTypeUrl(), err)
			}
			found = append(found, info)
		}
	}
	if len(found) != 1 {
		t.Fatalf("the result carries %d PersistentWorkerInfo in its auxiliary metadata, want 1: %v", len(found), resp.GetResult().GetExecutionMetadata())
	}
	return found[0]
}
