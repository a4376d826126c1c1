// Package filecache owns the executor's local cache of input files: a bounded,
// least-recently-used set of blob files on the executor's disk from which
// action inputs are hardlinked into action directories.
//
// Layout of the cache directory:
//
//	{dir}/HEARTH_FILECACHE                      marker: this directory is ours to purge
//	{dir}/{sha256|blake3}/{hh}/{hash}-{size}    read-only file (0444)
//	{dir}/{sha256|blake3}/{hh}/{hash}-{size}-x  executable file (0555)
//	{dir}/tmp/                                  fetches in progress
//
// A hardlink shares its inode, and so its mode, with the cache entry, which is
// why the executable and the plain variant of one digest are two entries.
// Every entry's bytes are hashed once, when it enters the cache.
//
// When the source store keeps blobs as files on the same filesystem (a
// cas.Disk in `hearth serve`), plain entries are hardlinks of the store's own
// files: no copy, but the action, the cache and the store then share one
// inode. Hardlink staging in general relies on actions not being able to
// write their inputs: the files are read-only, but an action running as the
// executor's user can chmod them (and root ignores modes), so production
// executors should run actions as another user.
//
// The cache is purged when it is opened, not rebuilt. Two reasons: damage
// done through a hardlink (above) never outlives the process; and since
// nothing survives a restart, entries need no fsync, which keeps a cold fetch
// of thousands of small files cheap. A crash leaves at worst garbage that the
// next start deletes; within a process an entry becomes visible (renamed or
// linked into place) only after it was written completely and verified.
package filecache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/fsutil"
)

// ErrCorrupt is returned (wrapped) when the bytes a source yields for a blob
// do not match its digest. Nothing is cached in that case. It deliberately does
// not wrap cas.ErrMismatch: that one means "a client sent bad bytes"
// (INVALID_ARGUMENT), while this one means the store the executor reads from
// is damaged.
var ErrCorrupt = errors.New("blob from the store does not match its digest")

// Options configures New.
type Options struct {
	// MaxBytes bounds the total size of cached files; least recently used
	// entries are evicted to stay under it. Entries being linked right now
	// are never evicted, so the total can exceed MaxBytes while they are.
	// 0 means unbounded.
	MaxBytes int64
	// Logger receives startup statistics and anomalies. Nil means
	// slog.Default().
	Logger *slog.Logger
	// SpareFiles is how many empty files for copied entries are kept
	// created ahead of need (fsutil.SpareFiles): Bazel marks every input
	// executable, and an executable entry is a copy, so a new input would
	// otherwise wait for an inode allocation on the action's path. 0
	// creates each when it is needed. Spares left by a process that died
	// are purged with the rest at the next start.
	SpareFiles int
}

// pather is implemented by stores whose blobs are plain files (cas.Disk). The
// cache links such files instead of copying them when they are on the same
// filesystem.
type pather interface {
	Path(digest.Digest) (string, bool)
}

// Cache is the local file cache. It is safe for concurrent use.
type Cache struct {
	dir      string // absolute
	tmpDir   string
	spares   *fsutil.SpareFiles // a copied entry's file in tmp/
	src      cas.Store
	srcFiles pather // nil if src has no files to link from
	maxBytes int64
	logger   *slog.Logger

	// noSrcLinks is set once linking from srcFiles failed with EXDEV: the
	// store is on another filesystem, so trying again for every blob is
	// pointless.
	noSrcLinks atomic.Bool
	// warnedCopy makes the "linking into action directories falls back to
	// copying" warning appear once.
	warnedCopy atomic.Bool

	shardMu sync.Mutex
	shards  map[string]bool // entry directories known to exist

	mu      sync.Mutex
	entries map[key]*entry // present and being fetched
	lru     list.List      // of *entry, present only; front = most recent
	total   int64          // bytes of present entries
}

// key identifies a cache entry: a digest and the variant's mode.
type key struct {
	d          digest.Digest
	executable bool
}

// entry is one cache file. Fields other than done/err are guarded by
// Cache.mu; err is written before done is closed and read only after.
type entry struct {
	k       key
	elem    *list.Element // in Cache.lru once present, nil while fetching
	pins    int           // links in progress; a pinned entry is not evicted
	done    chan struct{} // closed when the fetch ends
	err     error         // the fetch's failure, if any
	present bool
}

