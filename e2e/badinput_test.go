package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestExecutionBadInput sends `hearth serve` actions that try to reach
// outside their directory, and one that looks for the server's environment.
// A rejected action must never run: each one would create a sentinel file if
// it did.
func TestExecutionBadInput(t *testing.T) {
	const secret = "HEARTH_E2E_SECRET"
	p := startServer(t, "serve", t.TempDir(), []string{secret + "=1"})
	c := dial(t, p.GRPCAddr)
	ac := repb.NewActionCacheClient(c.conn)
	sentinels := t.TempDir()

	tests := []struct {
		name     string
		spec     actionSpec
		wantText string // the error message must name the bad value
	}{
		{
			name:     "output path above the input root",
			spec:     actionSpec{outputPaths: []string{"../escape"}},
			wantText: "../escape",
		},
		{
			name:     "absolute output path",
			spec:     actionSpec{outputPaths: []string{"/tmp/hearth-e2e-escape"}},
			wantText: "/tmp/hearth-e2e-escape",
		},
		{
			name:     "working directory above the input root",
			spec:     actionSpec{workingDir: "../..", outputPaths: []string{"out"}},
			wantText: "../..",
		},
		{
			name:     "input symlink to /etc",
			spec:     actionSpec{symlinks: map[string]string{"etc": "/etc"}, outputPaths: []string{"out"}},
			wantText: "/etc",
		},
		{
			name:     "input symlink climbing out of the input root",
			spec:     actionSpec{symlinks: map[string]string{"sub/up": "../../../../../../etc"}, files: map[string]string{"sub/f": "x"}, outputPaths: []string{"out"}},
			wantText: "../../../../../../etc",
		},
		// Action.timeout: REAPI's Duration, which must be valid and, for a
		// timeout, not negative.
		{
			name:     "negative timeout",
			spec:     actionSpec{editAction: func(a *repb.Action) { a.Timeout = &durationpb.Duration{Seconds: -30} }},
			wantText: "timeout -30s is negative",
		},
		{
			name:     "malformed timeout",
			spec:     actionSpec{editAction: func(a *repb.Action) { a.Timeout = &durationpb.Duration{Seconds: 5, Nanos: -1} }},
			wantText: "not a valid google.protobuf.Duration",
		},
		// Canonical order, which REAPI says MUST hold so that equal actions
		// hash equally.
		{
			name: "unsorted environment variables",
			spec: actionSpec{editCommand: func(c *repb.Command) {
				c.EnvironmentVariables = []*repb.Command_EnvironmentVariable{{Name: "Z", Value: "1"}, {Name: "A", Value: "2"}}
			}},
			wantText: `"A" comes after "Z"`,
		},
		{
			name:     "unsorted output paths",
			spec:     actionSpec{outputPaths: []string{"out", "a"}},
			wantText: `"a" comes after "out"`,
		},
		{
			name: "unsorted platform properties",
			spec: actionSpec{editAction: func(a *repb.Action) {
				a.Platform = &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}, {Name: "Arch", Value: "amd64"}}}
			}},
			wantText: "sorted by name, then value",
		},
		{
			name:     "NUL byte in an argument",
			spec:     actionSpec{editCommand: func(c *repb.Command) { c.Arguments = append(c.Arguments, "x\x00y") }},
			wantText: "NUL",
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sentinel := filepath.Join(sentinels, strings.Repeat("s", i+1))
			tc.spec.args = []string{"/bin/sh", "-c", `touch "$1"; echo escaped > ../escape; cat etc/hostname > out`, "sh", sentinel}
			a := tc.spec.build(t)
			c.upload(t, a)
			st := outcome(c.execute(t.Context(), a.action.digest))
			if st.Code() != codes.InvalidArgument {
				t.Errorf("Execute: %v, want INVALID_ARGUMENT", st)
			} else if !strings.Contains(st.Message(), tc.wantText) {
				t.Errorf("Execute: %v, want a message naming %q", st, tc.wantText)
			}
			if _, err := os.Stat(sentinel); err == nil {
				t.Errorf("the rejected action ran: it created %s", sentinel)
			}
			// Nor is any result stored for it.
			_, err := ac.GetActionResult(t.Context(), &repb.GetActionResultRequest{ActionDigest: a.action.digest})
			if status.Code(err) != codes.NotFound {
				t.Errorf("GetActionResult of the rejected action: %v, want NOT_FOUND", err)
			}
		})
	}

	// The control: the same kind of action with nothing wrong runs and
	// creates its sentinel, so the absence of the others' means something.
	t.Run("valid action runs", func(t *testing.T) {
		sentinel := filepath.Join(sentinels, "control")
		a := actionSpec{args: []string{"/bin/sh", "-c", `touch "$1"`, "sh", sentinel}}.build(t)
		c.upload(t, a)
		resp, err := c.execute(t.Context(), a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("Execute: %v, exit code %d", st, resp.GetResult().GetExitCode())
		}
		if _, err := os.Stat(sentinel); err != nil {
			t.Errorf("the valid action did not create its sentinel: %v", err)
		}
	})

	// Nothing named "escape" anywhere in the server's data (which holds the
	// executor's work directory) or beside it.
	filepath.WalkDir(filepath.Dir(p.DataDir), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "escape" {
			t.Errorf("an action wrote %s", path)
		}
		return nil
	})

	t.Run("server environment does not leak", func(t *testing.T) {
		a := actionSpec{
			args: []string{"/usr/bin/env"},
			env:  map[string]string{"FROM_COMMAND": "yes"},
		}.build(t)
		c.upload(t, a)
		resp, err := c.execute(t.Context(), a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("env: %v, exit code %d", st, resp.GetResult().GetExitCode())
		}
		stdout, err := c.byteStreamRead(t.Context(), resp.GetResult().GetStdoutDigest())
		if err != nil {
			t.Fatalf("reading env's stdout: %v", err)
		}
		got := strings.Split(strings.TrimSpace(string(stdout)), "\n")
		// Exactly the Command's environment: nothing of the server's
		// (the secret, its PATH, HOME, ...) and nothing added.
		if !slices.Equal(got, []string{"FROM_COMMAND=yes"}) {
			t.Errorf("the action's environment is %q, want exactly [FROM_COMMAND=yes]", got)
		}
		if strings.Contains(string(stdout), secret) {
			t.Errorf("the server's %s leaked into the action's environment", secret)
		}
	})
}
