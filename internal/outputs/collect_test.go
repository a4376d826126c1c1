package outputs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
)

func TestCollectFiles(t *testing.T) {
	for _, fn := range digest.Supported {
		t.Run(fn.String(), func(t *testing.T) {
			root := t.TempDir()
			layout(t, root, map[string]string{
				"plain.txt":     "hello",
				"tool":          "x:#!/bin/sh\n",
				"empty":         "",
				"deep/er/c.txt": "nested",
			})
			store := newStore(t)
			cmd := &repb.Command{OutputPaths: []string{"deep/er/c.txt", "empty", "plain.txt", "tool"}}
			res, err := Collect(context.Background(), store, fn, root, cmd)
			if err != nil {
				t.Fatalf("Collect: %v", err)
			}
			want := map[string]struct {
				content string
				exec    bool
			}{
				"deep/er/c.txt": {"nested", false},
				"empty":         {"", false},
				"plain.txt":     {"hello", false},
				"tool":          {"#!/bin/sh\n", true},
			}
			if len(res.GetOutputFiles()) != len(want) {
				t.Fatalf("got %d output files, want %d: %v", len(res.GetOutputFiles()), len(want), res)
			}
			for _, f := range res.GetOutputFiles() {
				w, ok := want[f.GetPath()]
				if !ok {
					t.Fatalf("unexpected output %q", f.GetPath())
				}
				if got := digest.Compute(fn, []byte(w.content)); got.Hash != f.GetDigest().GetHash() || got.Size != f.GetDigest().GetSizeBytes() {
					t.Errorf("%s: digest %v, want %s", f.GetPath(), f.GetDigest(), got)
				}
				if f.GetIsExecutable() != w.exec {
					t.Errorf("%s: is_executable %v, want %v", f.GetPath(), f.GetIsExecutable(), w.exec)
				}
				if got := string(get(t, store, f.GetDigest(), fn)); got != w.content {
					t.Errorf("%s: stored %q, want %q", f.GetPath(), got, w.content)
				}
			}
			if len(res.GetOutputDirectories())+len(res.GetOutputSymlinks())+len(res.GetOutputFileSymlinks()) != 0 {
				t.Errorf("unexpected other outputs: %v", res)
			}
		})
	}
}

func TestCollectUploadsOnlyMissingBlobsOnce(t *testing.T) {
	root := t.TempDir()
	layout(t, root, map[string]string{
		"a":       "same",
		"b":       "same",
		"d/c":     "same",
		"present": "already stored",
	})
	store := newStore(t)
	if _, err := UploadBytes(context.Background(), store, digest.SHA256, []byte("already stored")); err != nil {
		t.Fatal(err)
	}
	store.creates.Store(0)
	cmd := &repb.Command{OutputPaths: []string{"a", "b", "d", "present"}}
	if _, err := Collect(context.Background(), store, digest.SHA256, root, cmd); err != nil {
		t.Fatal(err)
	}
	// "same" once, and the Tree of d; neither "present" nor a duplicate.
	if got := store.creates.Load(); got != 2 {
		t.Errorf("%d blobs written, want 2 (the shared content once, the Tree)", got)
	}
	store.creates.Store(0)
	if _, err := Collect(context.Background(), store, digest.SHA256, root, cmd); err != nil {
		t.Fatal(err)
	}
	if got := store.creates.Load(); got != 0 {
		t.Errorf("second Collect wrote %d blobs, want 0", got)
	}
}

