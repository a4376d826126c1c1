package inputtree

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// countingStore is a real store that counts what the Checker asks of it.
type countingStore struct {
	cas.Store
	mu     sync.Mutex
	opened []digest.Digest
	probed []digest.Digest
}

func (s *countingStore) Open(ctx context.Context, d digest.Digest, off int64) (io.ReadCloser, error) {
	s.mu.Lock()
	s.opened = append(s.opened, d)
	s.mu.Unlock()
	return s.Store.Open(ctx, d, off)
}

func (s *countingStore) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	s.mu.Lock()
	s.probed = append(s.probed, ds...)
	s.mu.Unlock()
	return s.Store.FindMissing(ctx, ds)
}

func (s *countingStore) reset() (opened, probed []digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	opened, probed = s.opened, s.probed
	s.opened, s.probed = nil, nil
	return opened, probed
}

func TestCheckerRemembersCompleteSubtrees(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	store := &countingStore{Store: disk}
	tool := putBlob(t, disk, []byte("the toolchain's compiler"))
	lib := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("libc.a", putBlob(t, disk, []byte("libc")), false)}})
	toolchain := putDir(t, disk, &repb.Directory{
		Files:       []*repb.FileNode{file("cc", tool, true)},
		Directories: []*repb.DirectoryNode{subdir("lib", lib)},
	})
	rootWith := func(src string) digest.Digest {
		return putDir(t, disk, &repb.Directory{
			Files:       []*repb.FileNode{file("main.c", putBlob(t, disk, []byte(src)), false)},
			Directories: []*repb.DirectoryNode{subdir("toolchain", toolchain)},
		})
	}
	c := NewChecker(100, 0)
	first := rootWith("int main() { return 1; }")
	if err := c.Check(ctx, store, fn, first, ""); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if opened, _ := store.reset(); len(opened) != 3 {
		t.Errorf("the first check opened %d Directories, want all 3", len(opened))
	}
	if c.Len() != 3 {
		t.Errorf("the Checker remembers %d subtrees, want 3", c.Len())
	}

	// The same root again: nothing is fetched or probed.
	if err := c.Check(ctx, store, fn, first, ""); err != nil {
		t.Fatalf("Check again: %v", err)
	}
	if opened, probed := store.reset(); len(opened) != 0 || len(probed) != 0 {
		t.Errorf("re-checking a remembered root opened %v and probed %v", opened, probed)
	}

	// Another root sharing the toolchain: only the new root Directory is
	// fetched and only its own file probed.
	src := []byte("int main() { return 2; }")
	second := rootWith(string(src))
	if err := c.Check(ctx, store, fn, second, ""); err != nil {
		t.Fatalf("Check of the second root: %v", err)
	}
	opened, probed := store.reset()
	if !slices.Equal(opened, []digest.Digest{second}) {
		t.Errorf("the second check opened %v, want just the new root %v", opened, second)
	}
	if !slices.Equal(probed, []digest.Digest{digest.Compute(fn, src)}) {
		t.Errorf("the second check probed %v, want just main.c", probed)
	}

	// A working directory inside a remembered subtree is found by fetching
	// the Directories along its path, and nothing else.
	if err := c.Check(ctx, store, fn, second, "toolchain/lib"); err != nil {
		t.Errorf("Check with working directory toolchain/lib: %v", err)
	}
	if opened, probed := store.reset(); len(opened) != 2 || len(probed) != 0 {
		t.Errorf("finding the working directory opened %v and probed %v, want 2 Directories", opened, probed)
	}
	for _, wd := range []string{"main.c", "toolchain/nope", "nope"} {
		err := c.Check(ctx, store, fn, second, wd)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `working_directory "`+wd+`" is not a directory`) {
			t.Errorf("Check with working directory %q = %v, want ErrInvalid naming it", wd, err)
		}
	}
	if err := c.Check(ctx, store, fn, second, "../x"); !errors.Is(err, ErrInvalid) {
		t.Errorf("Check with working directory ../x = %v, want ErrInvalid", err)
	}

	// The digest function is part of the key: the same hash under another
	// function is another blob.
	other := digest.Digest{Function: digest.BLAKE3, Hash: strings.Repeat("0", 64), Size: second.Size}
	var me *cas.MissingError
	if err := c.Check(ctx, store, digest.BLAKE3, other, ""); !errors.As(err, &me) {
		t.Errorf("Check of an unknown BLAKE3 root = %v, want it missing", err)
	}
}

