package config

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func workerWithProperties(props map[string]PlatformProperty) *LocalWorker {
	return &LocalWorker{PlatformProperties: props}
}

func TestResolvePlatformProperties(t *testing.T) {
	t.Setenv("HEARTH_CONFIG_TEST_FROM_ENV", "from-the-worker")
	t.Setenv("HEARTH_CONFIG_TEST_SECRET", "must-not-leak")
	w := &LocalWorker{
		PlatformProperties: map[string]PlatformProperty{
			"OSFamily": {Values: []string{"Linux"}},
			"empty":    {Values: []string{""}},
			"lines":    {QueryCmd: []string{"sh", "-c", "printf ' a \\n\\n  b\\n'; echo c"}},
			"env":      {QueryCmd: []string{"sh", "-c", `echo "v=$V"; echo "f=$HEARTH_CONFIG_TEST_FROM_ENV"; echo "s=${HEARTH_CONFIG_TEST_SECRET:-unset}"`}},
			"silent":   {QueryCmd: []string{"true"}},
			"stderr":   {QueryCmd: []string{"sh", "-c", "echo warn >&2; echo ok"}},
		},
		AdditionalEnvironment: map[string]EnvironmentSource{
			"V":                           {Kind: EnvValue, Value: "static"},
			"HEARTH_CONFIG_TEST_FROM_ENV": {Kind: EnvFromEnvironment, Variable: "HEARTH_CONFIG_TEST_FROM_ENV"},
			"T":                           {Kind: EnvTimeoutMillis},
		},
	}
	got, err := w.ResolvePlatformProperties(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "properties", got, map[string][]string{
		"OSFamily": {"Linux"},
		"empty":    {""},
		"lines":    {"a", "b", "c"},
		// Only the static additional_environment reaches query_cmd, as in NativeLink.
		"env":    {"v=static", "f=from-the-worker", "s=unset"},
		"stderr": {"ok"},
	})
}

func TestResolvePlatformPropertiesFailures(t *testing.T) {
	cases := []struct {
		name    string
		argv    []string
		wantErr []string
	}{
		{name: "non-zero exit", argv: []string{"sh", "-c", "echo broken probe >&2; exit 3"},
			wantErr: []string{`platform_properties.p: query_cmd "sh -c echo broken probe >&2; exit 3"`, "exit status 3", "stderr: broken probe"}},
		{name: "no such program", argv: []string{"/nonexistent/hearth-probe"}, wantErr: []string{"platform_properties.p:", "no such file"}},
		{name: "too much output", argv: []string{"head", "-c", "2000000", "/dev/zero"}, wantErr: []string{"printed more than 1048576 bytes"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := workerWithProperties(map[string]PlatformProperty{"p": {QueryCmd: tc.argv}, "ok": {Values: []string{"x"}}})
			got, err := w.ResolvePlatformProperties(context.Background())
			if err == nil {
				t.Fatalf("resolved %v, want an error", got)
			}
			if !errors.Is(err, ErrQueryCmd) {
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
	old := queryCmdTimeout
	queryCmdTimeout = 300 * time.Millisecond
	t.Cleanup(func() { queryCmdTimeout = old })

	pidFile := filepath.Join(t.TempDir(), "pid")
	w := workerWithProperties(map[string]PlatformProperty{
		"hang": {QueryCmd: []string{"sh", "-c", `sleep 60 & echo $! > "$1"; wait`, "sh", pidFile}},
	})
	start := time.Now()
	_, err := w.ResolvePlatformProperties(context.Background())
	if err == nil || !strings.Contains(err.Error(), "killed after 300ms") {
		t.Fatalf("error %v, want a timeout", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("took %v", elapsed)
	}
	data, readErr := os.ReadFile(pidFile)
	if readErr != nil {
		t.Fatal(readErr)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	deadline := time.Now().Add(2 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		// Killed but possibly not reaped yet by its new parent; a zombie
		// still answers kill(0), so look at its state.
		if stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d outlived the timed-out query_cmd", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestQueryCmdHonoursContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	w := workerWithProperties(map[string]PlatformProperty{"hang": {QueryCmd: []string{"sleep", "60"}}})
	start := time.Now()
	_, err := w.ResolvePlatformProperties(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrQueryCmd) {
		t.Fatalf("error %v, want ErrQueryCmd and context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("took %v", elapsed)
	}
}

func TestResolveParsedQueryCmd(t *testing.T) {
	// End to end: the quoting in the file reaches the command intact.
	f, err := parseLocal(`platform_properties: {greeting: {query_cmd: "sh -c 'echo \"hello  world\"; echo second'"}}`, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.Workers[0].Local.ResolvePlatformProperties(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantEqual(t, "greeting", got["greeting"], []string{"hello  world", "second"})
}
