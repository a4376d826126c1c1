// Package redistest starts a real redis-server on loopback for the tests of
// the Redis-backed stores and scheduler state. Each server is private to one
// test: its own port, its own data directory, stopped at cleanup. There is no
// fake: scripts/install-test-deps.sh installs Debian's redis-server, and a
// test that cannot start it fails rather than skips.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/testports"
	"github.com/redis/go-redis/v9"
)

// Server is one running redis-server.
type Server struct {
	// Addr is host:port on 127.0.0.1.
	Addr string
	dir  string
	port int
	cmd  *exec.Cmd
	t    testing.TB
}

// Start runs a redis-server for the test and stops it at cleanup. Its data
// lives in a temp dir with append-only persistence on (appendfsync always),
// so Restart keeps every acknowledged write, as a production Redis with AOF
// would.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redistest: redis-server not on PATH (scripts/install-test-deps.sh installs Debian's redis-server): %v", err)
	}
	s := &Server{dir: t.TempDir(), t: t}
	s.port = testports.Reserve(t)
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server",
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "yes",
		"--appendfsync", "always",
		"--protected-mode", "yes",
		"--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("redistest: start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(s.Addr) == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	s.Stop()
	s.t.Fatalf("redistest: redis-server on %s did not answer PING within 10s; its log:\n%s", s.Addr, log)
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

// Restart kills the server and starts it again on the same port and data
// directory: the acknowledged writes are still there (AOF, fsync always).
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Client returns a go-redis client of database 0, closed at cleanup: one
// per call, as each replica of a server has its own.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// URL is the server's address as a redis:// URL with database db.
func (s *Server) URL(db int) string {
	return fmt.Sprintf("redis://%s/%d", s.Addr, db)
}

func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("redis answered %q", line)
	}
	return nil
}