func TestCheckerReportsEverythingMissing(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	present := putBlob(t, disk, []byte("present"))
	absentFile := digest.Compute(fn, []byte("never uploaded"))
	absentDir := dirDigest(t, &repb.Directory{Files: []*repb.FileNode{file("x", present, false)}})
	sub := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("gone", absentFile, false), file("here", present, false)}})
	root := putDir(t, disk, &repb.Directory{
		Files:       []*repb.FileNode{file("empty", digest.Compute(fn, nil), false)}, // empty blobs always exist
		Directories: []*repb.DirectoryNode{subdir("absent", absentDir), subdir("sub", sub)},
	})
	c := NewChecker(100, 0)
	err := c.Check(ctx, disk, fn, root, "")
	var me *cas.MissingError
	if !errors.As(err, &me) {
		t.Fatalf("Check = %v, want a MissingError", err)
	}
	got := slices.Clone(me.Digests)
	slices.SortFunc(got, func(a, b digest.Digest) int { return strings.Compare(a.Hash, b.Hash) })
	want := []digest.Digest{absentFile, absentDir}
	slices.SortFunc(want, func(a, b digest.Digest) int { return strings.Compare(a.Hash, b.Hash) })
	if !slices.Equal(got, want) {
		t.Errorf("missing %v, want the absent file and Directory %v", got, want)
	}
	if c.Len() != 0 {
		t.Errorf("an incomplete tree left %d remembered subtrees", c.Len())
	}
	// Once uploaded, the tree is complete.
	putBlob(t, disk, []byte("never uploaded"))
	putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file("x", present, false)}})
	if err := c.Check(ctx, disk, fn, root, ""); err != nil {
		t.Errorf("Check after the upload: %v", err)
	}
}

// A remembered subtree is valid where it was found, not anywhere: its
// symlinks may leave the root when it sits higher, and its height counts
// toward the depth limit wherever it sits.
func TestCheckerRemembersPlacementRules(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	blob := putBlob(t, disk, []byte("x"))
	up2 := putDir(t, disk, &repb.Directory{
		Files:    []*repb.FileNode{file("f", blob, false)},
		Symlinks: []*repb.SymlinkNode{symlink("l", "../../f")},
	})
	deep := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("b", up2)}})
	c := NewChecker(100, 0)
	if err := c.Check(ctx, disk, fn, putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("a", deep)}}), ""); err != nil {
		t.Fatalf("Check with the symlink two levels down: %v", err)
	}
	shallow := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("a", up2)}})
	err := c.Check(ctx, disk, fn, shallow, "")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `symlink "a/l": the target "../../f" leaves the input root`) {
		t.Errorf("Check with the remembered subtree one level down = %v, want the escaping symlink named", err)
	}
	if _, lerr := Load(ctx, disk, fn, shallow); lerr == nil || lerr.Error() != err.Error() {
		t.Errorf("Load says %v, the Checker %v; want the same", lerr, err)
	}

	// The same with the escaping symlink one level further down, inside a
	// Directory the second walk does not fetch on its way.
	up3 := putDir(t, disk, &repb.Directory{
		Files:    []*repb.FileNode{file("f", blob, false)},
		Symlinks: []*repb.SymlinkNode{symlink("l", "../../../f")},
	})
	holder := putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("c", up3)}})
	if err := c.Check(ctx, disk, fn, putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("a", putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("b", holder)}}))}}), ""); err != nil {
		t.Fatalf("Check with the symlink three levels down: %v", err)
	}
	for _, forget := range []bool{false, true} {
		if forget {
			// Neither the holder's child nor anything else remembered.
			c = NewChecker(100, 0)
			if err := c.Check(ctx, disk, fn, putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("x", putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("y", holder)}}))}}), ""); err != nil {
				t.Fatal(err)
			}
			c.mu.Lock()
			c.lru.Remove(c.entries[up3])
			delete(c.entries, up3)
			c.mu.Unlock()
		}
		err := c.Check(ctx, disk, fn, putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("h", holder)}}), "")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `symlink "h/c/l": the target "../../../f" leaves the input root`) {
			t.Errorf("Check with the remembered holder one level down (child remembered: %v) = %v, want the escaping symlink named", !forget, err)
		}
	}

	// A chain of MaxDepth-10 Directories is fine alone, and remembered;
	// under 20 more levels it is too deep.
	chain := putDir(t, disk, &repb.Directory{})
	for range MaxDepth - 10 {
		chain = putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("d", chain)}})
	}
	if err := c.Check(ctx, disk, fn, chain, ""); err != nil {
		t.Fatalf("Check of a %d-level chain: %v", MaxDepth-10, err)
	}
	for range 20 {
		chain = putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("d", chain)}})
	}
	if err := c.Check(ctx, disk, fn, chain, ""); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "levels deep") {
		t.Errorf("Check of a %d-level chain = %v, want too deep", MaxDepth+10, err)
	}
}

