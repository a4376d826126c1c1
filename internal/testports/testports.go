// Package testports hands tests loopback ports that stay theirs: a server a
// test restarts must find its port again, so the tests that run real engines
// (SeaweedFS, redis-server) pick ports themselves instead of binding :0, and
// this package keeps those picks apart across the test processes that
// `go test` runs in parallel.
package testports

import (
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// Reserve picks a free port below Linux's ephemeral range (32768 and up)
// and reserves it against every other test process on the machine until
// t's cleanup (register the server's stop after this call, so that it runs
// first). The range matters because a restart reuses its ports, and one
// from the ephemeral range may meanwhile be claimed by any outbound
// connection. The reservation matters because `go test` runs packages in
// parallel and several of them start servers (SeaweedFS, redis-server) at
// once: probing that a port is free and binding it later is a race between
// them (a CI run lost it). The lease is an exclusive flock on a file named
// after the port, held open until cleanup; flock is per open file, so it
// also separates servers in one process, and the kernel drops it when a
// crashed test process exits.
func Reserve(t testing.TB) int {
	t.Helper()
	if err := os.MkdirAll(leaseDir(), 0o777); err != nil {
		t.Fatalf("testports: %v", err)
	}
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		f, err := os.OpenFile(leasePath(p), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			t.Fatalf("testports: %v", err)
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close()
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			f.Close()
			continue
		}
		l.Close()
		t.Cleanup(func() { f.Close() })
		return p
	}
	t.Fatal("testports: no free port below 32768 after 1000 tries")
	return 0
}

func leaseDir() string { return filepath.Join(os.TempDir(), "hearth-test-ports") }

// leasePath is the file whose flock reserves port p.
func leasePath(p int) string { return filepath.Join(leaseDir(), strconv.Itoa(p)) }
