// Package s3test starts a real S3-compatible server (SeaweedFS's `weed mini`)
// on loopback for the tests of the S3 CAS, its tiers and the e2e tests that
// put a server's blobs in a bucket. Each server is private to one test: its
// own ports, its own data directory, one bucket, one access key, stopped at
// cleanup. There is no fake: scripts/install-s3-server.sh builds `weed` from
// the Go module proxy into a cached tools dir, and a test that cannot find it
// fails rather than skips.
package s3test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/testports"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Version is the SeaweedFS module version scripts/install-s3-server.sh builds.
const Version = "v0.0.0-20261109003541-7506e5f91cd6"

// Credentials of the one identity every server accepts.
const (
	AccessKey = "hearth-test-key"
	SecretKey = "hearth-test-secret-0123456789"
)

// Server is one running SeaweedFS with its S3 gateway.
type Server struct {
	// Endpoint is the S3 gateway's host:port on 127.0.0.1.
	Endpoint string
	// Bucket exists when Start returns.
	Bucket string
	dir    string
	ports  []int
	cmd    *exec.Cmd
	t      testing.TB
}

// Binary returns the path of the `weed` binary: $HEARTH_WEED if set, else
// the one scripts/install-s3-server.sh builds.
func Binary() (string, error) {
	if p := os.Getenv("HEARTH_WEED"); p != "" {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(home, ".cache", "hearth-tools", "seaweedfs-"+Version, "weed")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not built (run scripts/install-s3-server.sh): %w", p, err)
	}
	return p, nil
}

// Start runs a SeaweedFS server with bucket "hearth" for the test and stops
// it at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{dir: t.TempDir(), t: t, Bucket: "hearth"}
	for range 10 {
		s.ports = append(s.ports, testports.Reserve(t))
	}
	s.Endpoint = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ports[6]))
	cfg := fmt.Sprintf(`{"identities":[{"name":"hearth","credentials":[{"accessKey":%q,"secretKey":%q}],"actions":["Admin","Read","Write","List","Tagging"]}]}`, AccessKey, SecretKey)
	if err := os.WriteFile(filepath.Join(s.dir, "s3.json"), []byte(cfg), 0o600); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start starts the (stopped) server again on the same ports and data: what
// was acknowledged before a Stop is still there.
func (s *Server) Start() {
	s.t.Helper()
	bin, err := Binary()
	if err != nil {
		s.t.Fatalf("s3test: %v", err)
	}
	p := s.ports
	port := func(i int) string { return strconv.Itoa(p[i]) }
	logf, err := os.OpenFile(filepath.Join(s.dir, "weed.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatalf("s3test: %v", err)
	}
	defer logf.Close()
	s.cmd = exec.Command(bin, "mini",
		"-dir="+filepath.Join(s.dir, "data"),
		"-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.port="+port(0), "-master.port.grpc="+port(1),
		"-volume.port="+port(2), "-volume.port.grpc="+port(3),
		"-filer.port="+port(4), "-filer.port.grpc="+port(5),
		"-s3.port="+port(6), "-s3.port.grpc="+port(7),
		"-admin.port="+port(8), "-admin.port.grpc="+port(9), "-admin.port.legacy=0", "-admin.ui=false",
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
		"-master.telemetry=false",
		"-s3.config="+filepath.Join(s.dir, "s3.json"),
		"-bucket="+s.Bucket,
	)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("s3test: start weed: %v", err)
	}
	c := s.Client()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ok, err := c.BucketExists(ctx, s.Bucket)
		cancel()
		if ok {
			return
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "weed.log"))
	s.Stop()
	s.t.Fatalf("s3test: SeaweedFS on %s did not serve bucket %s within 60s (last: %v); its log:\n%s", s.Endpoint, s.Bucket, last, log)
}

// Stop kills the server (SIGKILL: what a crash looks like). Safe to call twice.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Client is a minio-go client of the server with the test credentials, for
// tests that look at the bucket directly.
func (s *Server) Client() *minio.Client {
	s.t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(AccessKey, SecretKey, ""),
		Secure: false,
		Region: "us-east-1",
	})
	if err != nil {
		s.t.Fatalf("s3test: client: %v", err)
	}
	return c
}