func TestCollectDirectoryTree(t *testing.T) {
	const fn = digest.SHA256
	files := map[string]string{
		"out/bar":             "bar content",
		"out/foo/baz":         "x:baz content",
		"out/x/same/f":        "dup",
		"out/y/same/f":        "dup",
		"out/emptydir/":       "",
		"out/link":            "->foo/baz",
		"out/foo/dangling":    "->../nowhere",
		"out/a/x/":            "",
		"out/b/c/x/":          "",
		"out/zz/deeper/still": "leaf",
	}
	root := t.TempDir()
	layout(t, root, files)
	store := newStore(t)
	cmd := &repb.Command{OutputPaths: []string{"out"}}
	res, err := Collect(context.Background(), store, fn, root, cmd)
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	if len(res.GetOutputDirectories()) != 1 {
		t.Fatalf("got %v, want one output directory", res)
	}
	od := res.GetOutputDirectories()[0]
	if od.GetPath() != "out" || !od.GetIsTopologicallySorted() {
		t.Errorf("OutputDirectory %v: want path \"out\", is_topologically_sorted", od)
	}
	if od.GetRootDirectoryDigest() != nil {
		t.Errorf("TREE_ONLY: root_directory_digest set: %v", od.GetRootDirectoryDigest())
	}
	treeBytes := get(t, store, od.GetTreeDigest(), fn)
	tree := getTree(t, store, od.GetTreeDigest(), fn)
	// The hand-written encoding is exactly protobuf's.
	if again, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(tree); string(again) != string(treeBytes) {
		t.Errorf("Tree bytes differ from the canonical encoding of the same message")
	}
	checkTopological(t, fn, tree)

	r := tree.GetRoot()
	if got, want := names(r.GetFiles()), []string{"bar"}; !slices.Equal(got, want) {
		t.Errorf("root files %v, want %v", got, want)
	}
	if got, want := names(r.GetDirectories()), []string{"a", "b", "emptydir", "foo", "x", "y", "zz"}; !slices.Equal(got, want) {
		t.Errorf("root directories %v, want %v", got, want)
	}
	if got, want := names(r.GetSymlinks()), []string{"link"}; !slices.Equal(got, want) {
		t.Errorf("root symlinks %v, want %v", got, want)
	}
	if r.GetSymlinks()[0].GetTarget() != "foo/baz" {
		t.Errorf("symlink targets %v", r.GetSymlinks())
	}
	if got := string(get(t, store, r.GetFiles()[0].GetDigest(), fn)); got != "bar content" {
		t.Errorf("bar: %q", got)
	}
	foo := childByDigest(t, fn, tree, r.GetDirectories()[3])
	if len(foo.GetFiles()) != 1 || foo.GetFiles()[0].GetName() != "baz" || !foo.GetFiles()[0].GetIsExecutable() {
		t.Errorf("foo: %v, want executable baz", foo)
	}
	if len(foo.GetSymlinks()) != 1 || foo.GetSymlinks()[0].GetTarget() != "../nowhere" {
		t.Errorf("foo symlinks: %v", foo.GetSymlinks())
	}
	// x and y are identical; so are the empty a/x, b/c/x and emptydir, and
	// so, therefore, are a and b/c. Each distinct Directory is stored once:
	// a(=c), b, empty, foo, x(=y), same, zz, deeper => 8 children. a is a
	// child of both the root and b, which checkTopological has checked.
	if r.GetDirectories()[4].GetDigest().GetHash() != r.GetDirectories()[5].GetDigest().GetHash() {
		t.Errorf("x and y have different digests")
	}
	if n := len(tree.GetChildren()); n != 8 {
		t.Errorf("%d children, want 8 distinct directories", n)
	}

	// Stable: a second run, and the same tree built elsewhere, give the
	// same Tree digest.
	res2, err := Collect(context.Background(), store, fn, root, cmd)
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	layout(t, other, files)
	res3, err := Collect(context.Background(), newStore(t), fn, other, cmd)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*repb.ActionResult{res2, res3} {
		if !proto.Equal(r.GetOutputDirectories()[0].GetTreeDigest(), od.GetTreeDigest()) {
			t.Errorf("Tree digest %v differs from %v", r.GetOutputDirectories()[0].GetTreeDigest(), od.GetTreeDigest())
		}
	}
}

func TestCollectDirectoryFormats(t *testing.T) {
	const fn = digest.BLAKE3
	root := t.TempDir()
	layout(t, root, map[string]string{"d/f": "file", "d/s/g": "x:g", "d/s/t/h": "h"})
	for _, tc := range []struct {
		format   repb.Command_OutputDirectoryFormat
		wantDirs bool
	}{
		{repb.Command_TREE_ONLY, false},
		{repb.Command_DIRECTORY_ONLY, true},
		{repb.Command_TREE_AND_DIRECTORY, true},
		{repb.Command_OutputDirectoryFormat(42), false}, // unknown: TREE_ONLY
	} {
		t.Run(tc.format.String(), func(t *testing.T) {
			store := newStore(t)
			cmd := &repb.Command{OutputPaths: []string{"d"}, OutputDirectoryFormat: tc.format}
			res, err := Collect(context.Background(), store, fn, root, cmd)
			if err != nil {
				t.Fatal(err)
			}
			od := res.GetOutputDirectories()[0]
			tree := getTree(t, store, od.GetTreeDigest(), fn)
			if !tc.wantDirs {
				if od.GetRootDirectoryDigest() != nil {
					t.Fatalf("root_directory_digest set for %v", tc.format)
				}
				return
			}
			rd := dirDigest(t, fn, tree.GetRoot())
			if od.GetRootDirectoryDigest().GetHash() != rd.Hash || od.GetRootDirectoryDigest().GetSizeBytes() != rd.Size {
				t.Fatalf("root_directory_digest %v, want the Tree root's %s", od.GetRootDirectoryDigest(), rd)
			}
			// Walk the hierarchy from the root through the store alone.
			var walk func(d *repb.Digest) int
			walk = func(d *repb.Digest) int {
				dir := &repb.Directory{}
				if err := proto.Unmarshal(get(t, store, d, fn), dir); err != nil {
					t.Fatal(err)
				}
				n := len(dir.GetFiles())
				for _, sub := range dir.GetDirectories() {
					n += walk(sub.GetDigest())
				}
				return n
			}
			if n := walk(od.GetRootDirectoryDigest()); n != 3 {
				t.Errorf("found %d files through the Directory hierarchy, want 3", n)
			}
		})
	}
}

