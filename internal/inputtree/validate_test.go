package inputtree

import (
	"context"
	"errors"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
)

func TestLoadRejectsInvalidTrees(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	blob := putBlob(t, disk, []byte("content"))
	// inSub puts d in a subdirectory "sub" of the root, so that messages
	// must name the full path.
	inSub := func(d *repb.Directory) *repb.Directory {
		return &repb.Directory{Directories: []*repb.DirectoryNode{subdir("sub", putDir(t, disk, d))}}
	}
	undecodable := putBlob(t, disk, []byte{0xff, 0xff, 0xff, 0xff})
	for _, tc := range []struct {
		name string
		root *repb.Directory
		want string // in the message
	}{
		{"dot-dot name", &repb.Directory{Files: []*repb.FileNode{file("..", blob, false)}}, `".."`},
		{"dot name", &repb.Directory{Directories: []*repb.DirectoryNode{subdir(".", blob)}}, `"."`},
		{"empty name", inSub(&repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("", "x")}}), `"sub/"`},
		{"slash in name", &repb.Directory{Files: []*repb.FileNode{file("a/b", blob, false)}}, `"a/b"`},
		{"NUL in name", inSub(&repb.Directory{Files: []*repb.FileNode{file("a\x00b", blob, false)}}), `NUL`},
		{"duplicate files", &repb.Directory{Files: []*repb.FileNode{file("x", blob, false), file("x", blob, true)}}, `"x" appears twice`},
		{"file and directory", inSub(&repb.Directory{
			Files:       []*repb.FileNode{file("x", blob, false)},
			Directories: []*repb.DirectoryNode{subdir("x", blob)},
		}), `"sub/x" is both a file and a directory`},
		{"file and symlink", &repb.Directory{
			Files:    []*repb.FileNode{file("a", blob, false), file("x", blob, false)},
			Symlinks: []*repb.SymlinkNode{symlink("x", "a")},
		}, `"x" is both a file and a symlink`},
		{"directory and symlink", &repb.Directory{
			Directories: []*repb.DirectoryNode{subdir("x", blob)},
			Symlinks:    []*repb.SymlinkNode{symlink("x", "a")},
		}, `"x" is both a directory and a symlink`},
		{"unsorted files", &repb.Directory{Files: []*repb.FileNode{file("b", blob, false), file("a", blob, false)}}, `must be sorted`},
		{"unsorted symlinks", &repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("b", "x"), symlink("a", "x")}}, `must be sorted`},
		{"absolute symlink", inSub(&repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("l", "/etc/passwd")}}), `"sub/l"`},
		{"escaping symlink from a subdirectory", inSub(&repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("l", "../../x")}}), `"sub/l"`},
		{"escaping symlink from the root", &repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("l", "a/../../x")}}, `leaves the input root`},
		{"empty symlink target", &repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("l", "")}}, `"l"`},
		{"NUL in symlink target", &repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("l", "a\x00")}}, `NUL`},
		{"bad file digest", inSub(&repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: &repb.Digest{Hash: "xyz", SizeBytes: 3}}}}), `"sub/f"`},
		{"missing file digest", &repb.Directory{Files: []*repb.FileNode{{Name: "f"}}}, `"f"`},
		{"negative size", &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: &repb.Digest{Hash: blob.Hash, SizeBytes: -1}}}}, `negative`},
		{"bad directory digest", &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "d", Digest: &repb.Digest{Hash: strings.ToUpper(blob.Hash), SizeBytes: 7}}}}, `"d"`},
		{"undecodable directory", inSub(&repb.Directory{Directories: []*repb.DirectoryNode{subdir("bad", undecodable)}}), `"sub/bad": blob ` + undecodable.String()},
		{"oversized directory", &repb.Directory{Directories: []*repb.DirectoryNode{subdir("big", digest.Digest{Function: fn, Hash: blob.Hash, Size: MaxDirectoryBytes + 1})}}, `"big"`},
		{"unix_mode beyond 07777", &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: blob.Proto(),
			NodeProperties: &repb.NodeProperties{UnixMode: wrapperspb.UInt32(0o100644)}}}}, `unix_mode`},
		{"invalid mtime", &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: blob.Proto(),
			NodeProperties: &repb.NodeProperties{Mtime: &timestamppb.Timestamp{Nanos: 2e9}}}}}, `mtime`},
		{"empty property name", &repb.Directory{Symlinks: []*repb.SymlinkNode{{Name: "l", Target: "x",
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: ""}}}}}}, `empty name`},
		// REAPI: node properties "must be sorted in lexicographical order by
		// property name".
		{"unsorted node properties", inSub(&repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: blob.Proto(),
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: "b"}, {Name: "a"}}}}}}), `"sub/f": node property "a" comes after "b"`},
		{"duplicate node property", &repb.Directory{Directories: []*repb.DirectoryNode{subdir("d", blob)},
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: "k", Value: "v"}, {Name: "k", Value: "v"}}}}, `listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := putDir(t, disk, tc.root)
			_, err := Load(ctx, disk, fn, root)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %s", err, tc.want)
			}
			// The Execution service's check refuses the same trees, with
			// the same message, and remembers nothing of them.
			c := NewChecker(100, 0)
			cerr := c.Check(ctx, disk, fn, root, "")
			if !errors.Is(cerr, ErrInvalid) || !strings.Contains(cerr.Error(), tc.want) {
				t.Errorf("Checker.Check = %v, want ErrInvalid mentioning %s", cerr, tc.want)
			}
			if c.Len() != 0 {
				t.Errorf("the Checker remembered %d subtrees of an invalid tree", c.Len())
			}
		})
	}
}

func TestLoadAcceptsValidEdgeCases(t *testing.T) {
	disk := newDisk(t)
	blob := putBlob(t, disk, []byte("content"))
	sub := putDir(t, disk, &repb.Directory{
		Files: []*repb.FileNode{file("x", blob, false)},
		Symlinks: []*repb.SymlinkNode{
			symlink("parent", ".."),        // the root itself
			symlink("sibling", "../other"), // dangling is fine
			symlink("up-down", "../sub/./x"),
		},
	})
	root := putDir(t, disk, &repb.Directory{
		// Sorted by UTF-8 bytes: upper case, space and non-ASCII included.
		Files:       []*repb.FileNode{file("A", blob, false), file("a b", blob, false), file("ä", blob, true)},
		Directories: []*repb.DirectoryNode{subdir("sub", sub)},
		Symlinks: []*repb.SymlinkNode{{Name: "z", Target: "sub/x", NodeProperties: &repb.NodeProperties{
			// Sorted by name; a name may repeat with another value.
			Properties: []*repb.NodeProperty{{Name: "a"}, {Name: "b", Value: "2"}, {Name: "b", Value: "1"}},
		}}},
	})
	tr, err := Load(context.Background(), disk, fn, root)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := NewChecker(10, 0).Check(context.Background(), disk, fn, root, "sub"); err != nil {
		t.Errorf("Checker.Check: %v", err)
	}
	if len(tr.Files) != 4 || len(tr.Symlinks) != 4 || len(tr.Dirs) != 2 {
		t.Errorf("loaded %d files, %d symlinks, %d dirs; want 4, 4, 2", len(tr.Files), len(tr.Symlinks), len(tr.Dirs))
	}
}

func TestValidateRelativePath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"", true}, // the input root
		{"a", true},
		{"a/b/c.txt", true},
		{"a b/ä", true},
		{"..a/b..", true}, // dots inside names are just names
		{".hidden", true},
		{"/a", false},
		{"/", false},
		{"a/", false},
		{"a//b", false},
		{"..", false},
		{"a/../b", false},
		{"a/..", false},
		{".", false},
		{"./a", false},
		{"a/./b", false},
		{"a\x00b", false},
	} {
		err := ValidateRelativePath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateRelativePath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "path")) {
			t.Errorf("ValidateRelativePath(%q) = %v, want ErrInvalid naming the path", tc.path, err)
		}
	}
}

func TestCheckTargetBeneath(t *testing.T) {
	for _, tc := range []struct {
		target string
		depth  int
		ok     bool
	}{
		{"x", 0, true},
		{"../x", 0, false},
		{"../x", 1, true},
		{"../../x", 1, false},
		{"../../x", 2, true},
		{"a/../../x", 1, true},
		{"a/../../../x", 1, false},
		{"./.././x", 1, true},
		{"..", 1, true},
		{"../..", 1, false},
		{"a//b/", 0, true},
	} {
		if err := checkTargetBeneath(tc.target, tc.depth); (err == nil) != tc.ok {
			t.Errorf("checkTargetBeneath(%q, %d) = %v, want ok=%v", tc.target, tc.depth, err, tc.ok)
		}
	}
}

func TestLoadCorruptDirectory(t *testing.T) {
	disk := newDisk(t)
	real := &repb.Directory{Symlinks: []*repb.SymlinkNode{symlink("l", "x")}}
	d := dirDigest(t, real)
	// The Disk checks only the size: plant d.Size wrong bytes under d.
	if err := cas.Put(context.Background(), disk, d, make([]byte, d.Size)); err != nil {
		t.Fatal(err)
	}
	_, err := Load(context.Background(), disk, fn, d)
	if !errors.Is(err, filecache.ErrCorrupt) {
		t.Fatalf("Load of a corrupt Directory = %v, want ErrCorrupt", err)
	}
}
