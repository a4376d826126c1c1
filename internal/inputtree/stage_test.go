package inputtree

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// sampleTree stores a tree with nested directories, plain and executable
// files, one digest at two paths in both modes, empty files, symlinks and
// non-ASCII names with spaces. It returns the root and the expected contents.
func sampleTree(t testing.TB, s cas.Store) (digest.Digest, map[string]wantEntry) {
	alpha := putBlob(t, s, []byte("alpha"))
	script := putBlob(t, s, []byte("#!/bin/sh\necho hi\n"))
	ex := putBlob(t, s, []byte("ex"))
	why := putBlob(t, s, []byte("why"))
	uni := putBlob(t, s, []byte("unicode"))
	empty := digest.Empty(fn)
	deep := putDir(t, s, &repb.Directory{
		Files:    []*repb.FileNode{file("y", why, true)},
		Symlinks: []*repb.SymlinkNode{symlink("l", "../x")},
	})
	sub := putDir(t, s, &repb.Directory{
		Files:       []*repb.FileNode{file("x", ex, false)},
		Directories: []*repb.DirectoryNode{subdir("deep", deep)},
		Symlinks:    []*repb.SymlinkNode{symlink("up", "../a.txt")},
	})
	root := putDir(t, s, &repb.Directory{
		Files: []*repb.FileNode{
			file("a.txt", alpha, false),
			file("dup-plain", script, false),
			file("empty", empty, false),
			file("empty-exec", empty, true),
			file("run.sh", script, true),
			file("名前 with space.txt", uni, false),
		},
		Directories: []*repb.DirectoryNode{subdir("sub", sub)},
		Symlinks:    []*repb.SymlinkNode{symlink("link", "sub/x")},
	})
	return root, map[string]wantEntry{
		"a.txt":             {data: "alpha", mode: 0o444},
		"dup-plain":         {data: "#!/bin/sh\necho hi\n", mode: 0o444},
		"empty":             {data: "", mode: 0o444},
		"empty-exec":        {data: "", mode: 0o555},
		"run.sh":            {data: "#!/bin/sh\necho hi\n", mode: 0o555},
		"名前 with space.txt": {data: "unicode", mode: 0o444},
		"link":              {target: "sub/x"},
		"sub":               {dir: true},
		"sub/x":             {data: "ex", mode: 0o444},
		"sub/up":            {target: "../a.txt"},
		"sub/deep":          {dir: true},
		"sub/deep/y":        {data: "why", mode: 0o555},
		"sub/deep/l":        {target: "../x"},
	}
}

type wantEntry struct {
	data   string
	mode   fs.FileMode
	target string
	dir    bool
}

