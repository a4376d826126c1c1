package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// The addresses and data dir `hearth serve` uses without flags; README and
// Bazel users rely on them.
const (
	defaultGRPCAddr = "127.0.0.1:8980"
	defaultHTTPAddr = "127.0.0.1:8981"
	defaultDataDir  = "hearth-data"
)

// TestServeDefaults runs `hearth serve` exactly as a newcomer would: no
// flags, in an empty directory. It needs ports 8980 and 8981 free; if
// something else holds them the test fails with hearth's listen error.
func TestServeDefaults(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	p := launchServe(t, dir)
	if err := p.waitReady(ctx); err != nil {
		t.Fatalf("hearth serve with no flags did not become ready (are ports 8980/8981 taken?): %v\n%s", err, p.log.tail(30))
	}
	line, _ := p.log.find(`msg="hearth serving"`)
	if p.GRPCAddr != defaultGRPCAddr || p.HTTPAddr != defaultHTTPAddr {
		t.Errorf("serving on grpc=%s http=%s, want grpc=%s http=%s: %s", p.GRPCAddr, p.HTTPAddr, defaultGRPCAddr, defaultHTTPAddr, line)
	}
	if filepath.Clean(p.DataDir) != defaultDataDir {
		t.Errorf("data dir %q, want ./%s: %s", p.DataDir, defaultDataDir, line)
	}
	if fi, err := os.Stat(filepath.Join(dir, defaultDataDir)); err != nil || !fi.IsDir() {
		t.Errorf("no data directory ./%s in the working directory: %v", defaultDataDir, err)
	}

	// It is a REAPI server with a cache on the default address.
	c := dial(t, defaultGRPCAddr)
	caps, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("GetCapabilities on %s: %v", defaultGRPCAddr, err)
	}
	if !caps.GetCacheCapabilities().GetActionCacheUpdateCapabilities().GetUpdateEnabled() {
		t.Errorf("capabilities do not allow action cache updates: %v", caps)
	}

	// A second server on the same data dir (other ports, so the data dir is
	// the only conflict) must refuse to start and say why.
	second := launchServe(t, dir, "--listen", "127.0.0.1:0", "--http", freeLoopbackAddr(t))
	second.waitExit(1)
	out := second.log.String()
	if !strings.Contains(out, defaultDataDir) || !strings.Contains(out, "in use") {
		t.Errorf("second server on the same data dir: want an error naming %s as in use, got:\n%s", defaultDataDir, out)
	}
	if strings.Contains(out, "hearth serving") {
		t.Errorf("second server on the same data dir started serving:\n%s", out)
	}

	// The first one is unaffected and stops cleanly on Ctrl-C.
	if _, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Errorf("first server stopped answering after the second one failed: %v", err)
	}
	p.stop(syscall.SIGINT)
}
