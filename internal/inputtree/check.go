package inputtree

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// Checker answers the Execution service's question about an input root: is
// the tree valid (every rule Load applies) and complete (every Directory and
// file blob in the store)? It does not expand the tree, and it remembers the
// Directories whose whole subtree it found complete and valid, in a bounded
// LRU cache, so an action that shares subtrees with earlier ones (a
// toolchain, a source directory, the same root with other arguments) fetches
// and probes only what changed. The executor loads the tree anyway to stage
// it, so the service need not hold it.
//
// A remembered subtree is not checked again for presence until its entry
// ages out or is evicted. A blob removed from the store meanwhile makes the
// executor fail the action with FAILED_PRECONDITION naming the blob, in
// ExecuteResponse.status, which REAPI clients handle by uploading it again.
// Validity never changes: the entry is keyed by the digest (function
// included), which fixes the content.
//
// Checker is safe for concurrent use.
type Checker struct {
	maxEntries int
	maxAge     time.Duration
	now        func() time.Time

	mu      sync.Mutex
	entries map[digest.Digest]*list.Element // of *checked
	lru     *list.List                      // front: most recently used
}

// checked is a remembered subtree.
type checked struct {
	d     digest.Digest
	s     summary
	added time.Time
}

// summary is what a parent needs to know of a valid, complete subtree.
type summary struct {
	nodes  int // files, directories and symlinks, expanded; saturates at MaxNodes+1
	height int // levels of directories below this one
	need   int // the smallest depth at which its symlinks stay inside the root
}

// NewChecker returns a Checker that remembers at most maxEntries subtrees,
// each for at most maxAge (0: until evicted).
func NewChecker(maxEntries int, maxAge time.Duration) *Checker {
	return &Checker{
		maxEntries: max(maxEntries, 1),
		maxAge:     maxAge,
		now:        time.Now,
		entries:    map[digest.Digest]*list.Element{},
		lru:        list.New(),
	}
}

// Len returns the number of remembered subtrees.
func (c *Checker) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func (c *Checker) lookup(d digest.Digest) (summary, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[d]
	if !ok {
		return summary{}, false
	}
	ch := e.Value.(*checked)
	if c.maxAge > 0 && c.now().Sub(ch.added) > c.maxAge {
		c.lru.Remove(e)
		delete(c.entries, d)
		return summary{}, false
	}
	c.lru.MoveToFront(e)
	return ch.s, true
}

func (c *Checker) remember(found map[digest.Digest]summary) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for d, s := range found {
		if e, ok := c.entries[d]; ok {
			e.Value.(*checked).added = now
			c.lru.MoveToFront(e)
			continue
		}
		c.entries[d] = c.lru.PushFront(&checked{d: d, s: s, added: now})
	}
	for c.lru.Len() > c.maxEntries {
		e := c.lru.Back()
		c.lru.Remove(e)
		delete(c.entries, e.Value.(*checked).d)
	}
}

// Check reports whether the input root root is valid and complete, and
// whether workingDir (a path relative to the root, "" for the root itself)
// is one of its directories. Its errors are those of Load: ErrInvalid for a
// malformed tree, filecache.ErrCorrupt for a Directory whose bytes do not
// match its digest, and one *cas.MissingError listing every absent
// Directory and file blob it could reach.
func (c *Checker) Check(ctx context.Context, store cas.Store, fn digest.Function, root digest.Digest, workingDir string) error {
	fn, err := digest.Resolve(fn)
	if err != nil {
		return fmt.Errorf("%w: input root: %w", ErrInvalid, err)
	}
	root, err = digest.New(fn, root.Hash, root.Size)
	if err != nil {
		return fmt.Errorf("%w: input root digest: %w", ErrInvalid, err)
	}
	if err := ValidateRelativePath(workingDir); err != nil {
		return fmt.Errorf("working_directory: %w", err)
	}
	w := &walk{c: c, store: store, fn: fn, known: map[digest.Digest]summary{}, memo: map[digest.Digest]summary{}}
	// A remembered subtree is valid where it was found; as a root it must
	// still pass the checks below (its symlinks may climb above it).
	if s, ok := c.lookup(root); ok {
		w.known[root] = s
	} else if err := w.fetch(ctx, root); err != nil {
		return err
	}
	s := w.summarize(root)
	switch {
	case s.height > MaxDepth:
		return fmt.Errorf("%w: the input root is nested %d levels deep, more than %d", ErrInvalid, s.height, MaxDepth)
	case s.nodes > MaxNodes:
		return fmt.Errorf("%w: the input root has more than %d files, directories and symlinks", ErrInvalid, MaxNodes)
	case s.need > 0:
		return w.escapeError(ctx, root)
	}
	if workingDir != "" {
		if err := w.findDir(ctx, root, workingDir); err != nil {
			return err
		}
	}
	c.remember(w.memo)
	return nil
}

