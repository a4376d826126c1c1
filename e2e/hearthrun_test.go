package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/metadatapb"
)

// hearthRunResult is what one `hearth run` left behind.
type hearthRunResult struct {
	exitCode    int
	output      string // hearth's own stdout and stderr
	took        time.Duration
	result      *repb.ActionResult // nil if no ActionResult file was written
	errorStatus *spb.Status        // nil if no .error-status file was written
}

// hearthRun writes a's Action to a file and runs `hearth run` on it against
// the CAS at addr, with extraArgs, in dir.
func hearthRun(t *testing.T, dir, addr string, a builtAction, extraArgs ...string) hearthRunResult {
	t.Helper()
	actionFile := filepath.Join(dir, "action.bin")
	resultFile := filepath.Join(dir, "result.bin")
	if err := os.WriteFile(actionFile, a.action.data, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	args := append([]string{"run", "--action=" + actionFile, "--action-result=" + resultFile, "--remote=grpc://" + addr}, extraArgs...)
	cmd := exec.CommandContext(ctx, hearthBin, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	r := hearthRunResult{exitCode: cmd.ProcessState.ExitCode(), output: out.String(), took: time.Since(start)}
	if err != nil && r.exitCode <= 0 {
		t.Fatalf("hearth run: %v\n%s", err, r.output)
	}
	if strings.Contains(r.output, "WARNING: DATA RACE") {
		t.Errorf("hearth run reported a data race:\n%s", r.output)
	}
	if data, err := os.ReadFile(resultFile); err == nil {
		r.result = &repb.ActionResult{}
		if err := proto.Unmarshal(data, r.result); err != nil {
			t.Fatalf("%s is not a serialized ActionResult: %v", resultFile, err)
		}
	}
	if data, err := os.ReadFile(resultFile + ".error-status"); err == nil {
		r.errorStatus = &spb.Status{}
		if err := proto.Unmarshal(data, r.errorStatus); err != nil {
			t.Fatalf("%s.error-status is not a serialized google.rpc.Status: %v", resultFile, err)
		}
	}
	return r
}

// TestHearthRun drives `hearth run`, the buildbox-run compatible runner,
// against `hearth serve`'s CAS: a successful action with execution
// statistics, one whose input is missing, and one that times out.
func TestHearthRun(t *testing.T) {
	p := startServe(t, t.TempDir())
	c := dial(t, p.GRPCAddr)
	ctx := t.Context()

	t.Run("success", func(t *testing.T) {
		dir := t.TempDir()
		workspace := t.TempDir()
		// The loop burns enough CPU for a non-zero utime even where the
		// kernel accounts CPU time by ticks.
		a := actionSpec{
			args: []string{"/bin/sh", "-c", `
i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done
echo "to stdout"; echo "to stderr" >&2
mkdir -p out && { cat in/input.txt; echo "ran $i"; } > out/result.txt
printf '#!/bin/sh\n' > out/tool.sh && chmod 755 out/tool.sh`},
			files:       map[string]string{"in/input.txt": "input line\n"},
			outputPaths: []string{"out/result.txt", "out/tool.sh"},
		}.build(t)
		c.upload(t, a)
		stdoutFile, stderrFile := filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr")
		r := hearthRun(t, dir, p.GRPCAddr, a, "--workspace-path="+workspace,
			"--stdout-file="+stdoutFile, "--stderr-file="+stderrFile, "--collect-execution-stats")
		if r.exitCode != 0 || r.errorStatus != nil {
			t.Fatalf("hearth run: exit code %d, error status %v\n%s", r.exitCode, r.errorStatus, r.output)
		}
		res := r.result
		if res == nil {
			t.Fatalf("hearth run wrote no ActionResult\n%s", r.output)
		}
		if res.GetExitCode() != 0 {
			t.Errorf("ActionResult.exit_code %d, want 0", res.GetExitCode())
		}
		outs := map[string]*repb.OutputFile{}
		for _, f := range res.GetOutputFiles() {
			outs[f.GetPath()] = f
		}
		for _, w := range []struct {
			path, content string
			executable    bool
		}{
			{"out/result.txt", "input line\nran 100000\n", false},
			{"out/tool.sh", "#!/bin/sh\n", true},
		} {
			f := outs[w.path]
			if f == nil {
				t.Errorf("output_files %v lack %s", res.GetOutputFiles(), w.path)
				continue
			}
			if f.GetIsExecutable() != w.executable {
				t.Errorf("%s: is_executable %v, want %v", w.path, f.GetIsExecutable(), w.executable)
			}
			got, err := c.byteStreamRead(ctx, f.GetDigest())
			if err != nil || string(got) != w.content {
				t.Errorf("%s in the CAS = %q (%v), want %q", w.path, got, err, w.content)
			}
		}
		if len(outs) != 2 {
			t.Errorf("output_files %v, want exactly out/result.txt and out/tool.sh", res.GetOutputFiles())
		}
		for _, s := range []struct {
			name, file, want string
			d                *repb.Digest
		}{
			{"stdout", stdoutFile, "to stdout\n", res.GetStdoutDigest()},
			{"stderr", stderrFile, "to stderr\n", res.GetStderrDigest()},
		} {
			if data, err := os.ReadFile(s.file); err != nil || string(data) != s.want {
				t.Errorf("--%s-file holds %q (%v), want %q", s.name, data, err, s.want)
			}
			if data, err := c.byteStreamRead(ctx, s.d); err != nil || string(data) != s.want {
				t.Errorf("%s_digest resolves to %q (%v), want %q", s.name, data, err, s.want)
			}
		}
		checkExecutionStatistics(t, c, res)
		if entries, err := os.ReadDir(workspace); err != nil || len(entries) != 0 {
			t.Errorf("--workspace-path %s after the run: %v (%v), want it left empty", workspace, entries, err)
		}
	})

	t.Run("missing input blob", func(t *testing.T) {
		a := actionSpec{
			args:        []string{"/bin/cat", "in/missing.txt"},
			files:       map[string]string{"in/missing.txt": "never uploaded\n"},
			outputPaths: []string{"out"},
		}.build(t)
		missing := a.files["in/missing.txt"]
		c.upload(t, a, missing)
		r := hearthRun(t, t.TempDir(), p.GRPCAddr, a)
		if r.exitCode == 0 {
			t.Errorf("hearth run exited 0 although an input is missing\n%s", r.output)
		}
		st := r.errorStatus
		if st == nil {
			t.Fatalf("hearth run wrote no .error-status\n%s", r.output)
		}
		if st.GetCode() != int32(code.Code_FAILED_PRECONDITION) {
			t.Errorf(".error-status %v, want FAILED_PRECONDITION", st)
		}
		wantSubject := "blobs/" + missing.digest.Hash + "/" + strconv.FormatInt(missing.digest.SizeBytes, 10)
		if !hasMissingViolation(st, wantSubject) {
			t.Errorf(".error-status %v lacks a PreconditionFailure violation of type MISSING for %s", st, wantSubject)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		dir := t.TempDir()
		a := actionSpec{
			args:    []string{"/bin/sh", "-c", "echo partial; sleep 30; echo never"},
			timeout: 200 * time.Millisecond,
		}.build(t)
		c.upload(t, a)
		stdoutFile := filepath.Join(dir, "stdout")
		r := hearthRun(t, dir, p.GRPCAddr, a, "--stdout-file="+stdoutFile)
		if r.exitCode == 0 {
			t.Errorf("hearth run exited 0 for a timed-out action\n%s", r.output)
		}
		// Far less than the 30 s the command would take: it was killed.
		if r.took > 15*time.Second {
			t.Errorf("hearth run took %v for an action with a 200ms timeout", r.took)
		}
		if r.errorStatus.GetCode() != int32(code.Code_DEADLINE_EXCEEDED) {
			t.Errorf(".error-status %v, want DEADLINE_EXCEEDED\n%s", r.errorStatus, r.output)
		}
		if data, err := os.ReadFile(stdoutFile); err != nil || string(data) != "partial\n" {
			t.Errorf("--stdout-file holds %q (%v), want the partial output %q", data, err, "partial\n")
		}
		if r.result == nil {
			t.Fatalf("hearth run wrote no ActionResult for the timed-out action\n%s", r.output)
		}
		if got, err := c.byteStreamRead(ctx, r.result.GetStdoutDigest()); err != nil || string(got) != "partial\n" {
			t.Errorf("stdout_digest of the timed-out action resolves to %q (%v), want %q", got, err, "partial\n")
		}
	})
}

// checkExecutionStatistics checks that res's auxiliary_metadata holds the
// digest of an uploaded ExecutionStatistics with plausible figures.
func checkExecutionStatistics(t *testing.T, c *reapiClient, res *repb.ActionResult) {
	t.Helper()
	var found bool
	for _, a := range res.GetExecutionMetadata().GetAuxiliaryMetadata() {
		d := &repb.Digest{}
		if !a.MessageIs(d) {
			continue
		}
		found = true
		if err := a.UnmarshalTo(d); err != nil {
			t.Fatalf("auxiliary_metadata %v: %v", a, err)
		}
		data, err := c.byteStreamRead(t.Context(), d)
		if err != nil {
			t.Fatalf("reading the execution statistics blob: %v", err)
		}
		stats := &metadatapb.ExecutionStatistics{}
		if err := proto.Unmarshal(data, stats); err != nil {
			t.Fatalf("blob %s/%d is not an ExecutionStatistics: %v", d.Hash, d.SizeBytes, err)
		}
		u := stats.GetProcessResourceUsage()
		if u.GetUtimeUsec() <= 0 || u.GetMaxrss() <= 0 {
			t.Errorf("execution statistics %v: want utime and maxrss > 0", stats)
		}
		t.Logf("execution statistics: utime %dµs, maxrss %d KiB", u.GetUtimeUsec(), u.GetMaxrss())
	}
	if !found {
		t.Errorf("auxiliary_metadata %v holds no Digest of execution statistics", res.GetExecutionMetadata().GetAuxiliaryMetadata())
	}
}

// hasMissingViolation reports whether st carries a PreconditionFailure with a
// MISSING violation for subject.
func hasMissingViolation(st *spb.Status, subject string) bool {
	for _, d := range st.GetDetails() {
		pf := &errdetails.PreconditionFailure{}
		if d.MessageIs(pf) && d.UnmarshalTo(pf) == nil {
			for _, v := range pf.GetViolations() {
				if v.GetType() == "MISSING" && v.GetSubject() == subject {
					return true
				}
			}
		}
	}
	return false
}