// checkStaged compares dir with want exactly: nothing missing, nothing extra.
func checkStaged(t *testing.T, dir string, want map[string]wantEntry) {
	t.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		seen[rel] = true
		w, ok := want[rel]
		if !ok {
			t.Errorf("unexpected %s", rel)
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case w.dir:
			if !fi.IsDir() || fi.Mode().Perm() != 0o755 {
				t.Errorf("%s: mode %v, want a 0755 directory", rel, fi.Mode())
			}
		case w.target != "":
			got, err := os.Readlink(p)
			if err != nil || got != w.target {
				t.Errorf("%s: readlink = %q, %v; want %q", rel, got, err, w.target)
			}
		default:
			if fi.Mode() != w.mode {
				t.Errorf("%s: mode %v, want %v", rel, fi.Mode(), w.mode)
			}
			if b, err := os.ReadFile(p); err != nil || string(b) != w.data {
				t.Errorf("%s: content %q, %v; want %q", rel, b, err, w.data)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range want {
		if !seen[p] {
			t.Errorf("%s was not staged", p)
		}
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// cacheInodes returns the inodes of the files in the cache directory.
func cacheInodes(t *testing.T, dir string) map[uint64]bool {
	t.Helper()
	inodes := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() && de.Name() != "HEARTH_FILECACHE" {
			inodes[inode(t, p)] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return inodes
}

func TestStage(t *testing.T) {
	// The walk linking each file itself, and link workers.
	for _, inline := range []int{1000, 0} {
		t.Run(fmt.Sprintf("inline up to %d files", inline), func(t *testing.T) {
			defer func(was int) { inlineStageMax = was }(inlineStageMax)
			inlineStageMax = inline
			testStage(t)
		})
	}
}

func testStage(t *testing.T) {
	// A restrictive umask must not leak into the staged modes.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)

	ctx := context.Background()
	disk := newDisk(t)
	root, want := sampleTree(t, disk)
	tr, err := Load(ctx, disk, fn, root)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	cache, cacheDir := newCache(t, disk, 0)
	// Two stagings at once share one cache (and its fetches).
	dirs := []string{filepath.Join(scratch(t), "a"), filepath.Join(scratch(t), "b")}
	var wg sync.WaitGroup
	errs := make([]error, len(dirs))
	for i, d := range dirs {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = Stage(ctx, tr, cache, d)
		}()
	}
	wg.Wait()
	for i, d := range dirs {
		if errs[i] != nil {
			t.Fatalf("Stage into %s: %v", d, errs[i])
		}
		checkStaged(t, d, want)
	}

	// Non-empty files are hardlinks of cache entries; a digest staged in
	// both modes is two entries.
	inCache := cacheInodes(t, cacheDir)
	for p, w := range want {
		if w.dir || w.target != "" || w.data == "" {
			continue
		}
		for _, d := range dirs {
			if !inCache[inode(t, filepath.Join(d, p))] {
				t.Errorf("%s in %s is not a hardlink of a cache entry", p, d)
			}
		}
		if inode(t, filepath.Join(dirs[0], p)) != inode(t, filepath.Join(dirs[1], p)) {
			t.Errorf("%s: the two stagings have different inodes", p)
		}
	}
	if inode(t, filepath.Join(dirs[0], "run.sh")) == inode(t, filepath.Join(dirs[0], "dup-plain")) {
		t.Error("run.sh (0555) and dup-plain (0444) share an inode")
	}
	// Plain entries came from the Disk by hardlink, not by copy.
	alpha, _ := disk.Path(tr.Files[0].Digest)
	if inode(t, alpha) != inode(t, filepath.Join(dirs[0], "a.txt")) {
		t.Error("a.txt is not the Disk's own inode")
	}
}

func TestStageEvictionKeepsStagedFiles(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	root, want := sampleTree(t, disk)
	tr, err := Load(ctx, disk, fn, root)
	if err != nil {
		t.Fatal(err)
	}
	// A 1-byte cache evicts every entry as soon as its link is made.
	cache, cacheDir := newCache(t, cas.Store(struct{ cas.Store }{disk}), 1)
	dir := scratch(t)
	if err := Stage(ctx, tr, cache, dir); err != nil {
		t.Fatalf("Stage: %v", err)
	}
	if n := len(cacheInodes(t, cacheDir)); n != 0 || cache.Count() != 0 {
		t.Errorf("cache holds %d files, %d entries after eviction; want 0", n, cache.Count())
	}
	checkStaged(t, dir, want)
}

func TestStageMissingFile(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	lost := digest.Compute(fn, []byte("lost"))
	root := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("f", lost, false)}})
	tr, err := Load(ctx, disk, fn, root)
	if err != nil {
		t.Fatal(err)
	}
	cache, _ := newCache(t, disk, 0)
	err = Stage(ctx, tr, cache, scratch(t))
	var me *cas.MissingError
	if !errors.As(err, &me) || me.Digests[0] != lost {
		t.Errorf("Stage with a missing blob = %v, want a MissingError for %v", err, lost)
	}
}

func TestStageRefusesBadTargets(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	cache, _ := newCache(t, disk, 0)
	tr, err := Load(ctx, disk, fn, digest.Empty(fn))
	if err != nil {
		t.Fatal(err)
	}
	full := scratch(t)
	if err := os.WriteFile(filepath.Join(full, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Stage(ctx, tr, cache, full); err == nil {
		t.Error("Stage into a non-empty directory succeeded")
	}
	if err := Stage(ctx, tr, cache, filepath.Join(full, "absent")); err == nil {
		t.Error("Stage into an absent directory succeeded")
	}
	if err := Stage(ctx, &Tree{}, cache, scratch(t)); err == nil {
		t.Error("Stage of a Tree without a root succeeded")
	}
}

// Load cannot produce a symlink and a directory of one name, but if a symlink
// ever sat where a directory goes, Stage must fail rather than create files
// through it.
func TestStageNeverFollowsSymlinks(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	cache, _ := newCache(t, disk, 0)
	outside := scratch(t)
	blob := putBlob(t, disk, []byte("payload"))
	tr := &Tree{
		Dirs: []Dir{
			{symsLo: 0, symsHi: 1, subsLo: 1, subsHi: 2},
			{Path: "a", filesLo: 0, filesHi: 1, depth: 1},
		},
		Files:    []File{{Path: "a/x", Digest: blob}},
		Symlinks: []Symlink{{Path: "a", Target: outside}},
	}
	if err := Stage(ctx, tr, cache, scratch(t)); err == nil {
		t.Error("Stage created a directory where a symlink was")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("Stage wrote %d entries through a symlink", len(ents))
	}
}

func TestStageCancelled(t *testing.T) {
	disk := newDisk(t)
	root, _ := sampleTree(t, disk)
	tr, err := Load(context.Background(), disk, fn, root)
	if err != nil {
		t.Fatal(err)
	}
	cache, _ := newCache(t, disk, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Stage(ctx, tr, cache, scratch(t)); !errors.Is(err, context.Canceled) {
		t.Errorf("Stage with a cancelled context = %v, want context.Canceled", err)
	}
}