func TestCollectWorkingDirectory(t *testing.T) {
	root := t.TempDir()
	layout(t, root, map[string]string{
		"sub/wd/out.txt": "in wd",
		"sub/wd/d/f":     "f",
		"out.txt":        "at root: must not be collected",
	})
	store := newStore(t)
	cmd := &repb.Command{WorkingDirectory: "sub/wd", OutputPaths: []string{"d", "out.txt"}}
	res, err := Collect(context.Background(), store, digest.SHA256, root, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetOutputFiles()) != 1 || res.GetOutputFiles()[0].GetPath() != "out.txt" {
		t.Fatalf("output files %v", res.GetOutputFiles())
	}
	if got := string(get(t, store, res.GetOutputFiles()[0].GetDigest(), digest.SHA256)); got != "in wd" {
		t.Errorf("collected %q from the wrong directory", got)
	}
	if len(res.GetOutputDirectories()) != 1 || res.GetOutputDirectories()[0].GetPath() != "d" {
		t.Fatalf("output directories %v", res.GetOutputDirectories())
	}
}

func TestCollectWholeRoot(t *testing.T) {
	root := t.TempDir()
	layout(t, root, map[string]string{"a": "a", "wd/b": "b"})
	for _, wd := range []string{"", "wd"} {
		store := newStore(t)
		cmd := &repb.Command{WorkingDirectory: wd, OutputDirectories: []string{""}}
		res, err := Collect(context.Background(), store, digest.SHA256, root, cmd)
		if err != nil {
			t.Fatalf("wd %q: %v", wd, err)
		}
		od := res.GetOutputDirectories()
		if len(od) != 1 || od[0].GetPath() != "" {
			t.Fatalf("wd %q: %v", wd, res)
		}
		tree := getTree(t, store, od[0].GetTreeDigest(), digest.SHA256)
		want := []string{"a"}
		if wd != "" {
			want = []string{"b"}
		}
		if got := names(tree.GetRoot().GetFiles()); !slices.Equal(got, want) {
			t.Errorf("wd %q: root files %v, want %v", wd, got, want)
		}
	}
}

func TestCollectLegacyFields(t *testing.T) {
	root := t.TempDir()
	layout(t, root, map[string]string{
		"file":        "f",
		"dir/g":       "g",
		"filelink":    "->file",
		"dirlink":     "->dir",
		"abslink":     "->/etc/passwd",
		"dangling":    "->gone",
		"linktodir":   "->dir",
		"linktofile":  "->file",
		"legacy-only": "l",
	})
	store := newStore(t)
	ctx := context.Background()

	t.Run("output_paths supersede", func(t *testing.T) {
		cmd := &repb.Command{OutputPaths: []string{"file"}, OutputFiles: []string{"legacy-only"}, OutputDirectories: []string{"dir"}}
		res, err := Collect(ctx, store, digest.SHA256, root, cmd)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.GetOutputFiles()) != 1 || res.GetOutputFiles()[0].GetPath() != "file" || len(res.GetOutputDirectories()) != 0 {
			t.Errorf("legacy fields were not ignored: %v", res)
		}
	})
	t.Run("legacy kinds and deprecated symlink fields", func(t *testing.T) {
		cmd := &repb.Command{
			OutputFiles:       []string{"dangling", "file", "filelink"},
			OutputDirectories: []string{"dir", "dirlink"},
		}
		res, err := Collect(ctx, store, digest.SHA256, root, cmd)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.GetOutputSymlinks()) != 0 {
			t.Errorf("output_symlinks filled for a legacy Command: %v", res.GetOutputSymlinks())
		}
		var fileLinks []string
		for _, s := range res.GetOutputFileSymlinks() {
			fileLinks = append(fileLinks, s.GetPath()+"->"+s.GetTarget())
		}
		if want := []string{"dangling->gone", "filelink->file"}; !slices.Equal(fileLinks, want) {
			t.Errorf("output_file_symlinks %v, want %v", fileLinks, want)
		}
		if d := res.GetOutputDirectorySymlinks(); len(d) != 1 || d[0].GetPath() != "dirlink" || d[0].GetTarget() != "dir" {
			t.Errorf("output_directory_symlinks %v", d)
		}
		if len(res.GetOutputFiles()) != 1 || len(res.GetOutputDirectories()) != 1 {
			t.Errorf("files %v dirs %v", res.GetOutputFiles(), res.GetOutputDirectories())
		}
	})
	for _, tc := range []struct {
		name string
		cmd  *repb.Command
	}{
		{"output file is a directory", &repb.Command{OutputFiles: []string{"dir"}}},
		{"output directory is a file", &repb.Command{OutputDirectories: []string{"file"}}},
		{"output file links to a directory", &repb.Command{OutputFiles: []string{"linktodir"}}},
		{"output directory links to a file", &repb.Command{OutputDirectories: []string{"linktofile"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Collect(ctx, store, digest.SHA256, root, tc.cmd)
			if !errors.Is(err, ErrUnexpectedType) {
				t.Fatalf("got %v, want ErrUnexpectedType", err)
			}
		})
	}
}

