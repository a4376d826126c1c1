package e2e

import (
	"archive/zip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// testSemanticsWorkspace has one test for each way Bazel's test runner
// (test-setup.sh, run on the executor) talks to the remote execution
// service beyond a passing test: shards, a failing test, a test past its
// timeout, and undeclared outputs that the runner zips on the executor.
var testSemanticsWorkspace = map[string]string{
	"WORKSPACE": `workspace(name = "testsemantics")

local_repository(name = "rules_cc", path = "../stubs/rules_cc")

local_repository(name = "rules_java", path = "../stubs/rules_java")

local_repository(name = "remote_coverage_tools", path = "../stubs/remote_coverage_tools")
`,
	"BUILD": `sh_test(
    name = "sharded",
    size = "small",
    srcs = ["sharded.sh"],
    shard_count = 3,
)

sh_test(
    name = "fails",
    size = "small",
    srcs = ["fails.sh"],
)

sh_test(
    name = "slow",
    srcs = ["slow.sh"],
    timeout = "short",
)

sh_test(
    name = "undeclared",
    size = "small",
    srcs = ["undeclared.sh"],
)
`,
	// The runner asks a test to touch TEST_SHARD_STATUS_FILE when it
	// supports sharding; each shard must see its own index.
	"sharded.sh": `#!/bin/sh
set -eu
touch "$TEST_SHARD_STATUS_FILE"
echo "shard $TEST_SHARD_INDEX of $TEST_TOTAL_SHARDS"
test "$TEST_TOTAL_SHARDS" = 3
`,
	"fails.sh": `#!/bin/sh
echo "hearth-e2e: this test fails on purpose"
exit 7
`,
	"slow.sh": `#!/bin/sh
echo "hearth-e2e: slow test started"
sleep 120
`,
	"undeclared.sh": `#!/bin/sh
set -eu
echo "report from the executor" > "$TEST_UNDECLARED_OUTPUTS_DIR/report.txt"
`,
}

// TestBazelTestSemantics runs Bazel tests whose results are not a plain
// pass through `hearth serve`: three shards, a test that exits 7, a test
// that runs past --test_timeout, and one with undeclared outputs. Bazel must
// report each as it would locally (PASSED over 3 shards, FAILED with the
// test's log downloaded, TIMEOUT soon after the timeout, outputs.zip
// holding the file); after a clean only the passing tests come from the
// action cache: a failed or timed-out test is run again, because a result
// with a non-zero exit code or a timeout is never cached.
func TestBazelTestSemantics(t *testing.T) {
	b := newGeneratedBazel(t, testSemanticsWorkspace)
	for _, script := range []string{"sharded.sh", "fails.sh", "slow.sh", "undeclared.sh"} {
		if err := os.Chmod(filepath.Join(b.workspace, script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := startServe(t, t.TempDir())
	// --test_timeout=5: Bazel sets the test action's REAPI timeout to it,
	// and the executor must end the action there (the script sleeps 120 s).
	flags := append(remoteExecutionFlags(p.GRPCAddr), "--test_timeout=5")

	start := time.Now()
	out, err := b.runErr("test", append(flags, "//...")...)
	took := time.Since(start)
	if err == nil {
		t.Fatalf("bazel test passed with a failing and a timed-out test\n%s", tailLines(out, 40))
	}
	if problems := remoteProblems(out); len(problems) > 0 {
		t.Fatalf("Bazel reported remote problems: %v", problems)
	}
	checkTestStatus(t, out, "//:sharded", "PASSED", false)
	checkTestStatus(t, out, "//:undeclared", "PASSED", false)
	checkTestStatus(t, out, "//:fails", "FAILED", false)
	checkTestStatus(t, out, "//:slow", "TIMEOUT", false)
	if took > 90*time.Second {
		t.Errorf("bazel test took %v: the 5 s timeout of //:slow was not enforced", took)
	}
	if !regexp.MustCompile(`(?m)Stats over 3 runs`).MatchString(out) && strings.Count(out, "//:sharded") < 3 {
		t.Errorf("Bazel did not report three shards of //:sharded:\n%s", tailLines(out, 40))
	}

	testlogs := b.info("bazel-testlogs")
	log := readFileOrFail(t, filepath.Join(testlogs, "fails", "test.log"))
	if !strings.Contains(log, "this test fails on purpose") {
		t.Errorf("the failed test's downloaded test.log lacks its output:\n%s", log)
	}
	if log := readFileOrFail(t, filepath.Join(testlogs, "slow", "test.log")); !strings.Contains(log, "slow test started") {
		t.Errorf("the timed-out test's test.log lacks what it printed before the timeout:\n%s", log)
	}
	for shard := 1; shard <= 3; shard++ {
		name := filepath.Join(testlogs, "sharded", fmt.Sprintf("shard_%d_of_3", shard), "test.log")
		want := fmt.Sprintf("shard %d of 3", shard-1)
		if log := readFileOrFail(t, name); !strings.Contains(log, want) {
			t.Errorf("%s lacks %q:\n%s", name, want, log)
		}
	}
	checkUndeclaredOutputs(t, filepath.Join(testlogs, "undeclared", "test.outputs", "outputs.zip"))

	// After a clean, the passing tests' results come from the action cache;
	// the failed and timed-out ones run again.
	b.run("clean")
	out, err = b.runErr("test", append(flags, "//...")...)
	if err == nil {
		t.Fatalf("second bazel test passed\n%s", tailLines(out, 40))
	}
	checkTestStatus(t, out, "//:sharded", "PASSED", true)
	checkTestStatus(t, out, "//:undeclared", "PASSED", true)
	checkTestStatus(t, out, "//:fails", "FAILED", false)
	checkTestStatus(t, out, "//:slow", "TIMEOUT", false)
	checkUndeclaredOutputs(t, filepath.Join(testlogs, "undeclared", "test.outputs", "outputs.zip"))
}

// checkTestStatus fails unless Bazel's summary reports target with status,
// marked "(cached)" exactly when cached is set.
func checkTestStatus(t *testing.T, out, target, status string, cached bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `\s+(\(cached\) )?` + status + `\b`)
	m := re.FindStringSubmatch(out)
	switch {
	case m == nil:
		t.Errorf("Bazel did not report %s %s:\n%s", target, status, tailLines(out, 40))
	case (m[1] != "") != cached:
		t.Errorf("Bazel reported %q for %s, want cached=%v", m[0], target, cached)
	}
}

func readFileOrFail(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// checkUndeclaredOutputs fails unless the zip Bazel's test runner made of
// TEST_UNDECLARED_OUTPUTS_DIR on the executor holds the test's report.
func checkUndeclaredOutputs(t *testing.T, name string) {
	t.Helper()
	z, err := zip.OpenReader(name)
	if err != nil {
		t.Fatalf("the undeclared outputs of //:undeclared: %v", err)
	}
	defer z.Close()
	for _, f := range z.File {
		if f.Name != "report.txt" {
			continue
		}
		r, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != "report from the executor\n" {
			t.Errorf("report.txt in outputs.zip = %q", data)
		}
		return
	}
	t.Errorf("outputs.zip has no report.txt (%d entries)", len(z.File))
}
