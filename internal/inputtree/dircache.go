package inputtree

import (
	"container/list"
	"context"
	"sync"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// DirCache remembers validated Directories by digest for Load, in a bounded
// LRU: the executor loads the input root of every action, and consecutive
// actions mostly share their subtrees (a persistent worker's tool tree of
// hundreds of directories, the sources of a package), so each of those would
// otherwise be read, hashed, decoded and validated again for every action.
//
// An entry is only ever added after the Directory's bytes matched its digest
// and it passed validateDirectory, and a digest fixes the content, so an
// entry never goes stale and a hit is exactly what a fetch would yield. A
// Directory the store has evicted since is still served from here: the
// executor needs only its contents (the files are fetched by their own
// digests, and a missing one is reported as such).
//
// DirCache is safe for concurrent use. Its entries are shared by the trees
// loaded through it and never modified.
type DirCache struct {
	maxBytes int64

	mu      sync.Mutex
	entries map[digest.Digest]*list.Element // of *cachedDir
	lru     list.List                       // front: most recently used
	bytes   int64
}

type cachedDir struct {
	d   digest.Digest
	dir *directory
}

// NewDirCache returns a cache holding Directories of at most maxBytes of
// encoded protos in all (the decoded form takes a few times that).
func NewDirCache(maxBytes int64) *DirCache {
	return &DirCache{maxBytes: maxBytes, entries: map[digest.Digest]*list.Element{}}
}

// Len returns the number of cached Directories.
func (c *DirCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Load is the package's Load with Directories found in c not fetched again.
func (c *DirCache) Load(ctx context.Context, store cas.Store, fn digest.Function, root digest.Digest) (*Tree, error) {
	return load(ctx, store, fn, root, c)
}

func (c *DirCache) get(d digest.Digest) *directory {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[d]
	if !ok {
		return nil
	}
	c.lru.MoveToFront(e)
	return e.Value.(*cachedDir).dir
}

func (c *DirCache) add(d digest.Digest, dir *directory) {
	if c == nil || d.Size > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[d]; ok {
		return
	}
	c.entries[d] = c.lru.PushFront(&cachedDir{d: d, dir: dir})
	c.bytes += d.Size
	for c.bytes > c.maxBytes {
		e := c.lru.Back()
		old := e.Value.(*cachedDir)
		c.lru.Remove(e)
		delete(c.entries, old.d)
		c.bytes -= old.d.Size
	}
}