// walk is the state of one Check.
type walk struct {
	c     *Checker
	store cas.Store
	fn    digest.Function
	dirs  map[digest.Digest]*directory // fetched this time
	known map[digest.Digest]summary    // remembered by the Checker
	memo  map[digest.Digest]summary    // summaries of dirs
}

// fetch fetches and validates every Directory of the tree that the Checker
// does not remember, breadth first like fetchAll, and then looks for the
// files of those Directories in the store.
func (w *walk) fetch(ctx context.Context, root digest.Digest) error {
	w.dirs = map[digest.Digest]*directory{}
	seen := map[digest.Digest]bool{root: true}
	var missing []digest.Digest
	level := []pending{{d: root}}
	for depth := 0; len(level) > 0; depth++ {
		if depth > MaxDepth {
			return fmt.Errorf("%w: directory %q is nested deeper than %d levels", ErrInvalid, level[0].path, MaxDepth)
		}
		got, err := fetchLevel(ctx, w.store, w.fn, level, nil) // presence is the question: no DirCache
		if err != nil {
			return err
		}
		var next []pending
		for i, p := range level {
			if got[i] == nil {
				missing = append(missing, p.d)
				continue
			}
			w.dirs[p.d] = got[i]
			for j, sub := range got[i].subDigest {
				if seen[sub] {
					continue
				}
				seen[sub] = true
				if s, ok := w.c.lookup(sub); ok {
					w.known[sub] = s
					continue
				}
				next = append(next, pending{d: sub, path: joinPath(p.path, got[i].msg.Directories[j].Name)})
			}
		}
		if len(seen) > MaxNodes {
			return fmt.Errorf("%w: the input root has more than %d distinct directories", ErrInvalid, MaxNodes)
		}
		level = next
	}
	files, err := w.missingFiles(ctx)
	if err != nil {
		return err
	}
	if missing = append(missing, files...); len(missing) > 0 {
		return &cas.MissingError{Digests: missing}
	}
	return nil
}

// missingFiles asks the store for the files of the fetched Directories.
func (w *walk) missingFiles(ctx context.Context) ([]digest.Digest, error) {
	seen := map[digest.Digest]bool{}
	var unique []digest.Digest
	for _, d := range w.dirs {
		for _, f := range d.fileDigest {
			if !seen[f] && !f.IsEmpty() {
				seen[f] = true
				unique = append(unique, f)
			}
		}
	}
	var missing []digest.Digest
	for lo := 0; lo < len(unique); lo += findMissingChunk {
		m, err := w.store.FindMissing(ctx, unique[lo:min(lo+findMissingChunk, len(unique))])
		if err != nil {
			return nil, fmt.Errorf("inputtree: looking for the input files: %w", err)
		}
		missing = append(missing, m...)
	}
	return missing, nil
}

