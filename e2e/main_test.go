package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// hearthBin is the hearth binary under test, built once by TestMain from the
// current source tree.
var hearthBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "hearth-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	hearthBin = filepath.Join(dir, "hearth")
	// `go test` puts the go command of its own toolchain first in PATH.
	// -race: the e2e tests are the server's most concurrent workload, so a
	// data race there fails the test (see checkNoRace) instead of going
	// unnoticed.
	build := exec.Command("go", "build", "-race", "-o", hearthBin, "github.com/hearth-build/hearth/cmd/hearth")
	// A -race binary sleeps 1 s at exit (GORACE atexit_sleep_ms) for other
	// goroutines to report; every server, worker and `hearth run` the tests
	// start (and the runners those start) would pay it. A race reported
	// while the process runs still fails the test.
	if _, set := os.LookupEnv("GORACE"); !set {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building cmd/hearth:", err)
		return 1
	}
	return m.Run()
}
