package filecache

import (
	"context"

	"github.com/hearth-build/hearth/internal/digest"
)

// The methods below serve the LocalCAS protocol (internal/localcas), whose
// clients address the cache by digest rather than by link destination.

// Fetch makes the plain entry of d present, fetching it from the source if
// needed. Errors are those of Link.
func (c *Cache) Fetch(ctx context.Context, d digest.Digest) error {
	d, err := digest.New(d.Function, d.Hash, d.Size)
	if err != nil {
		return err
	}
	if d.IsEmpty() {
		return nil
	}
	e, err := c.acquire(ctx, key{d: d})
	if err != nil {
		return err
	}
	c.release(e)
	return nil
}

// LocalPath returns the file of a present entry of d (either variant). The
// entry may be evicted right after: a caller opening the path must treat
// ENOENT as absent.
func (c *Cache) LocalPath(d digest.Digest) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, exec := range []bool{false, true} {
		k := key{d: d, executable: exec}
		if e := c.entries[k]; e != nil && e.present {
			return c.path(k), true
		}
	}
	return "", false
}

// MaxBytes returns the cache's budget (0: unbounded).
func (c *Cache) MaxBytes() int64 { return c.maxBytes }

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }
