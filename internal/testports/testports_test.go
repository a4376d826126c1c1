package testports

import (
	"os"
	"syscall"
	"testing"
)

// A reserved port is held against every other reservation (another test
// process opens the same file and cannot take the lock) until the cleanup
// of the test that reserved it.
func TestReserveExcludesOthers(t *testing.T) {
	var first int
	t.Run("held", func(t *testing.T) {
		seen := map[int]bool{}
		for range 200 {
			p := Reserve(t)
			if seen[p] {
				t.Fatalf("port %d reserved twice", p)
			}
			seen[p] = true
			if first == 0 {
				first = p
			}
		}
		other, err := os.Open(leasePath(first))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			t.Fatalf("a second open of %s took the lock while it was reserved", leasePath(first))
		}
	})
	other, err := os.Open(leasePath(first))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("lock of %s not free after the reserving test's cleanup: %v", leasePath(first), err)
	}
}
