package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNativeLinkStyleExample loads a whole worker-host config laid out as
// NativeLink's example configs are, and checks every field arrived.
func TestNativeLinkStyleExample(t *testing.T) {
	t.Setenv("EXAMPLE_RACK", "r9")
	f, err := Load(filepath.Join("testdata", "nativelink_worker.json5"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"stores: ignored", "servers: ignored", "global: ignored",
		lw + "cas_fast_slow_store: ignored", lw + "upload_action_result.ac_store: ignored",
	} {
		wantWarning(t, f.Warnings, want)
	}
	if len(f.Warnings) != 5 {
		t.Errorf("warnings = %q, want exactly the 5 above", f.Warnings)
	}
	if len(f.Workers) != 1 {
		t.Fatalf("%d workers", len(f.Workers))
	}
	w := f.Workers[0].Local
	wantEqual(t, "Name", w.Name, "builder-r9-")
	wantEqual(t, "Endpoint", w.WorkerAPIEndpoint, Endpoint{URI: "grpc://scheduler.example:50061", Timeout: 2500 * time.Millisecond})
	wantEqual(t, "WorkDirectory", w.WorkDirectory, "/var/cache/hearth-example/work")
	wantEqual(t, "MaxActionTimeout", w.MaxActionTimeout, 30*time.Minute)
	wantEqual(t, "MaxUploadTimeout", w.MaxUploadTimeout, 15*time.Minute)
	wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 6)
	wantEqual(t, "TimeoutHandledExternally", w.TimeoutHandledExternally, false)
	wantEqual(t, "Entrypoint", w.Entrypoint, []string{"/opt/example/wrap.sh", "--mode", "fast path"})
	wantEqual(t, "PreconditionScript", w.PreconditionScript, []string{"/opt/example/ready.sh"})
	wantEqual(t, "AdditionalEnvironment", w.AdditionalEnvironment, map[string]EnvironmentSource{
		"HOME_FROM_WORKER": {Kind: EnvFromEnvironment, Variable: "HOME_FROM_WORKER"},
		"BUILD_FLAVOR":     {Kind: EnvValue, Value: "release"},
		"IMAGE":            {Kind: EnvProperty, Property: "container-image"},
		"TIMEOUT_MS":       {Kind: EnvTimeoutMillis},
		"SIDE_CHANNEL":     {Kind: EnvSideChannelFile},
		"ACTION_DIR":       {Kind: EnvActionDirectory},
	})
	wantEqual(t, "PlatformProperties", w.PlatformProperties, map[string]PlatformProperty{
		"cpu_count":       {Values: []string{"16"}},
		"memory_kb":       {Values: []string{"500000"}},
		"OSFamily":        {Values: []string{"Linux", ""}},
		"container-image": {Values: []string{"docker://example/image:1"}},
		"cpu_arch":        {QueryCmd: []string{"uname", "-m"}},
	})
	u := w.UploadActionResult
	wantEqual(t, "strategy", u.UploadACResultsStrategy, UploadEverything)
	v := TemplateValues{DigestFunction: "sha256", ActionDigestHash: "abcd", ActionDigestSize: 12}
	wantEqual(t, "success message", u.SuccessMessageTemplate.Expand(v), "https://browser.example/sha256/action/abcd-12/")
	wantEqual(t, "failure message", u.FailureMessageTemplate.Expand(v), "Failed: abcd/12 {see logs}")
	wantEqual(t, "DirectoryCache", w.DirectoryCache, &DirectoryCache{
		MaxEntries: 5000, MaxSizeBytes: 20e9, CacheRoot: "/var/cache/hearth-example/directory_cache"})
	pw := w.PersistentWorkers
	wantEqual(t, "PersistentWorkers", pw, PersistentWorkers{
		Enabled: true, MaxWorkersPerPool: 4, IdleTimeout: 30 * time.Minute,
		MemoryLimitBytes: 2 << 30, MaxTotalMemoryBytes: max(DetectMachine().MemoryBytes/2, 2<<30),
		Protocols: []WorkerProtocol{ProtocolProto}, Sandbox: SandboxBwrap, VerifyFraction: 0.01, Prewarm: 1,
	})
	wantEqual(t, "RunnerCommand", w.RunnerCommand, []string{"hearth", "run"})
}

func TestLoadErrors(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.json5"))
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Errorf("missing file: %v, want fs.ErrNotExist and not ErrInvalid", err)
	}
	path := filepath.Join(t.TempDir(), "bad.json5")
	if err := os.WriteFile(path, []byte(`{workers: [{local: {max_inflight_tasks: "x"}}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), path+": ") || !strings.Contains(err.Error(), lw+"max_inflight_tasks") {
		t.Errorf("bad file: %v", err)
	}
}

// TestEmbeddedLocalWorker covers the entry points for configs that embed a
// local worker object, such as hearth serve's.
func TestEmbeddedLocalWorker(t *testing.T) {
	w, warnings, err := ParseLocalWorker([]byte(`{max_inflight_tasks: 2, cas_fast_slow_store: "X", persistent_workers: {prewarm: 1}}`))
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 2)
	wantWarning(t, warnings, "cas_fast_slow_store: ignored")
	// Nothing is required yet: the embedding program fills in the rest.
	if err := w.Validate("executor"); err == nil || !strings.Contains(err.Error(), "executor.worker_api_endpoint: required") ||
		!strings.Contains(err.Error(), "executor.work_directory: required") {
		t.Errorf("Validate before filling in: %v", err)
	}
	w.WorkerAPIEndpoint.URI = "unix:///run/hearth.sock"
	w.WorkDirectory = "/tmp/hearth-serve/work"
	w.ApplyDefaults(Machine{CPUs: 2, MemoryBytes: 8 << 30})
	if err := w.Validate("executor"); err != nil {
		t.Errorf("Validate: %v", err)
	}
	wantEqual(t, "MaxWorkersPerPool", w.PersistentWorkers.MaxWorkersPerPool, 2)

	// Values decoded by the caller without UseNumber arrive as float64.
	decoded := map[string]any{"max_inflight_tasks": float64(5), "directory_cache": map[string]any{"max_size_bytes": float64(1e9)}, "bogus": true}
	_, _, err = DecodeLocalWorker("serve.executor", decoded)
	if err == nil || !strings.Contains(err.Error(), "serve.executor.bogus: unknown field") {
		t.Fatalf("error %v, want the unknown field under the given path", err)
	}
	delete(decoded, "bogus")
	w, _, err = DecodeLocalWorker("serve.executor", decoded)
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 5)
	wantEqual(t, "MaxSizeBytes", w.DirectoryCache.MaxSizeBytes, uint64(1e9))
	_, _, err = DecodeLocalWorker("serve.executor", map[string]any{"max_inflight_tasks": 1.5})
	if err == nil || !strings.Contains(err.Error(), "serve.executor.max_inflight_tasks: want an integer, got 1.5") {
		t.Errorf("fractional: %v", err)
	}
}
