package cas

import (
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/hearth-build/hearth/internal/digest"
)

// The in-memory index of the disk store.
//
// It is sharded by the first byte of the hash: 256 shards, each a map under its
// own RWMutex, so writers of one shard never stall lookups in the others. The
// shard of a blob is also its on-disk subdirectory. The operations that change
// which file sits at a blob's path (rename + dir fsync on commit, unlink on
// eviction) are serialised by marking the entry busy under the shard lock and
// then running without it, so a slow fsync or unlink never blocks lookups.
//
// Recency is an approximate-LRU stamp per entry, stored atomically, so that
// FindMissing and Open mark use under the shard's *read* lock: a FindMissing of
// 10,000 digests costs one atomic increment of the clock plus, per digest, a
// read-locked map lookup and an atomic store. An exact LRU list would need the
// write lock (or a global list lock) on every lookup, which serialises the
// hottest call in the server. Eviction pays instead: it sorts entries by stamp
// (see evict.go).

const shardCount = 256

// blobKey is a digest in binary form: 48 bytes instead of a 64-byte string
// plus its header and a separate allocation, which matters at millions of
// entries.
type blobKey struct {
	hash [32]byte
	size int64
	fn   digest.Function
}

// entry is the index's state of one blob.
type entry struct {
	// stamp orders entries for eviction: a value of Disk.clock at last use,
	// or the file's mtime in nanoseconds for entries found at startup.
	stamp atomic.Int64
	// pins counts writers of an already-present blob (see Disk.pin)
	// that rely on it staying present until they commit; eviction skips
	// pinned entries.
	pins atomic.Int32
	// busy is non-nil while the file at the blob's path is being created
	// (commit: rename + dir fsync) or removed (eviction, healing), and is
	// closed when that ends. A busy entry is invisible to readers and to
	// eviction, and a committer of the same blob waits for it: so the file
	// operations run without the shard lock, yet never race each other.
	// Guarded by the shard lock.
	busy chan struct{}
}

// present reports whether the entry is a durable blob. Call with the shard lock
// held (read or write).
func (e *entry) present() bool { return e != nil && e.busy == nil }

type shard struct {
	mu      sync.RWMutex
	entries map[blobKey]*entry
}

func (k blobKey) shard() int { return int(k.hash[0]) }

// digest returns k in the form callers know.
func (k blobKey) digest() digest.Digest {
	return digest.Digest{Function: k.fn, Hash: hex.EncodeToString(k.hash[:]), Size: k.size}
}

// keyOf validates d and returns its key. Every exported entry point goes
// through it, so a malformed digest is an error naming it, never a panic or a
// path outside the store. It validates and decodes in one pass without
// allocating: FindMissing calls it for every digest.
func keyOf(d digest.Digest) (blobKey, error) {
	fn, err := digest.Resolve(d.Function)
	var k blobKey
	if err != nil || d.Size < 0 || len(d.Hash) != 2*len(k.hash) {
		return blobKey{}, invalidKey(d)
	}
	for i := range k.hash {
		hi, lo := hexValue[d.Hash[2*i]], hexValue[d.Hash[2*i+1]]
		if hi|lo == badHex {
			return blobKey{}, invalidKey(d)
		}
		k.hash[i] = hi<<4 | lo
	}
	k.size = d.Size
	k.fn = fn
	return k, nil
}

// invalidKey explains why keyOf rejected d, in digest's words.
func invalidKey(d digest.Digest) error {
	if _, err := digest.New(d.Function, d.Hash, d.Size); err != nil {
		return err
	}
	// digest accepts a hash length the store cannot hold (a future function).
	return fmt.Errorf("%w: hash %q of %s is not %d hex characters", digest.ErrInvalid, d.Hash, d.Function, 2*len(blobKey{}.hash))
}

// hexValue maps a lower-case hex digit to its value and every other byte to
// badHex: one table load per character in the hottest loop of FindMissing.
var hexValue = func() (t [256]byte) {
	for i := range t {
		t[i] = badHex
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c - 'a' + 10)
	}
	return t
}()

const badHex = 0xff

// emptyKeys are the empty blobs of the supported functions, always present
// without a file.
var emptyKeys = func() map[blobKey]bool {
	m := make(map[blobKey]bool, len(digest.Supported))
	for _, fn := range digest.Supported {
		k, err := keyOf(digest.Empty(fn))
		if err != nil {
			panic(fmt.Sprintf("empty digest of %s does not validate: %v", fn, err)) // a programming error, at init
		}
		m[k] = true
	}
	return m
}()

func (k blobKey) isEmpty() bool { return k.size == 0 && emptyKeys[k] }

// lookup returns the durable entry for k, marking it used at stamp, or nil.
func (d *Disk) lookup(k blobKey, stamp int64) *entry {
	s := &d.shards[k.shard()]
	s.mu.RLock()
	e := s.entries[k]
	if !e.present() {
		e = nil
	} else if e.stamp.Load() < stamp {
		// Load before Store: entries touched by many concurrent requests
		// then mostly read a shared cache line instead of bouncing it.
		e.stamp.Store(stamp)
	}
	s.mu.RUnlock()
	return e
}

// forget removes k from the index if it still maps to e, unlinking its file.
// It is how Open heals the index when a file vanished or has the wrong size.
func (d *Disk) forget(k blobKey, e *entry, why string) {
	s := &d.shards[k.shard()]
	s.mu.Lock()
	if s.entries[k] != e || !e.present() {
		s.mu.Unlock()
		return
	}
	d.logger.Warn("cas: dropping a blob whose file is damaged", "function", k.fn.String(), "digest", k.digest().String(), "reason", why)
	d.dropLocked(s, k, e)
}

// dropLocked removes the present entry e of k from the index and its file from
// disk. It is called with s's write lock held and returns with it released:
// the unlink (which can take long for a large file) runs without the lock,
// while e is marked busy so that no commit of the same blob renames a new
// file into place before the old one is gone.
func (d *Disk) dropLocked(s *shard, k blobKey, e *entry) {
	done := make(chan struct{})
	e.busy = done
	d.totalBytes.Add(-k.size)
	d.count.Add(-1)
	s.mu.Unlock()

	err := removeFile(d.blobPath(k))

	s.mu.Lock()
	delete(s.entries, k)
	close(done)
	s.mu.Unlock()
	if err != nil {
		// The index no longer claims the blob, so a stray file is only
		// wasted space until the next restart indexes it again.
		d.logger.Warn("cas: removing a blob file", "function", k.fn.String(), "digest", k.digest().String(), "err", err)
	}
}