const (
	markerName  = "HEARTH_FILECACHE"
	tmpDirName  = "tmp"
	dirMode     = 0o755
	plainMode   = 0o444
	execMode    = 0o555
	execSuffix  = "-x"
	markerNotes = "This directory is Hearth's executor file cache. It is deleted and recreated whenever the executor starts.\n"
)

// New opens the cache in dir, creating dir if needed, and purges whatever a
// previous process left there (see the package comment for why). To make a
// mistyped path harmless, it refuses a non-empty directory that does not hold
// the marker file a previous New wrote. src is where missing blobs come from.
func New(dir string, src cas.Store, opts Options) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("filecache: directory is empty")
	}
	if src == nil {
		return nil, errors.New("filecache: source store is nil")
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("filecache: MaxBytes %d is negative (0 means unbounded)", opts.MaxBytes)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("filecache: directory %q: %w", dir, err)
	}
	c := &Cache{
		dir:      abs,
		tmpDir:   filepath.Join(abs, tmpDirName),
		src:      src,
		maxBytes: opts.MaxBytes,
		logger:   opts.Logger,
		entries:  make(map[key]*entry),
		shards:   make(map[string]bool),
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if p, ok := src.(pather); ok {
		c.srcFiles = p
	}
	removed, err := c.purge()
	if err != nil {
		return nil, err
	}
	if err := c.makeDirs(); err != nil {
		return nil, err
	}
	c.spares = fsutil.NewSpareFiles(c.tmpDir, "fetch-*", opts.SpareFiles)
	c.logger.Info("filecache: opened", "dir", abs, "max_bytes", c.maxBytes, "purged_entries", removed,
		"link_from_source", c.srcFiles != nil)
	return c, nil
}

