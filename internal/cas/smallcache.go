package cas

import (
	"bytes"
	"container/list"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/hearth-build/hearth/internal/digest"
)

// NewSmallBlobCache keeps the most recently read blobs of at most maxBlob
// bytes in memory, up to maxBytes in all. Small blobs are mostly Directory,
// Command and Action protos, which every Execute and every executor read
// again for each action that shares them (from disk, or over the network for
// a remote store). Blobs are immutable, so a cached copy never goes stale;
// FindMissing and writes go straight to s.
func NewSmallBlobCache(s Store, maxBlob, maxBytes int64) Store {
	return &smallBlobCache{Store: s, maxBlob: maxBlob, maxBytes: maxBytes, items: map[digest.Digest]*list.Element{}}
}

type smallBlobCache struct {
	Store
	maxBlob, maxBytes int64

	mu    sync.Mutex
	lru   list.List // of *cachedBlob, front = most recent
	items map[digest.Digest]*list.Element
	total int64
}

type cachedBlob struct {
	d    digest.Digest
	data []byte
}

func (c *smallBlobCache) Open(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, error) {
	if d.Size == 0 || d.Size > c.maxBlob {
		return c.Store.Open(ctx, d, offset)
	}
	if offset < 0 || offset > d.Size {
		return nil, fmt.Errorf("%w: offset %d of %s", ErrOutOfRange, offset, d)
	}
	data, ok := c.get(d)
	if !ok {
		r, err := c.Store.Open(ctx, d, 0)
		if err != nil {
			return nil, err
		}
		data, err = io.ReadAll(io.LimitReader(r, d.Size+1))
		r.Close()
		if err != nil {
			return nil, err
		}
		// Checked before it is kept: a file damaged on disk (written
		// through a hardlink, say) must not live on in memory. Hashing a
		// few KiB costs microseconds.
		if int64(len(data)) != d.Size || digest.Compute(d.Function, data) != d {
			return nil, fmt.Errorf("%w: the stored copy of %s is damaged", ErrMismatch, d)
		}
		c.put(d, data)
	}
	return io.NopCloser(bytes.NewReader(data[offset:])), nil
}

func (c *smallBlobCache) get(d digest.Digest) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[d]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(el)
	return el.Value.(*cachedBlob).data, true
}

func (c *smallBlobCache) put(d digest.Digest, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[d]; ok {
		return
	}
	c.items[d] = c.lru.PushFront(&cachedBlob{d: d, data: data})
	c.total += int64(len(data))
	for c.total > c.maxBytes {
		el := c.lru.Back()
		b := el.Value.(*cachedBlob)
		c.lru.Remove(el)
		delete(c.items, b.d)
		c.total -= int64(len(b.data))
	}
}