// summarize computes the summary of d from the fetched Directories and the
// remembered ones. The recursion is as deep as the chain of distinct
// fetched Directories, which fetch bounded by MaxDepth.
func (w *walk) summarize(d digest.Digest) summary {
	if s, ok := w.known[d]; ok {
		return s
	}
	if s, ok := w.memo[d]; ok {
		return s
	}
	dir := w.dirs[d]
	msg := dir.msg
	s := summary{nodes: len(msg.Files) + len(msg.Directories) + len(msg.Symlinks)}
	for _, l := range msg.Symlinks {
		s.need = max(s.need, climb(l.Target))
	}
	for _, sub := range dir.subDigest {
		c := w.summarize(sub)
		s.nodes = min(s.nodes+c.nodes, MaxNodes+1)
		s.height = max(s.height, c.height+1)
		s.need = max(s.need, c.need-1)
	}
	w.memo[d] = s
	return s
}

// directory returns d's parsed Directory, fetching it if this walk has not.
func (w *walk) directory(ctx context.Context, d digest.Digest, path string) (*directory, error) {
	if dir, ok := w.dirs[d]; ok {
		return dir, nil
	}
	dir, err := fetchDirectory(ctx, w.store, w.fn, pending{d: d, path: path})
	if errors.Is(err, errAbsent) {
		return nil, &cas.MissingError{Digests: []digest.Digest{d}}
	}
	return dir, err
}

// escapeError names a symlink whose target leaves the root: it follows the
// subtrees whose summaries say they hold one, fetching the remembered ones
// on the way (this is the error path; it may cost what it needs).
func (w *walk) escapeError(ctx context.Context, d digest.Digest) error {
	path, depth := "", 0
	vague := func() error {
		return fmt.Errorf("%w: directory %q holds a symlink that leaves the input root", ErrInvalid, displayPath(path))
	}
	for {
		dir, err := w.directory(ctx, d, path)
		if err != nil {
			return vague()
		}
		for _, l := range dir.msg.Symlinks {
			if err := checkTargetBeneath(l.Target, depth); err != nil {
				return fmt.Errorf("%w: symlink %q: %s", ErrInvalid, joinPath(path, l.Name), err)
			}
		}
		next := -1
		for i, sub := range dir.subDigest {
			if err := w.ensureSummary(ctx, sub, joinPath(path, dir.msg.Directories[i].Name)); err != nil {
				return vague()
			}
			if w.summarize(sub).need > depth+1 {
				next = i
				break
			}
		}
		if next < 0 {
			return vague()
		}
		d, path, depth = dir.subDigest[next], joinPath(path, dir.msg.Directories[next].Name), depth+1
	}
}

// ensureSummary makes summarize(d) possible for a Directory below a
// remembered one, which this walk neither fetched nor looked up: the
// Checker may still remember it; otherwise its subtree is fetched.
func (w *walk) ensureSummary(ctx context.Context, d digest.Digest, path string) error {
	if _, ok := w.known[d]; ok {
		return nil
	}
	if _, ok := w.memo[d]; ok {
		return nil
	}
	if _, ok := w.dirs[d]; ok {
		return nil
	}
	if s, ok := w.c.lookup(d); ok {
		w.known[d] = s
		return nil
	}
	dirs, err := fetchAll(ctx, w.store, w.fn, d, nil)
	if err != nil {
		return fmt.Errorf("directory %q: %w", displayPath(path), err)
	}
	if w.dirs == nil {
		w.dirs = map[digest.Digest]*directory{}
	}
	for k, v := range dirs {
		w.dirs[k] = v
	}
	return nil
}

// findDir checks that the slash-separated path p names a directory of the
// tree, fetching the Directories along it that this walk did not.
func (w *walk) findDir(ctx context.Context, root digest.Digest, p string) error {
	d, at := root, ""
	for name := range strings.SplitSeq(p, "/") {
		dir, err := w.directory(ctx, d, at)
		if err != nil {
			return err
		}
		i, ok := slices.BinarySearchFunc(dir.msg.Directories, name, func(n *repb.DirectoryNode, name string) int {
			return strings.Compare(n.GetName(), name)
		})
		if !ok {
			return fmt.Errorf("%w: working_directory %q is not a directory of the input root", ErrInvalid, p)
		}
		d, at = dir.subDigest[i], joinPath(at, name)
	}
	return nil
}
