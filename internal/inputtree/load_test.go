package inputtree

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

func TestLoadRecordsTheTree(t *testing.T) {
	disk := newDisk(t)
	tool := putBlob(t, disk, []byte("#!/bin/sh\necho tool\n"))
	src := putBlob(t, disk, []byte("int main() {}\n"))
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 10, time.UTC)
	shared := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("s", src, false)}})
	bin := putDir(t, disk, &repb.Directory{
		Files: []*repb.FileNode{{Name: "tool", Digest: tool.Proto(), IsExecutable: true,
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: ToolInputProperty}}}}},
		Directories:    []*repb.DirectoryNode{subdir("shared", shared)},
		NodeProperties: &repb.NodeProperties{UnixMode: wrapperspb.UInt32(0o750)},
	})
	root := putDir(t, disk, &repb.Directory{
		Files: []*repb.FileNode{{Name: "main.c", Digest: src.Proto(), NodeProperties: &repb.NodeProperties{
			Mtime: timestamppb.New(mtime), UnixMode: wrapperspb.UInt32(0o644),
			Properties: []*repb.NodeProperty{{Name: "k", Value: "v"}},
		}}},
		Directories: []*repb.DirectoryNode{subdir("bin", bin), subdir("shared", shared)},
		Symlinks:    []*repb.SymlinkNode{symlink("t", "bin/tool")},
	})
	tr, err := Load(context.Background(), disk, fn, root)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if tr.Root != root {
		t.Errorf("Root = %v, want %v", tr.Root, root)
	}
	var dirs, files []string
	for _, d := range tr.Dirs {
		dirs = append(dirs, d.Path)
	}
	for _, f := range tr.Files {
		files = append(files, f.Path)
	}
	// Breadth first; a Directory referenced twice appears at both paths.
	if want := []string{"", "bin", "shared", "bin/shared"}; !slices.Equal(dirs, want) {
		t.Errorf("Dirs = %q, want %q", dirs, want)
	}
	if want := []string{"main.c", "bin/tool", "shared/s", "bin/shared/s"}; !slices.Equal(files, want) {
		t.Errorf("Files = %q, want %q", files, want)
	}
	byPath := map[string]File{}
	for _, f := range tr.Files {
		byPath[f.Path] = f
	}
	toolFile := byPath["bin/tool"]
	if !toolFile.ToolInput || !toolFile.Executable || toolFile.Digest != tool {
		t.Errorf("bin/tool = %+v, want an executable tool input with digest %v", toolFile, tool)
	}
	mainFile := byPath["main.c"]
	p := mainFile.Properties
	if mainFile.ToolInput || mainFile.Executable || p == nil || !p.MTime.Equal(mtime) || !p.HasUnixMode || p.UnixMode != 0o644 ||
		!slices.Equal(p.Properties, []Property{{"k", "v"}}) {
		t.Errorf("main.c = %+v, properties %+v", mainFile, p)
	}
	if byPath["shared/s"].Properties != nil {
		t.Error("a file without properties has non-nil Properties")
	}
	if bp := tr.Dirs[1].Properties; bp == nil || bp.UnixMode != 0o750 {
		t.Errorf("bin's directory properties = %+v", bp)
	}
	if len(tr.Symlinks) != 1 || tr.Symlinks[0] != (Symlink{Path: "t", Target: "bin/tool"}) {
		t.Errorf("Symlinks = %+v", tr.Symlinks)
	}
}

func TestLoadReportsAllMissingDirectories(t *testing.T) {
	disk := newDisk(t)
	absent := func(name string) digest.Digest {
		return dirDigest(t, &repb.Directory{Symlinks: []*repb.SymlinkNode{symlink(name, "x")}})
	}
	m1, m2, m3 := absent("one"), absent("two"), absent("three")
	present := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("deeper", m2)}})
	root := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{
		subdir("a", m1), subdir("b", present), subdir("c", m3), subdir("d", m1),
	}})
	_, err := Load(context.Background(), disk, fn, root)
	var me *cas.MissingError
	if !errors.As(err, &me) {
		t.Fatalf("Load = %v, want a MissingError", err)
	}
	got := slices.Clone(me.Digests)
	want := []digest.Digest{m1, m2, m3}
	slices.SortFunc(got, func(a, b digest.Digest) int { return strings.Compare(a.Hash, b.Hash) })
	slices.SortFunc(want, func(a, b digest.Digest) int { return strings.Compare(a.Hash, b.Hash) })
	if !slices.Equal(got, want) {
		t.Errorf("missing = %v, want %v (each once)", me.Digests, want)
	}

	_, err = Load(context.Background(), disk, fn, m1)
	if !errors.As(err, &me) || !slices.Equal(me.Digests, []digest.Digest{m1}) {
		t.Errorf("Load of an absent root = %v, want MissingError[%v]", err, m1)
	}
}

