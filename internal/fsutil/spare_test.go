package fsutil

import (
	"os"
	"path/filepath"
	"testing"
	"time"
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
