package inputtree

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
)

// fetchParallelism bounds the Directory protos fetched at once: enough to
// hide a remote store's latency, few enough not to flood it.
const fetchParallelism = 16

// Load fetches the Directory protos of the input root root from store,
// breadth first (the directories of one level concurrently), validates each,
// and returns the expanded tree. Directories absent from the store are
// reported together, as one *cas.MissingError, after the rest of the tree was
// walked. A malformed tree is ErrInvalid; a Directory whose bytes do not match
// its digest is filecache.ErrCorrupt.
func Load(ctx context.Context, store cas.Store, fn digest.Function, root digest.Digest) (*Tree, error) {
	return load(ctx, store, fn, root, nil)
}

// load is Load, with the Directories in cache (nil: none) not fetched.
func load(ctx context.Context, store cas.Store, fn digest.Function, root digest.Digest, cache *DirCache) (*Tree, error) {
	fn, err := digest.Resolve(fn)
	if err != nil {
		return nil, fmt.Errorf("%w: input root: %w", ErrInvalid, err)
	}
	root, err = digest.New(fn, root.Hash, root.Size)
	if err != nil {
		return nil, fmt.Errorf("%w: input root digest: %w", ErrInvalid, err)
	}
	dirs, err := fetchAll(ctx, store, fn, root, cache)
	if err != nil {
		return nil, err
	}
	if err := checkExpandedSize(root, dirs); err != nil {
		return nil, err
	}
	return expand(root, dirs)
}

// pending is a Directory to fetch, with the first path it was found at.
type pending struct {
	d    digest.Digest
	path string
}

// fetchAll fetches and validates every distinct Directory of the tree.
func fetchAll(ctx context.Context, store cas.Store, fn digest.Function, root digest.Digest, cache *DirCache) (map[digest.Digest]*directory, error) {
	dirs := make(map[digest.Digest]*directory)
	seen := map[digest.Digest]bool{root: true}
	var missing []digest.Digest
	level := []pending{{d: root}}
	for depth := 0; len(level) > 0; depth++ {
		// A Directory first met at depth n sits at depth n or deeper.
		if depth > MaxDepth {
			return nil, fmt.Errorf("%w: directory %q is nested deeper than %d levels", ErrInvalid, level[0].path, MaxDepth)
		}
		got, err := fetchLevel(ctx, store, fn, level, cache)
		if err != nil {
			return nil, err
		}
		var next []pending
		for i, p := range level {
			if got[i] == nil {
				missing = append(missing, p.d)
				continue
			}
			dirs[p.d] = got[i]
			for j, sub := range got[i].subDigest {
				if !seen[sub] {
					seen[sub] = true
					next = append(next, pending{d: sub, path: joinPath(p.path, got[i].msg.Directories[j].Name)})
				}
			}
		}
		if len(seen) > MaxNodes {
			return nil, fmt.Errorf("%w: the input root has more than %d distinct directories", ErrInvalid, MaxNodes)
		}
		level = next
	}
	if len(missing) > 0 {
		return nil, &cas.MissingError{Digests: missing}
	}
	return dirs, nil
}

// errAbsent marks a Directory the store does not hold.
var errAbsent = errors.New("absent")

// fetchLevel fetches the Directories of one level with bounded parallelism.
// An absent Directory leaves a nil entry. The first other failure stops the
// level and is returned (not the cancellations it causes in the others).
func fetchLevel(ctx context.Context, store cas.Store, fn digest.Function, level []pending, cache *DirCache) ([]*directory, error) {
	got := make([]*directory, len(level))
	var fetch []int // the indexes of level not in cache
	for i := range level {
		if got[i] = cache.get(level[i].d); got[i] == nil {
			fetch = append(fetch, i)
		}
	}
	switch len(fetch) {
	case 0:
		return got, nil
	case 1:
		// One Directory (a warm action's new root or source directory):
		// no goroutine to hand it to and wait for.
		i := fetch[0]
		d, err := fetchDirectory(ctx, store, fn, level[i])
		if err == nil {
			cache.add(level[i].d, d)
		} else if !errors.Is(err, errAbsent) {
			return nil, err
		}
		got[i] = d
		return got, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
	)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(fetchParallelism, len(fetch)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d, err := fetchDirectory(ctx, store, fn, level[i])
				if err == nil {
					cache.add(level[i].d, d)
				}
				if err != nil && !errors.Is(err, errAbsent) {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
				}
				got[i] = d
			}
		}()
	}
	for _, i := range fetch {
		next <- i
	}
	close(next)
	wg.Wait()
	return got, firstErr
}

