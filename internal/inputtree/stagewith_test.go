package inputtree

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/fsutil"
)

// A persistent worker's workspace keeps its tool files between requests:
// staging into it skips them and enters existing directories, but still never
// follows a symlink planted where a directory should be.
func TestStageWithReuseAndSkip(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	cache, _ := newCache(t, disk, 0)
	tool := putBlob(t, disk, []byte("tool v1"))
	src := putBlob(t, disk, []byte("source"))
	sub := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("Main.java", src, false)}})
	root := putDir(t, disk, &repb.Directory{
		Files:       []*repb.FileNode{file("compiler", tool, true)},
		Directories: []*repb.DirectoryNode{subdir("src", sub)},
	})
	tr, err := Load(ctx, disk, fn, root)
	if err != nil {
		t.Fatal(err)
	}
	ws := scratch(t)
	// The tool is already there (with other content, to prove it is kept),
	// and so is the src directory.
	if err := os.WriteFile(filepath.Join(ws, "compiler"), []byte("kept"), 0o555); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(ws, "src"), 0o755); err != nil {
		t.Fatal(err)
	}
	skipTool := func(f *File) bool { return f.Path == "compiler" }
	if err := Stage(ctx, tr, cache, ws); err == nil {
		t.Fatal("Stage into a non-empty directory succeeded without Reuse")
	}
	if err := StageWith(ctx, tr, cache, ws, StageOptions{Skip: skipTool, Reuse: true}); err != nil {
		t.Fatalf("StageWith: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(ws, "compiler")); string(got) != "kept" {
		t.Errorf("tool file replaced: %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(ws, "src", "Main.java")); string(got) != "source" {
		t.Errorf("input not staged: %q", got)
	}

	planted := scratch(t)
	ws2 := scratch(t)
	if err := os.Symlink(planted, filepath.Join(ws2, "src")); err != nil {
		t.Fatal(err)
	}
	if err := StageWith(ctx, tr, cache, ws2, StageOptions{Skip: skipTool, Reuse: true}); err == nil {
		t.Fatal("StageWith entered a symlink")
	}
	if ents, _ := os.ReadDir(planted); len(ents) != 0 {
		t.Errorf("StageWith wrote %d entries through a symlink", len(ents))
	}
}

// With Reuse and Skip, a directory holding only skipped (present) files is
// not entered again, while everything a request needs is still made: a
// non-skipped file beside skipped ones, an empty directory (also one below a
// directory of skipped files), and the rest of the tree.
func TestStageWithSkipsPresentSubtrees(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	cache, _ := newCache(t, disk, 0)
	tool := putBlob(t, disk, []byte("tool"))
	src := putBlob(t, disk, []byte("source"))
	empty := putDir(t, disk, &repb.Directory{})
	lib := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("a.js", tool, false)}})
	mixed := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("a.js", tool, false), file("x.ts", src, false)}})
	deep := putDir(t, disk, &repb.Directory{
		Files:       []*repb.FileNode{file("a.js", tool, false)},
		Directories: []*repb.DirectoryNode{subdir("empty", empty)},
	})
	tools := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{
		subdir("deep", deep), subdir("empty", empty), subdir("lib", lib), subdir("mixed", mixed),
	}})
	srcDir := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("x.ts", src, false)}})
	root := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("src", srcDir), subdir("tools", tools)}})
	tr, err := Load(ctx, disk, fn, root)
	if err != nil {
		t.Fatal(err)
	}
	ws := scratch(t)
	if err := Stage(ctx, tr, cache, ws); err != nil {
		t.Fatal(err)
	}
	// What a persistent worker's workspace looks like between requests: the
	// tool files and their directories, nothing else.
	for _, p := range []string{"src", "tools/empty", "tools/deep/empty", "tools/mixed/x.ts"} {
		if err := os.RemoveAll(filepath.Join(ws, p)); err != nil {
			t.Fatal(err)
		}
	}
	// A mode only staging changes tells whether a directory was entered.
	for _, p := range []string{"tools", "tools/lib", "tools/deep", "tools/mixed"} {
		if err := os.Chmod(filepath.Join(ws, p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	skip := func(f *File) bool { return filepath.Base(f.Path) == "a.js" }
	if err := StageWith(ctx, tr, cache, ws, StageOptions{Skip: skip, Reuse: true}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"src/x.ts", "tools/mixed/x.ts"} {
		if got, err := os.ReadFile(filepath.Join(ws, p)); err != nil || string(got) != "source" {
			t.Errorf("%s = %q, %v; want it staged", p, got, err)
		}
	}
	for _, p := range []string{"tools/empty", "tools/deep/empty"} {
		if fi, err := os.Stat(filepath.Join(ws, p)); err != nil || !fi.IsDir() {
			t.Errorf("empty directory %s not recreated: %v", p, err)
		}
	}
	for p, want := range map[string]os.FileMode{"tools": 0o755, "tools/deep": 0o755, "tools/mixed": 0o755, "tools/lib": 0o700} {
		fi, err := os.Stat(filepath.Join(ws, p))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("mode of %s = %v, want %v (entered: 0755; left alone: 0700)", p, got, want)
		}
	}
}

// With spare directories, the directories staging makes are spares renamed
// into place (mode 0755, whatever the umask), existing ones are entered as
// before, and every input is staged.
func TestStageWithSpareDirs(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	cache, _ := newCache(t, disk, 0)
	src := putBlob(t, disk, []byte("source"))
	deep := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("b.ts", src, false)}})
	sub := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("a.ts", src, false)}, Directories: []*repb.DirectoryNode{subdir("deep", deep)}})
	root := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("lib", sub), subdir("old", sub)}})
	tr, err := Load(ctx, disk, fn, root)
	if err != nil {
		t.Fatal(err)
	}
	base := scratch(t)
	ws, spareDir := filepath.Join(base, "ws"), filepath.Join(base, "spares")
	for _, d := range []string{ws, spareDir, filepath.Join(ws, "old")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spares := fsutil.NewSpareDirs(spareDir, 4)
	defer spares.Close()
	spareInodes := map[uint64]bool{}
	for deadline := time.Now().Add(5 * time.Second); len(spareInodes) < 4; {
		if time.Now().After(deadline) {
			t.Fatal("no spare directories were made")
		}
		ents, _ := os.ReadDir(spareDir)
		for _, e := range ents {
			spareInodes[inode(t, filepath.Join(spareDir, e.Name()))] = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := StageWith(ctx, tr, cache, ws, StageOptions{Reuse: true, Dirs: spares}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"lib/a.ts", "lib/deep/b.ts", "old/a.ts", "old/deep/b.ts"} {
		if got, err := os.ReadFile(filepath.Join(ws, p)); err != nil || string(got) != "source" {
			t.Errorf("%s = %q, %v", p, got, err)
		}
	}
	for _, p := range []string{"lib", "lib/deep"} {
		fi, err := os.Stat(filepath.Join(ws, p))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Fatalf("%s: %v, %v; want a 0755 directory", p, fi, err)
		}
		if !spareInodes[inode(t, filepath.Join(ws, p))] {
			t.Errorf("%s was made, not a spare renamed into place", p)
		}
	}
	if spareInodes[inode(t, filepath.Join(ws, "old"))] {
		t.Error("an existing directory was replaced by a spare")
	}
}