func TestCheckerIsBounded(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t)
	blob := putBlob(t, disk, []byte("content"))
	c := NewChecker(4, time.Minute)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	var roots []digest.Digest
	for i := range 10 {
		r := putDir(t, disk, &repb.Directory{Files: []*repb.FileNode{file(strings.Repeat("f", i+1), blob, false)}})
		roots = append(roots, r)
		if err := c.Check(ctx, disk, fn, r, ""); err != nil {
			t.Fatal(err)
		}
		if c.Len() > 4 {
			t.Fatalf("the Checker holds %d entries, more than its bound 4", c.Len())
		}
	}
	if _, ok := c.lookup(roots[0]); ok {
		t.Errorf("the least recently used root is still remembered")
	}
	if _, ok := c.lookup(roots[9]); !ok {
		t.Errorf("the most recent root is forgotten")
	}

	// An evicted blob goes unnoticed while the subtree is remembered, and is
	// found once the entry is older than the maximum age.
	disk.Remove(blob, "test eviction")
	if err := c.Check(ctx, disk, fn, roots[9], ""); err != nil {
		t.Errorf("Check within the maximum age: %v, want the remembered answer", err)
	}
	now = now.Add(time.Minute + time.Second)
	var me *cas.MissingError
	if err := c.Check(ctx, disk, fn, roots[9], ""); !errors.As(err, &me) || !slices.Equal(me.Digests, []digest.Digest{blob}) {
		t.Errorf("Check after the maximum age = %v, want the evicted blob missing", err)
	}
}

// TestCheckerAgreesWithLoad builds random trees from a small pool of shared
// subtrees, placed at random depths, and checks them with one long-lived
// Checker: it must accept exactly the trees Load accepts, however much of
// each it remembers from the trees before.
func TestCheckerAgreesWithLoad(t *testing.T) {
	for seed := range uint64(5) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) { checkAgreement(t, seed) })
	}
}

func checkAgreement(t *testing.T, seed uint64) {
	ctx := context.Background()
	disk := newDisk(t)
	rng := rand.New(rand.NewPCG(seed, 13))
	blob := putBlob(t, disk, []byte("x"))
	targets := []string{"f", "../f", "../../f", "../../../f", "a/../../f", "./../x/../..", ".."}
	// Leaves: a file and a symlink with a random climb.
	var pool []digest.Digest
	for i := range 8 {
		pool = append(pool, putDir(t, disk, &repb.Directory{
			Files:    []*repb.FileNode{file("f", blob, false)},
			Symlinks: []*repb.SymlinkNode{symlink(fmt.Sprintf("l%d", i), targets[rng.IntN(len(targets))])},
		}))
	}
	// Higher levels reuse what exists, so the same Directory sits at
	// several depths.
	for range 24 {
		n := 1 + rng.IntN(3)
		d := &repb.Directory{}
		for j := range n {
			d.Directories = append(d.Directories, subdir(fmt.Sprintf("d%d", j), pool[rng.IntN(len(pool))]))
		}
		if rng.IntN(3) == 0 {
			d.Symlinks = []*repb.SymlinkNode{symlink("s", targets[rng.IntN(len(targets))])}
		}
		pool = append(pool, putDir(t, disk, d))
	}
	c := NewChecker(16, 0) // small, so entries come and go
	accepted := 0
	for i := range 300 {
		root := pool[rng.IntN(len(pool))]
		if rng.IntN(2) == 0 { // sometimes a fresh root above it
			root = putDir(t, disk, &repb.Directory{Directories: []*repb.DirectoryNode{subdir(fmt.Sprintf("r%d", i), root)}})
		}
		_, lerr := Load(ctx, disk, fn, root)
		cerr := c.Check(ctx, disk, fn, root, "")
		if (lerr == nil) != (cerr == nil) || (lerr != nil && !errors.Is(cerr, ErrInvalid)) {
			t.Fatalf("tree %d (%s): Load says %v, the Checker %v", i, root, lerr, cerr)
		}
		if lerr == nil {
			accepted++
		}
	}
	if accepted == 0 || accepted == 300 {
		t.Fatalf("%d of 300 random trees were accepted; the test needs both outcomes", accepted)
	}
}
