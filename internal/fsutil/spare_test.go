package fsutil

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func waitEntries(t *testing.T, dir string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(listDir(t, dir)) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %v, want %d files", dir, listDir(t, dir), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSpareFiles(t *testing.T) {
	dir := t.TempDir()
	s := NewSpareFiles(dir, "up-*", 3)
	waitEntries(t, dir, 3) // created ahead of need
	f, err := s.Create()
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != 0 || filepath.Dir(f.Name()) != dir {
		t.Fatalf("spare %s: %v, %v", f.Name(), fi, err)
	}
	if _, err := f.WriteString("blob"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Rename(f.Name(), filepath.Join(dir, "blob")); err != nil {
		t.Fatal(err)
	}
	waitEntries(t, dir, 4) // refilled: three spares and the blob
	s.Close()
	if got := listDir(t, dir); len(got) != 1 || got[0] != "blob" {
		t.Fatalf("after Close the directory holds %v, want only the blob", got)
	}
}

// Without a directory there is nothing to create: Create reports the error
// as os.CreateTemp would, and Close still returns.
func TestSpareFilesMissingDirectory(t *testing.T) {
	s := NewSpareFiles(filepath.Join(t.TempDir(), "gone"), "up-*", 2)
	if _, err := s.Create(); !os.IsNotExist(err) {
		t.Fatalf("Create in a missing directory: %v, want not-exist", err)
	}
	s.Close()
}

// PlaceAt puts a spare 0755 directory at a name, never over what is there
// (EEXIST, and the spare stays a spare), and a nil SpareDirs places nothing.
func TestSpareDirsPlaceAt(t *testing.T) {
	spareDir, target := t.TempDir(), t.TempDir()
	d := NewSpareDirs(spareDir, 2)
	defer d.Close()
	waitEntries(t, spareDir, 2)
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if placed, err := d.PlaceAt(fd, "new"); !placed || err != nil {
		t.Fatalf("PlaceAt(new) = %v, %v", placed, err)
	}
	if st, err := os.Lstat(filepath.Join(target, "new")); err != nil || !st.IsDir() || st.Mode().Perm() != 0o755 {
		t.Fatalf("new: %v, %v", st, err)
	}
	if err := os.WriteFile(filepath.Join(target, "taken"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitEntries(t, spareDir, 2) // refilled
	if placed, err := d.PlaceAt(fd, "taken"); placed || !errors.Is(err, unix.EEXIST) {
		t.Fatalf("PlaceAt over a file = %v, %v; want EEXIST", placed, err)
	}
	if data, err := os.ReadFile(filepath.Join(target, "taken")); err != nil || string(data) != "x" {
		t.Fatalf("the file in the way was touched: %q, %v", data, err)
	}
	waitEntries(t, spareDir, 2) // the spare came back
	var none *SpareDirs
	if placed, err := none.PlaceAt(fd, "other"); placed || err != nil {
		t.Fatalf("nil PlaceAt = %v, %v", placed, err)
	}
}