func TestMissingFiles(t *testing.T) {
	disk := newDisk(t)
	have := putBlob(t, disk, []byte("have"))
	lost1 := digest.Compute(fn, []byte("lost 1"))
	lost2 := digest.Compute(fn, []byte("lost 2"))
	sub := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("again", lost1, true)}})
	root := putDir(t, disk, &repb.Directory{
		Files: []*repb.FileNode{
			file("a", have, false), file("b", lost1, false), file("c", lost2, false),
			file("empty", digest.Empty(fn), false),
		},
		Directories: []*repb.DirectoryNode{subdir("sub", sub)},
	})
	tr, err := Load(context.Background(), disk, fn, root)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	err = tr.MissingFiles(context.Background(), disk)
	var me *cas.MissingError
	if !errors.As(err, &me) || !slices.Equal(me.Digests, []digest.Digest{lost1, lost2}) {
		t.Fatalf("MissingFiles = %v, want MissingError[%v %v]", err, lost1, lost2)
	}
	putBlob(t, disk, []byte("lost 1"))
	putBlob(t, disk, []byte("lost 2"))
	if err := tr.MissingFiles(context.Background(), disk); err != nil {
		t.Errorf("MissingFiles with everything present = %v", err)
	}
}

func TestLoadGuardsAgainstBombs(t *testing.T) {
	disk := newDisk(t)
	blob := putBlob(t, disk, []byte("x"))

	// 2^22 paths from 23 small protos: each level references the one
	// below twice.
	d := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("f", blob, false)}})
	for range 22 {
		d = putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("a", d), subdir("b", d)}})
	}
	start := time.Now()
	_, err := Load(context.Background(), disk, fn, d)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "more than") {
		t.Errorf("Load of a node bomb = %v, want ErrInvalid about the node limit", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("rejecting the bomb took %v: it was expanded before being counted", el)
	}

	// A chain one level deeper than allowed, and its allowed sub-chain.
	var chain []digest.Digest // chain[i] is i levels deep
	chain = append(chain, putDir(t, disk, &repb.Directory{}))
	for i := 1; i <= MaxDepth+1; i++ {
		chain = append(chain, putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("d", chain[i-1])}}))
	}
	if _, err := Load(context.Background(), disk, fn, chain[MaxDepth+1]); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "deep") {
		t.Errorf("Load of a %d-deep chain = %v, want ErrInvalid about depth", MaxDepth+1, err)
	}
	tr, err := Load(context.Background(), disk, fn, chain[MaxDepth])
	if err != nil {
		t.Fatalf("Load of a %d-deep chain: %v", MaxDepth, err)
	}
	if len(tr.Dirs) != MaxDepth+1 {
		t.Errorf("%d dirs, want %d", len(tr.Dirs), MaxDepth+1)
	}
}

func TestLoadRejectsBadRoot(t *testing.T) {
	disk := newDisk(t)
	if _, err := Load(context.Background(), disk, fn, digest.Digest{Hash: "nope", Size: 1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Load with a malformed root digest = %v, want ErrInvalid", err)
	}
	if _, err := Load(context.Background(), disk, repb.DigestFunction_MD5, digest.Empty(fn)); !errors.Is(err, ErrInvalid) {
		t.Errorf("Load with an unsupported digest function = %v, want ErrInvalid", err)
	}
	// The empty blob is the empty Directory.
	tr, err := Load(context.Background(), disk, fn, digest.Empty(fn))
	if err != nil || len(tr.Dirs) != 1 || len(tr.Files) != 0 {
		t.Errorf("Load of the empty Directory = %+v, %v", tr, err)
	}
}