func TestCollectMissingOutputs(t *testing.T) {
	root := t.TempDir()
	layout(t, root, map[string]string{"file": "f", "present": "p"})
	cmd := &repb.Command{OutputPaths: []string{"absent", "file/under-a-file", "no/such/dir", "present"}}
	res, err := Collect(context.Background(), newStore(t), digest.SHA256, root, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetOutputFiles()) != 1 || res.GetOutputFiles()[0].GetPath() != "present" ||
		len(res.GetOutputDirectories())+len(res.GetOutputSymlinks()) != 0 {
		t.Errorf("got %v, want only \"present\"", res)
	}
	legacy := &repb.Command{OutputFiles: []string{"absent"}, OutputDirectories: []string{"gone"}}
	res, err = Collect(context.Background(), newStore(t), digest.SHA256, root, legacy)
	if err != nil || proto.Size(res) != 0 {
		t.Errorf("legacy missing outputs: %v, %v; want an empty result", res, err)
	}
}

func TestCollectSpecialFiles(t *testing.T) {
	root := t.TempDir()
	layout(t, root, map[string]string{"d/f": "f"})
	if err := unix.Mkfifo(filepath.Join(root, "d", "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := newStore(t)
	res, err := Collect(context.Background(), store, digest.SHA256, root, &repb.Command{OutputPaths: []string{"d"}})
	if err != nil {
		t.Fatal(err)
	}
	tree := getTree(t, store, res.GetOutputDirectories()[0].GetTreeDigest(), digest.SHA256)
	if got := names(tree.GetRoot().GetFiles()); !slices.Equal(got, []string{"f"}) {
		t.Errorf("files %v: the pipe must be left out", got)
	}
	_, err = Collect(context.Background(), store, digest.SHA256, root, &repb.Command{OutputPaths: []string{"fifo"}})
	if !errors.Is(err, ErrUnexpectedType) {
		t.Errorf("pipe as output: %v, want ErrUnexpectedType", err)
	}
}

func TestCollectNodeProperties(t *testing.T) {
	root := t.TempDir()
	layout(t, root, map[string]string{"f": "x:f", "d/g": "g", "l": "->f"})
	mtime := int64(1_600_000_000)
	for _, p := range []string{"f", "d", "d/g"} {
		if err := os.Chtimes(filepath.Join(root, p), time0(mtime), time0(mtime)); err != nil {
			t.Fatal(err)
		}
	}
	store := newStore(t)
	cmd := &repb.Command{OutputPaths: []string{"d", "f", "l"}, OutputNodeProperties: []string{PropertyMtime, PropertyUnixMode}}
	res, err := Collect(context.Background(), store, digest.SHA256, root, cmd)
	if err != nil {
		t.Fatal(err)
	}
	np := res.GetOutputFiles()[0].GetNodeProperties()
	if np.GetMtime().GetSeconds() != mtime || np.GetUnixMode().GetValue() != 0o755 {
		t.Errorf("file node properties %v, want mtime %d mode 0755", np, mtime)
	}
	if res.GetOutputSymlinks()[0].GetNodeProperties().GetMtime() == nil {
		t.Errorf("symlink has no mtime")
	}
	tree := getTree(t, store, res.GetOutputDirectories()[0].GetTreeDigest(), digest.SHA256)
	if got := tree.GetRoot().GetNodeProperties().GetMtime().GetSeconds(); got != mtime {
		t.Errorf("directory mtime %d, want %d", got, mtime)
	}
	if got := tree.GetRoot().GetFiles()[0].GetNodeProperties().GetUnixMode().GetValue(); got != 0o644 {
		t.Errorf("g mode %#o, want 0644", got)
	}

	cmd.OutputNodeProperties = []string{"color"}
	if _, err := Collect(context.Background(), store, digest.SHA256, root, cmd); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown node property: %v, want ErrInvalid", err)
	}
}
