package executor_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/executor"
)

// parseLocal reads a local worker section as a config file holds it.
func parseLocal(t *testing.T, body string) *config.LocalWorker {
	t.Helper()
	w, _, err := config.ParseLocalWorker([]byte("{" + body + "}"))
	if err != nil {
		t.Fatalf("parsing %s: %v", body, err)
	}
	if w.WorkDirectory == "" {
		w.WorkDirectory = t.TempDir()
	}
	w.ApplyDefaults(config.DetectMachine())
	return w
}

// Settings that cannot be honoured together are refused at start, naming
// both fields; none is dropped silently.
func TestImpossibleCombinationsAreRejected(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string // "" entries: accepted
	}{
		{"runner_command + entrypoint", `runner_command: ["hearth", "run"], entrypoint: "/usr/bin/env"`, []string{"runner_command", "entrypoint"}},
		{"runner_command + additional_environment", `runner_command: ["hearth", "run"], additional_environment: {A: {value: "1"}}`, []string{"runner_command", "additional_environment"}},
		{"runner_command + sandbox", `runner_command: ["hearth", "run"], sandbox: "bwrap"`, []string{"runner_command", "sandbox"}},
		{"runner_command + timeout_handled_externally", `runner_command: ["hearth", "run"], timeout_handled_externally: true`, []string{"runner_command", "timeout_handled_externally"}},
		{"side_channel_file + persistent_workers", `additional_environment: {SC: "side_channel_file"}`, []string{"additional_environment.SC", "side_channel_file", "persistent_workers"}},
		{"action_directory + persistent_workers", `additional_environment: {A: "timeout_millis", D: "action_directory"}`, []string{"additional_environment.D", "action_directory", "persistent_workers"}},
		{"side_channel_file without persistent workers", `additional_environment: {SC: "side_channel_file"}, persistent_workers: {enabled: false}`, nil},
		{"runner_command + persistent_workers", `runner_command: ["hearth", "run"]`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == nil {
				startConfigured(t, tc.body+",", configuredOptions{}) // fails the test if rejected
				return
			}
			_, err := executor.FromConfig(context.Background(), parseLocal(t, tc.body), executor.Deps{})
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("FromConfig = %v, want config.ErrInvalid", err)
			}
			for _, field := range tc.want {
				if !strings.Contains(err.Error(), field) {
					t.Errorf("error %q does not name %s", err, field)
				}
			}
		})
	}
}

// entrypoint wraps a persistent worker's startup command, and
// additional_environment joins its environment and its pool key, as they do
// for one-shot actions.
func TestEntrypointAndAdditionalEnvironmentReachPersistentWorkers(t *testing.T) {
	t.Setenv("HEARTH_COMBINATION_TEST", "from-host")
	c := startConfigured(t, `
		entrypoint: "/usr/bin/env WRAPPED=yes",
		additional_environment: {
			STATIC: {value: "fixed"},
			HOST: {from_environment: "HEARTH_COMBINATION_TEST"},
			FLAVOR: {property: "flavor"},
			TIMEOUT: "timeout_millis",
		},
		max_action_timeout: "10m",
		platform_properties: {flavor: {values: ["a", "b", "c"]}},`, configuredOptions{})
	request := []string{"--getenv=WRAPPED", "--getenv=STATIC", "--getenv=HOST", "--getenv=FLAVOR", "--getenv=TIMEOUT", "--counter"}
	keys := map[string]string{}
	for _, flavor := range []string{"a", "a", "b"} {
		resp := c.run(c.workerAction(testWorkerBinary, "kc", request, nil, "flavor", flavor))
		info := workerInfo(t, resp.GetResult())
		if info.GetFellBack() {
			t.Fatalf("flavor %s: fell back: %+v", flavor, info)
		}
		n := "1"
		if prev, ok := keys[flavor]; ok {
			n = "2"
			if prev != info.GetPoolKey() || !info.GetWarm() {
				t.Fatalf("flavor %s: not served by the same warm worker: %+v", flavor, info)
			}
		}
		keys[flavor] = info.GetPoolKey()
		want := "WRAPPED=yes\nSTATIC=fixed\nHOST=from-host\nFLAVOR=" + flavor + "\nTIMEOUT=600000\n" + n + "\n"
		if got := c.read(resp.GetResult().GetStderrDigest()); got != want {
			t.Fatalf("flavor %s: worker saw\n%s\nwant\n%s", flavor, got, want)
		}
	}
	if keys["a"] == keys["b"] {
		t.Fatal("workers with different additional environments share a pool key")
	}
	// One-shot actions get the same entrypoint and environment.
	cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", "echo $WRAPPED $STATIC $HOST $FLAVOR $TIMEOUT"}}
	resp := c.run(c.action(cmd, nil, func(a *repb.Action) {
		a.Platform = &repb.Platform{Properties: []*repb.Platform_Property{{Name: "flavor", Value: "c"}}}
	}))
	if got := c.read(resp.GetResult().GetStdoutDigest()); got != "yes fixed from-host c 600000\n" {
		t.Fatalf("one-shot stdout %q", got)
	}
}

// sandbox confines one-shot actions while persistent workers keep serving
// the actions that opt in (their own isolation is persistent_workers.sandbox).
func TestSandboxWithPersistentWorkers(t *testing.T) {
	c := startConfigured(t, `sandbox: "bwrap",`, configuredOptions{})
	for i := 1; i <= 2; i++ {
		resp := c.run(c.workerAction(testWorkerBinary, "ksb", []string{"--counter"}, nil))
		if info := workerInfo(t, resp.GetResult()); info.GetFellBack() || int(info.GetInvocation()) != i {
			t.Fatalf("run %d: %+v", i, info)
		}
	}
	outside := filepath.Join(t.TempDir(), "escaped")
	cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", "echo x > " + outside + " || echo confined"}}
	resp := c.run(c.action(cmd, nil))
	if got := c.read(resp.GetResult().GetStdoutDigest()); got != "confined\n" {
		t.Fatalf("one-shot action under bwrap printed %q", got)
	}
}

// With timeout_handled_externally the entrypoint bounds one-shot actions,
// but it wraps a worker process, not a request: Hearth still ends a worker
// request at the action's timeout.
func TestTimeoutHandledExternallyWithPersistentWorkers(t *testing.T) {
	c := startConfigured(t, `timeout_handled_externally: true,`, configuredOptions{})
	ad := c.workerAction(testWorkerBinary, "kto", []string{"--sleep=20s"}, nil)
	var action repb.Action
	if err := cas.GetProto(context.Background(), c.store, mustDigest(t, ad), &action, "Action"); err != nil {
		t.Fatal(err)
	}
	action.Timeout = durationpb.New(300 * time.Millisecond)
	start := time.Now()
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: c.putProto(&action), SkipCacheLookup: true})
	if err != nil {
		t.Fatal(err)
	}
	if codes.Code(resp.GetStatus().GetCode()) != codes.DeadlineExceeded || time.Since(start) > 10*time.Second {
		t.Fatalf("status %v after %s", resp.GetStatus(), time.Since(start))
	}
	if info := workerInfo(t, resp.GetResult()); info.GetFellBack() {
		t.Fatalf("fell back: %+v", info)
	}
}

func mustDigest(t *testing.T, d *repb.Digest) digest.Digest {
	t.Helper()
	dg, err := digest.FromProto(digest.SHA256, d)
	if err != nil {
		t.Fatal(err)
	}
	return dg
}
