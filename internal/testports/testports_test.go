package testports

import (
	"os"
	"syscall"
	"testing"
)

// A reserved port is held against every other reservation (another test
// process opens the same file and cannot take the lock) until released.
func TestReserveExcludesOthers(t *testing.T) {
	seen := map[int]bool{}
	var leases []*os.File
	for range 200 {
		p, f := Reserve(t)
		if seen[p] {
			t.Fatalf("port %d reserved twice", p)
		}
		seen[p] = true
		leases = append(leases, f)
	}
	other, err := os.Open(leases[0].Name())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		t.Fatalf("a second open of %s took the lock while it was reserved", leases[0].Name())
	}
	for _, f := range leases {
		f.Close()
	}
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("lock of %s not free after release: %v", leases[0].Name(), err)
	}
}