// fetchDirectory reads, verifies, decodes and validates one Directory.
func fetchDirectory(ctx context.Context, store cas.Store, fn digest.Function, p pending) (*directory, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.d.Size > MaxDirectoryBytes {
		return nil, fmt.Errorf("%w: directory %q (%s) is %d bytes, more than the limit of %d for one Directory", ErrInvalid, displayPath(p.path), p.d, p.d.Size, MaxDirectoryBytes)
	}
	r, err := store.Open(ctx, p.d, 0)
	if errors.Is(err, cas.ErrNotFound) {
		return nil, errAbsent
	}
	if err != nil {
		return nil, fmt.Errorf("inputtree: fetching directory %q (%s): %w", displayPath(p.path), p.d, err)
	}
	data, err := io.ReadAll(io.LimitReader(r, p.d.Size+1))
	r.Close()
	if err != nil {
		return nil, fmt.Errorf("inputtree: fetching directory %q (%s): %w", displayPath(p.path), p.d, err)
	}
	// Directories are small and everything below trusts them, so check them
	// even though a verifying store already did when they were uploaded.
	h := digest.NewHasher(fn)
	h.Write(data)
	if int64(len(data)) != p.d.Size || hex.EncodeToString(h.Sum(nil)) != p.d.Hash {
		return nil, fmt.Errorf("%w: directory %q (%s): the store's bytes do not match the digest", filecache.ErrCorrupt, displayPath(p.path), p.d)
	}
	msg := &repb.Directory{}
	if err := proto.Unmarshal(data, msg); err != nil {
		return nil, fmt.Errorf("%w: directory %q: blob %s is not a Directory proto: %v", ErrInvalid, displayPath(p.path), p.d, err)
	}
	return validateDirectory(fn, p.path, msg)
}

// checkExpandedSize rejects a tree whose expansion would be too deep or
// have too many nodes, before anything is expanded: a Directory referenced
// twice from each level of a 30-level chain is a few kilobytes of protos but
// 2^30 nodes.
func checkExpandedSize(root digest.Digest, dirs map[digest.Digest]*directory) error {
	type extent struct {
		nodes  int // saturates at MaxNodes+1
		height int
	}
	memo := make(map[digest.Digest]extent, len(dirs))
	// The recursion is as deep as the chain of distinct Directories, which
	// fetchAll bounded by MaxDepth.
	var visit func(d digest.Digest) extent
	visit = func(d digest.Digest) extent {
		if e, ok := memo[d]; ok {
			return e
		}
		dir := dirs[d]
		e := extent{nodes: len(dir.msg.Files) + len(dir.msg.Symlinks) + len(dir.msg.Directories)}
		for _, sub := range dir.subDigest {
			c := visit(sub)
			e.nodes = min(e.nodes+c.nodes, MaxNodes+1)
			e.height = max(e.height, c.height+1)
		}
		memo[d] = e
		return e
	}
	e := visit(root)
	if e.height > MaxDepth {
		return fmt.Errorf("%w: the input root is nested %d levels deep, more than %d", ErrInvalid, e.height, MaxDepth)
	}
	if e.nodes > MaxNodes {
		return fmt.Errorf("%w: the input root has more than %d files, directories and symlinks", ErrInvalid, MaxNodes)
	}
	return nil
}

// expand builds the tree from the root, visiting every reference of every
// Directory (a Directory that appears at two paths yields two subtrees).
func expand(root digest.Digest, dirs map[digest.Digest]*directory) (*Tree, error) {
	t := &Tree{Root: root, Dirs: []Dir{{Digest: root}}}
	nodes := 0
	for i := 0; i < len(t.Dirs); i++ {
		// t.Dirs grows below: copy what is needed rather than hold a pointer.
		path, depth := t.Dirs[i].Path, t.Dirs[i].depth
		d := dirs[t.Dirs[i].Digest]
		msg := d.msg
		nodes += len(msg.Files) + len(msg.Directories) + len(msg.Symlinks)
		if nodes > MaxNodes {
			return nil, fmt.Errorf("%w: the input root has more than %d files, directories and symlinks", ErrInvalid, MaxNodes)
		}
		if len(msg.Directories) > 0 && depth+1 > MaxDepth {
			return nil, fmt.Errorf("%w: directory %q is nested deeper than %d levels", ErrInvalid, joinPath(path, msg.Directories[0].Name), MaxDepth)
		}
		t.Dirs[i].Properties = d.props
		t.Dirs[i].filesLo = len(t.Files)
		for j, f := range msg.Files {
			t.Files = append(t.Files, File{
				Path:       joinPath(path, f.Name),
				Digest:     d.fileDigest[j],
				Executable: f.IsExecutable,
				ToolInput:  d.fileProps[j].Has(ToolInputProperty),
				Properties: d.fileProps[j],
			})
		}
		t.Dirs[i].filesHi = len(t.Files)
		t.Dirs[i].symsLo = len(t.Symlinks)
		for j, s := range msg.Symlinks {
			p := joinPath(path, s.Name)
			if err := checkTargetBeneath(s.Target, depth); err != nil {
				return nil, fmt.Errorf("%w: symlink %q: %s", ErrInvalid, p, err)
			}
			t.Symlinks = append(t.Symlinks, Symlink{Path: p, Target: s.Target, Properties: d.symProps[j]})
		}
		t.Dirs[i].symsHi = len(t.Symlinks)
		t.Dirs[i].subsLo = len(t.Dirs)
		for j, s := range msg.Directories {
			t.Dirs = append(t.Dirs, Dir{Path: joinPath(path, s.Name), Digest: d.subDigest[j], depth: depth + 1})
		}
		t.Dirs[i].subsHi = len(t.Dirs)
	}
	return t, nil
}
