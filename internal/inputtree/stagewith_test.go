package inputtree

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
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
