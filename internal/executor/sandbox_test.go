package executor_test

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// One-shot actions under bubblewrap can write their own directory only and
// reach no network, yet build normally.
func TestOneShotSandbox(t *testing.T) {
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, bwrap: true})
	outside := filepath.Join(t.TempDir(), "escaped")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	port := lis.Addr().(*net.TCPAddr).Port
	script := strings.Join([]string{
		"echo built > out.txt",
		"if echo x > " + outside + " 2>/dev/null; then echo wrote-outside; fi",
		"if echo x > /tmp/hearth-sandbox-probe 2>/dev/null; then echo tmp-ok; fi",
		// bash's /dev/tcp reaches the loopback listener only with a network.
		"if (exec 3<>/dev/tcp/127.0.0.1/" + itoa(port) + ") 2>/dev/null; then echo network; fi",
	}, "; ")
	ad := c.action(&repb.Command{Arguments: []string{"bash", "-c", script}, OutputPaths: []string{"out.txt"},
		EnvironmentVariables: env("PATH", "/usr/bin:/bin")}, nil)
	resp := c.run(ad)
	stdout := c.read(resp.GetResult().GetStdoutDigest())
	if strings.Contains(stdout, "wrote-outside") || strings.Contains(stdout, "network") || !strings.Contains(stdout, "tmp-ok") {
		t.Fatalf("sandboxed action printed %q (want only tmp-ok)", stdout)
	}
	if _, err := os.Stat(outside); err == nil {
		t.Fatal("the action wrote outside its directory")
	}
	if _, err := os.Stat("/tmp/hearth-sandbox-probe"); err == nil {
		os.Remove("/tmp/hearth-sandbox-probe")
		t.Fatal("the action's /tmp is the host's")
	}
	if got := outputFile(c, resp.GetResult(), "out.txt"); got != "built\n" {
		t.Fatalf("output = %q", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
