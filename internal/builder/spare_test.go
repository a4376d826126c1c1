package builder

import (
	"os"
	"testing"
)

func TestRemoveSpareLeavesWorkDirEmpty(t *testing.T) {
	work := t.TempDir()
	var dirs actionDirs
	dir, _, err := dirs.get(work)
	if err != nil {
		t.Fatal(err)
	}
	if err := dirs.put(dir); err != nil {
		t.Fatal(err)
	}
	if names, _ := os.ReadDir(work); len(names) != 1 {
		t.Fatalf("after put: %d entries in the work dir, want the one kept for reuse", len(names))
	}
	if err := dirs.removeSpare(); err != nil {
		t.Fatal(err)
	}
	if names, _ := os.ReadDir(work); len(names) != 0 {
		t.Fatalf("after removeSpare: %v left in the work dir, want it empty", names)
	}
	if again, _, err := dirs.get(work); err != nil || again == dir {
		t.Fatalf("get after removeSpare = %q, %v: want a fresh directory", again, err)
	}
}
