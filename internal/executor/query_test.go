package executor_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/executor"
)

func resolveForTest(t *testing.T, ctx context.Context, w *config.LocalWorker, timeout time.Duration) (map[string][]string, error) {
	t.Helper()
	return executor.ResolvePlatformProperties(ctx, w, t.TempDir(), timeout)
}

func TestResolvePlatformProperties(t *testing.T) {
	t.Setenv("HEARTH_CONFIG_TEST_FROM_ENV", "from-the-worker")
	t.Setenv("HEARTH_CONFIG_TEST_SECRET", "must-not-leak")
	w := &config.LocalWorker{
		PlatformProperties: map[string]config.PlatformProperty{
			"OSFamily": {Values: []string{"Linux"}},
			"empty":    {Values: []string{""}},
			"lines":    {QueryCmd: []string{"sh", "-c", "printf ' a \\n\\n  b\\n'; echo c"}},
			"env":      {QueryCmd: []string{"sh", "-c", `echo "v=$V"; echo "f=$HEARTH_CONFIG_TEST_FROM_ENV"; echo "s=${HEARTH_CONFIG_TEST_SECRET:-unset}"`}},
			"silent":   {QueryCmd: []string{"true"}},
			"stderr":   {QueryCmd: []string{"sh", "-c", "echo warn >&2; echo ok"}},
		},
		AdditionalEnvironment: map[string]config.EnvironmentSource{
			"V":                           {Kind: config.EnvValue, Value: "static"},
			"HEARTH_CONFIG_TEST_FROM_ENV": {Kind: config.EnvFromEnvironment, Variable: "HEARTH_CONFIG_TEST_FROM_ENV"},
			"T":                           {Kind: config.EnvTimeoutMillis},
		},
	}
	got, err := resolveForTest(t, context.Background(), w, executor.QueryCmdTimeout)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{
		"OSFamily": {"Linux"},
		"empty":    {""},
		"lines":    {"a", "b", "c"},
		// Only the static additional_environment reaches query_cmd, as in NativeLink.
		"env":    {"v=static", "f=from-the-worker", "s=unset"},
		"stderr": {"ok"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("properties = %q, want %q", got, want)
	}
}

// TestQueryCmdFoundOnTheWorkersPath: as in NativeLink, a bare command name
// is looked up on the worker's PATH even though the command's environment
// has none.
func TestQueryCmdFoundOnTheWorkersPath(t *testing.T) {
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "hearth-test-probe"), []byte("#!/bin/sh\necho probed\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	w := &config.LocalWorker{PlatformProperties: map[string]config.PlatformProperty{"p": {QueryCmd: []string{"hearth-test-probe"}}}}
	got, err := resolveForTest(t, context.Background(), w, executor.QueryCmdTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"probed"}; !reflect.DeepEqual(got["p"], want) {
		t.Errorf("p = %q, want %q", got["p"], want)
	}
}

func TestResolvePlatformPropertiesFailures(t *testing.T) {
	cases := []struct {
		name    string
		argv    []string
		wantErr []string
	}{
		{name: "non-zero exit", argv: []string{"sh", "-c", "echo broken probe >&2; exit 3"},
			wantErr: []string{`platform_properties.p: query_cmd "sh -c echo broken probe >&2; exit 3"`, "exited with code 3", "stderr: broken probe"}},
		{name: "no such program", argv: []string{"/nonexistent/hearth-probe"}, wantErr: []string{"platform_properties.p:", "command not found"}},
		{name: "too much output", argv: []string{"head", "-c", "2000000", "/dev/zero"}, wantErr: []string{"printed more than 1048576 bytes"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := &config.LocalWorker{PlatformProperties: map[string]config.PlatformProperty{"p": {QueryCmd: tc.argv}, "ok": {Values: []string{"x"}}}}
			got, err := resolveForTest(t, context.Background(), w, executor.QueryCmdTimeout)
			if err == nil {
				t.Fatalf("resolved %v, want an error", got)
			}
			if !errors.Is(err, executor.ErrQueryCmd) {
				t.Errorf("error %v does not wrap ErrQueryCmd", err)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

// TestQueryCmdTimeoutKillsTheProcessGroup checks that a hung probe fails
// promptly and that what it started dies with it.
func TestQueryCmdTimeoutKillsTheProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	w := &config.LocalWorker{PlatformProperties: map[string]config.PlatformProperty{
		"hang": {QueryCmd: []string{"sh", "-c", `sleep 60 & echo $! > "$1"; wait`, "sh", pidFile}},
	}}
	start := time.Now()
	_, err := resolveForTest(t, context.Background(), w, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "killed after 300ms") {
		t.Fatalf("error %v, want a timeout", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("took %v", elapsed)
	}
	waitDead(t, readPIDs(t, pidFile)[0])
}

// TestQueryCmdBackgroundChildHoldingStdout: a probe that leaves a
// background child holding stdout is done when the probe exits. The old
// launcher waited its WaitDelay (1s) for the pipe before killing the group.
func TestQueryCmdBackgroundChildHoldingStdout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	w := &config.LocalWorker{PlatformProperties: map[string]config.PlatformProperty{
		"p": {QueryCmd: []string{"sh", "-c", `sleep 60 & echo $! > "$1"; echo value`, "sh", pidFile}},
	}}
	start := time.Now()
	got, err := resolveForTest(t, context.Background(), w, executor.QueryCmdTimeout)
	elapsed := time.Since(start)
	if err != nil || !reflect.DeepEqual(got["p"], []string{"value"}) {
		t.Fatalf("got %q, %v", got, err)
	}
	if elapsed > 900*time.Millisecond {
		t.Errorf("took %v: it waited for the background child's pipe", elapsed)
	}
	waitDead(t, readPIDs(t, pidFile)[0])
}

func TestQueryCmdHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	w := &config.LocalWorker{PlatformProperties: map[string]config.PlatformProperty{"hang": {QueryCmd: []string{"sleep", "60"}}}}
	start := time.Now()
	_, err := resolveForTest(t, ctx, w, executor.QueryCmdTimeout)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, executor.ErrQueryCmd) {
		t.Fatalf("error %v, want ErrQueryCmd and context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("took %v", elapsed)
	}
}

func TestResolveParsedQueryCmd(t *testing.T) {
	// End to end: the quoting in the file reaches the command intact.
	w, _, err := config.ParseLocalWorker([]byte(`{platform_properties: {greeting: {query_cmd: "sh -c 'echo \"hello  world\"; echo second'"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := resolveForTest(t, context.Background(), w, executor.QueryCmdTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"hello  world", "second"}; !reflect.DeepEqual(got["greeting"], want) {
		t.Errorf("greeting = %q, want %q", got["greeting"], want)
	}
}

func TestPoolOptions(t *testing.T) {
	pw := &config.PersistentWorkers{MaxWorkersPerPool: 3, IdleTimeout: time.Minute, MaxInvocations: 7,
		MemoryLimitBytes: 100, MaxTotalMemoryBytes: 1000, Prewarm: 1, Sandbox: config.SandboxBwrap}
	got, err := executor.PoolOptions(pw, "/d")
	if err != nil {
		t.Fatal(err)
	}
	if got.Dir != "/d" || got.MaxWorkersPerKey != 3 || got.IdleTimeout != time.Minute || got.MaxInvocations != 7 ||
		got.MemoryLimitBytes != 100 || got.MaxTotalMemoryBytes != 1000 || got.Prewarm != 1 || got.Sandbox.String() != "bwrap" {
		t.Errorf("PoolOptions = %+v", got)
	}
	if _, err := executor.PoolOptions(&config.PersistentWorkers{Sandbox: 7}, "/d"); err == nil || !strings.Contains(err.Error(), "persistent_workers.sandbox") {
		t.Errorf("unknown sandbox: %v, want an error naming the field", err)
	}
}