// purge empties the cache directory, keeping only the marker.
func (c *Cache) purge() (int, error) {
	if err := os.MkdirAll(c.dir, dirMode); err != nil {
		return 0, fmt.Errorf("filecache: creating %s: %w", c.dir, err)
	}
	f, err := os.Open(c.dir)
	if err != nil {
		return 0, fmt.Errorf("filecache: opening %s: %w", c.dir, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("filecache: listing %s: %w", c.dir, err)
	}
	hasMarker := false
	for _, n := range names {
		if n == markerName {
			hasMarker = true
		}
	}
	if len(names) > 0 && !hasMarker {
		return 0, fmt.Errorf("filecache: %s is not empty and has no %s file, so it is not a cache directory this executor made; refusing to delete its contents (use an empty or new directory)", c.dir, markerName)
	}
	for _, n := range names {
		if n == markerName {
			continue
		}
		if err := os.RemoveAll(filepath.Join(c.dir, n)); err != nil {
			return 0, fmt.Errorf("filecache: purging %s: %w", c.dir, err)
		}
	}
	return len(names) - btoi(hasMarker), nil
}

func (c *Cache) makeDirs() error {
	marker := filepath.Join(c.dir, markerName)
	if err := os.WriteFile(marker, []byte(markerNotes), 0o644); err != nil {
		return fmt.Errorf("filecache: writing %s: %w", marker, err)
	}
	if err := os.MkdirAll(c.tmpDir, dirMode); err != nil {
		return fmt.Errorf("filecache: creating %s: %w", c.tmpDir, err)
	}
	return nil
}

// makeShard creates the directory of k's entry the first time it is needed,
// so that opening the cache costs one directory, not hundreds.
func (c *Cache) makeShard(k key) error {
	dir := filepath.Dir(c.path(k))
	c.shardMu.Lock()
	defer c.shardMu.Unlock()
	if c.shards[dir] {
		return nil
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("filecache: creating %s: %w", dir, err)
	}
	c.shards[dir] = true
	return nil
}

// path is where the entry of k lives. Digests are validated by
// digest.New/FromProto, so the hash is lower-case hex and cannot contain a
// path separator.
func (c *Cache) path(k key) string {
	p := c.dir + string(filepath.Separator) + digest.Lower(k.d.Function) + string(filepath.Separator) +
		k.d.Hash[:2] + string(filepath.Separator) + k.d.Hash + "-" + strconv.FormatInt(k.d.Size, 10)
	if k.executable {
		p += execSuffix
	}
	return p
}

// SizeBytes returns the total size of the cached files.
func (c *Cache) SizeBytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Count returns the number of cached files (each variant counts once).
func (c *Cache) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// acquire returns the present entry of k, pinned, fetching it first if it is
// absent. Concurrent callers for one key share one fetch. The caller must
// release the entry.
func (c *Cache) acquire(ctx context.Context, k key) (*entry, error) {
	for {
		c.mu.Lock()
		e := c.entries[k]
		if e == nil {
			e = &entry{k: k, done: make(chan struct{}), pins: 1}
			c.entries[k] = e
			c.mu.Unlock()
			if err := c.fetchEntry(ctx, e); err != nil {
				return nil, err
			}
			return e, nil
		}
		if e.present {
			e.pins++
			c.lru.MoveToFront(e.elem)
			c.mu.Unlock()
			return e, nil
		}
		c.mu.Unlock()
		select {
		case <-e.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if e.err != nil && !isContextErr(e.err) {
			return nil, e.err
		}
		// Either the fetch succeeded (loop to pin the entry, which may even
		// have been evicted already) or the fetcher's own context ended,
		// which says nothing about ours: try again, fetching ourselves.
	}
}

// fetchEntry fetches the new entry e (pinned once, for the caller) and
// publishes the outcome to waiters.
func (c *Cache) fetchEntry(ctx context.Context, e *entry) error {
	err := c.fetch(ctx, e.k)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		delete(c.entries, e.k)
		e.err = err
		close(e.done)
		return err
	}
	e.present = true
	e.elem = c.lru.PushFront(e)
	c.total += e.k.d.Size
	close(e.done)
	c.evictLocked()
	return nil
}

// release unpins e, evicting if the cache is over budget: an entry larger
// than the whole budget is linked once and then dropped.
func (c *Cache) release(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.pins--
	c.evictLocked()
}

// evictLocked drops least recently used, unpinned entries until the cache is
// within MaxBytes. Removing an entry unlinks one name of its inode: the
// hardlinks already made into action directories keep the inode and its data
// alive, so eviction never breaks a staged input. Unlinking happens under the
// lock so that a later fetch of the same key cannot rename its new file into
// place before the old one is unlinked.
func (c *Cache) evictLocked() {
	if c.maxBytes == 0 {
		return
	}
	for el := c.lru.Back(); el != nil && c.total > c.maxBytes; {
		e := el.Value.(*entry)
		prev := el.Prev()
		if e.pins == 0 {
			c.lru.Remove(el)
			delete(c.entries, e.k)
			c.total -= e.k.d.Size
			if err := os.Remove(c.path(e.k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				c.logger.Warn("filecache: removing an evicted entry", "path", c.path(e.k), "err", err)
			}
		}
		el = prev
	}
}

// remover is implemented by sources whose files the cache hardlinks
// (cas.Disk): a damaged shared inode must leave them too.
type remover interface {
	Remove(d digest.Digest, why string)
}

// Forget drops both variants of d from the cache, and from the source store
// when the cache shares its files, because their content can no longer be
// trusted: an action wrote through a hardlink of it. Inputs already staged
// elsewhere keep their links. The next use fetches d afresh.
func (c *Cache) Forget(d digest.Digest, why string) {
	c.mu.Lock()
	for _, exec := range []bool{false, true} {
		k := key{d: d, executable: exec}
		e := c.entries[k]
		if e == nil || !e.present {
			continue
		}
		c.lru.Remove(e.elem)
		delete(c.entries, k)
		c.total -= d.Size
		if err := os.Remove(c.path(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.logger.Warn("filecache: removing a damaged entry", "path", c.path(k), "err", err)
		}
	}
	c.mu.Unlock()
	c.logger.Error("filecache: dropped a damaged file", "digest", d.String(), "reason", why)
	if r, ok := c.src.(remover); ok && c.srcFiles != nil {
		r.Remove(d, why)
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
