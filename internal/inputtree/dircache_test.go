package inputtree

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
)

// watchedStore counts the Opens of each blob, and can hide a blob or serve
// other bytes for it.
type watchedStore struct {
	cas.Store
	mu      sync.Mutex
	opens   map[digest.Digest]int
	hidden  map[digest.Digest]bool
	corrupt map[digest.Digest]bool
}

func watch(s cas.Store) *watchedStore {
	return &watchedStore{Store: s, opens: map[digest.Digest]int{}, hidden: map[digest.Digest]bool{}, corrupt: map[digest.Digest]bool{}}
}

func (w *watchedStore) Open(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, error) {
	w.mu.Lock()
	w.opens[d]++
	hidden, corrupt := w.hidden[d], w.corrupt[d]
	w.mu.Unlock()
	if hidden {
		return nil, fmt.Errorf("%w: %s", cas.ErrNotFound, d)
	}
	if corrupt {
		return io.NopCloser(bytes.NewReader(make([]byte, d.Size))), nil
	}
	return w.Store.Open(ctx, d, offset)
}

func (w *watchedStore) reset() map[digest.Digest]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	o := w.opens
	w.opens = map[digest.Digest]int{}
	return o
}

// Loading through a DirCache gives the tree Load gives, and fetches only
// the Directories it has not validated before; what failed to fetch or
// validate is never remembered.
func TestDirCacheLoad(t *testing.T) {
	store := watch(newDisk(t))
	a, b := putBlob(t, store, []byte("a")), putBlob(t, store, []byte("b"))
	tools := putDir(t, store, &repb.Directory{
		Files:       []*repb.FileNode{file("node", a, true)},
		Directories: []*repb.DirectoryNode{subdir("lib", putDir(t, store, &repb.Directory{Files: []*repb.FileNode{file("x.js", b, false)}}))},
	})
	lib := dirDigest(t, &repb.Directory{Files: []*repb.FileNode{file("x.js", b, false)}})
	src1 := putDir(t, store, &repb.Directory{Files: []*repb.FileNode{file("one.ts", a, false)}})
	src2 := putDir(t, store, &repb.Directory{Files: []*repb.FileNode{file("two.ts", b, false)}})
	root := func(src digest.Digest) digest.Digest {
		return putDir(t, store, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("src", src), subdir("tools", tools)}})
	}
	root1, root2 := root(src1), root(src2)
	ctx := context.Background()
	cache := NewDirCache(1 << 20)

	want, err := Load(ctx, store, fn, root1)
	if err != nil {
		t.Fatal(err)
	}
	store.reset()
	got, err := cache.Load(ctx, store, fn, root1)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("cached Load = %+v, %v; want %+v", got, err, want)
	}
	if n := cache.Len(); n != 4 {
		t.Fatalf("cache holds %d Directories, want 4", n)
	}
	if opens := store.reset(); len(opens) != 4 {
		t.Fatalf("first load opened %v, want the 4 Directories once each", opens)
	}

	// The second root shares tools (and tools/lib): only it and src2 are read.
	want, err = Load(ctx, store, fn, root2)
	if err != nil {
		t.Fatal(err)
	}
	store.reset()
	got, err = cache.Load(ctx, store, fn, root2)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("cached Load = %+v, %v; want %+v", got, err, want)
	}
	if opens := store.reset(); !reflect.DeepEqual(opens, map[digest.Digest]int{root2: 1, src2: 1}) {
		t.Fatalf("second load opened %v, want only %v and %v", opens, root2, src2)
	}

	// A Directory the store lost since is still known; an uncached load
	// reports it missing.
	store.hidden[lib] = true
	if _, err := cache.Load(ctx, store, fn, root2); err != nil {
		t.Fatalf("a cached Directory gone from the store: %v", err)
	}
	var missing *cas.MissingError
	if _, err := Load(ctx, store, fn, root2); !errors.As(err, &missing) {
		t.Fatalf("uncached Load = %v, want MissingError", err)
	}

	for _, tc := range []struct {
		name   string
		spoil  func(d digest.Digest)
		wantIs error
	}{
		{"missing", func(d digest.Digest) { store.hidden[d] = true }, nil},
		{"corrupt", func(d digest.Digest) { store.corrupt[d] = true }, filecache.ErrCorrupt},
		{"invalid", func(digest.Digest) {}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := &repb.Directory{Files: []*repb.FileNode{file("z-"+tc.name, a, false), file("a", b, false)}} // unsorted
			if tc.wantIs != ErrInvalid {
				bad.Files = bad.Files[:1]
			}
			badD := putDir(t, store, bad)
			r := putDir(t, store, &repb.Directory{Directories: []*repb.DirectoryNode{subdir("bad", badD), subdir("tools", tools)}})
			tc.spoil(badD)
			before := cache.Len()
			for range 2 {
				_, err := cache.Load(ctx, store, fn, r)
				switch {
				case tc.wantIs == nil && !errors.As(err, &missing):
					t.Fatalf("Load = %v, want MissingError", err)
				case tc.wantIs != nil && !errors.Is(err, tc.wantIs):
					t.Fatalf("Load = %v, want %v", err, tc.wantIs)
				}
			}
			if opens := store.reset(); opens[badD] != 2 {
				t.Fatalf("the bad Directory was read %d times in two loads, want 2 (never cached)", opens[badD])
			}
			if n := cache.Len(); n != before+1 { // r itself is valid
				t.Fatalf("cache grew from %d to %d, want only the valid root added", before, n)
			}
		})
	}
}

// The cache stays within its byte bound, dropping the least recently used.
func TestDirCacheBound(t *testing.T) {
	store := newDisk(t)
	a := putBlob(t, store, []byte("a"))
	var roots []digest.Digest
	for i := range 10 {
		roots = append(roots, putDir(t, store, &repb.Directory{Files: []*repb.FileNode{file(fmt.Sprintf("f%d", i), a, false)}}))
	}
	cache := NewDirCache(3 * roots[0].Size)
	for _, r := range roots {
		if _, err := cache.Load(context.Background(), store, fn, r); err != nil {
			t.Fatal(err)
		}
	}
	if cache.Len() != 3 || cache.bytes > cache.maxBytes {
		t.Fatalf("cache holds %d Directories, %d bytes; want 3, at most %d", cache.Len(), cache.bytes, cache.maxBytes)
	}
	for _, r := range roots[7:] {
		if cache.get(r) == nil {
			t.Fatalf("%v, among the 3 most recent, was evicted", r)
		}
	}
}
