package cas

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/fsutil"
)

// DiskOptions configures NewDisk.
type DiskOptions struct {
	// MaxBytes bounds the total size of the stored blobs; least recently
	// used blobs are evicted to stay under it. 0 means unbounded.
	MaxBytes int64
	// Logger receives startup statistics and anomalies (unknown files,
	// damaged blobs). Nil means slog.Default().
	Logger *slog.Logger
	// SpareFiles is how many empty upload files are kept created ahead of
	// need in tmp/ (fsutil.SpareFiles), so that a small upload does not
	// wait for an inode allocation; 0 creates each when its upload starts.
	SpareFiles int
	// NoJournal makes every durable upload fsync its file and directory
	// instead of going through the upload journal (journal.go); for
	// measuring the journal against what it replaces.
	NoJournal bool
}

// Disk is a durable blob store in a directory:
//
//	{dir}/{sha256|blake3}/{first two hex chars of the hash}/{hash}-{size}
//	{dir}/tmp/   uploads in progress (same filesystem, so rename is atomic)
//	{dir}/journal  small uploads made durable before they are in place (journal.go)
//
// Digest functions are separate namespaces. The size is in the file name so
// that a restart rebuilds the index from directory listings alone. Blob files
// are immutable and read-only (mode 0444).
//
// A Disk trusts its caller: it checks the number of bytes written but does not
// hash them. Wrap it with NewVerifying wherever the bytes come from a client.
//
// One Disk owns its directory: two Disks (or processes) on the same directory
// are not supported (each deletes the other's uploads in progress at startup).
type Disk struct {
	dir      string // absolute
	tmpDir   string
	fnDirs   map[digest.Function]string
	maxBytes int64
	logger   *slog.Logger

	shards [shardCount]shard
	// clock hands out recency stamps; it starts above every file mtime (in
	// nanoseconds) seen at startup so that new uses are always more recent.
	clock      atomic.Int64
	totalBytes atomic.Int64 // of present blobs
	count      atomic.Int64 // of present blobs

	evictMu sync.Mutex
	// evictedBlobs and evictedBytes count evictions, for metrics.
	evictedBlobs, evictedBytes atomic.Int64
	evictor                    evictor // guarded by evictMu

	relaxed relaxedSyncer
	journal *journal           // durable small uploads (journal.go); nil if it could not be opened
	spares  *fsutil.SpareFiles // an upload's file in tmp/
	// uncleanSince, when set, is the time from which blob files may be
	// unsynced relaxed writes of a process that did not stop cleanly; the
	// rebuild verifies those (relaxed.go).
	uncleanSince time.Time
}

var _ Store = (*Disk)(nil)

const (
	tmpDirName = "tmp"
	blobMode   = 0o444
	dirMode    = 0o755
)

// NewDisk opens (creating if needed) the store in dir. It removes uploads left
// by a previous process, rebuilds the index from the files present and, if the
// store is over MaxBytes (say the limit was lowered), evicts down to it.
func NewDisk(dir string, opts DiskOptions) (*Disk, error) {
	if dir == "" {
		return nil, errors.New("cas: disk store directory is empty")
	}
	if opts.MaxBytes < 0 {
		return nil, fmt.Errorf("cas: MaxBytes %d is negative (0 means unbounded)", opts.MaxBytes)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("cas: disk store directory %q: %w", dir, err)
	}
	d := &Disk{
		dir:      abs,
		tmpDir:   filepath.Join(abs, tmpDirName),
		fnDirs:   make(map[digest.Function]string, len(digest.Supported)),
		maxBytes: opts.MaxBytes,
		logger:   opts.Logger,
	}
	if d.logger == nil {
		d.logger = slog.Default()
	}
	for i := range d.shards {
		d.shards[i].entries = make(map[blobKey]*entry)
	}
	for _, fn := range digest.Supported {
		d.fnDirs[fn] = filepath.Join(abs, digest.Lower(fn))
	}
	d.relaxed.init(d)
	if err := d.makeDirs(); err != nil {
		return nil, err
	}
	start := time.Now()
	since, unclean, err := d.readRelaxedMarker()
	if err != nil {
		return nil, err
	}
	d.uncleanSince = since // zero after a clean stop
	removedTmp, err := d.removeTemps()
	if err != nil {
		return nil, err
	}
	st, err := d.rebuild()
	if err != nil {
		return nil, err
	}
	if unclean {
		// Every blob that might be unsynced was just verified.
		d.logger.Warn("cas: the previous process stopped without syncing its relaxed writes; verified the blobs written since",
			"since", since, "verified", st.verified, "removed_damaged", st.damaged)
		if err := d.removeRelaxedMarker(); err != nil {
			return nil, err
		}
		d.uncleanSince = time.Time{}
	}
	d.spares = fsutil.NewSpareFiles(d.tmpDir, "upload-*", opts.SpareFiles)
	var restored int
	if !opts.NoJournal {
		if restored, err = d.startJournal(); err != nil {
			d.spares.Close()
			return nil, err
		}
	}
	d.logger.Info("cas: disk store opened", "dir", abs, "blobs", d.count.Load(), "bytes", d.totalBytes.Load(),
		"max_bytes", d.maxBytes, "removed_uploads", removedTmp, "unknown_files", st.unknown,
		"removed_damaged", st.damaged, "restored_from_journal", restored, "took", time.Since(start))
	d.evict(d.clock.Load() + 1)
	return d, nil
}

// makeDirs creates the top of the layout and makes the directories durable,
// so that a blob acknowledged right after the first start is not lost with
// its parent directory. Shard directories are created on first use (see
// install): creating all 512 up front costs a fifth of a second on some
// filesystems, for every new store.
func (d *Disk) makeDirs() error {
	_, err := os.Stat(d.dir)
	created := errors.Is(err, fs.ErrNotExist)
	if err := os.MkdirAll(d.tmpDir, dirMode); err != nil {
		return fmt.Errorf("cas: creating %s: %w", d.tmpDir, err)
	}
	for _, fn := range digest.Supported {
		if err := os.MkdirAll(d.fnDirs[fn], dirMode); err != nil {
			return fmt.Errorf("cas: creating %s: %w", d.fnDirs[fn], err)
		}
	}
	if err := syncDir(d.dir); err != nil {
		return err
	}
	if created {
		// The store's own entry in its parent. (Any further ancestors
		// MkdirAll created are the operator's business.)
		return syncDir(filepath.Dir(d.dir))
	}
	return nil
}

// removeTemps deletes everything in tmp/: uploads of a previous process that
// were never committed, so never acknowledged.
func (d *Disk) removeTemps() (int, error) {
	names, err := readDirNames(d.tmpDir)
	if err != nil {
		return 0, fmt.Errorf("cas: listing %s: %w", d.tmpDir, err)
	}
	for _, name := range names {
		if err := os.RemoveAll(filepath.Join(d.tmpDir, name)); err != nil {
			return 0, fmt.Errorf("cas: removing a stale upload: %w", err)
		}
	}
	return len(names), nil
}

// FindMissing implements Store. It makes no system call per digest: presence
// is the in-memory index, which the store keeps in step with the disk.
func (d *Disk) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	stamp := d.clock.Add(1)
	var missing []digest.Digest
	var seen map[blobKey]struct{}
	for i, dg := range ds {
		k, err := keyOf(dg)
		if err != nil {
			return nil, fmt.Errorf("cas: digest %d of %d: %w", i, len(ds), err)
		}
		if k.isEmpty() || d.lookup(k, stamp) != nil {
			continue
		}
		if seen == nil {
			seen = make(map[blobKey]struct{})
		}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		missing = append(missing, dg)
	}
	return missing, nil
}

// Open implements Store. The reader is the blob's *os.File, positioned at
// offset. It stays readable after the blob is evicted: eviction only unlinks
// the file, and on Linux (and every POSIX system) an unlinked file's data
// lives until its last open descriptor is closed.
func (d *Disk) Open(ctx context.Context, dg digest.Digest, offset int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := keyOf(dg)
	if err != nil {
		return nil, fmt.Errorf("cas: open: %w", err)
	}
	if k.isEmpty() {
		if offset != 0 {
			return nil, outOfRange(k, offset)
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	e := d.lookup(k, d.clock.Add(1))
	if e == nil {
		return nil, notFound(k)
	}
	if offset < 0 || offset > k.size {
		return nil, outOfRange(k, offset)
	}
	f, err := os.Open(d.blobPath(k))
	if errors.Is(err, fs.ErrNotExist) {
		d.forget(k, e, "file missing")
		return nil, notFound(k)
	}
	if err != nil {
		return nil, fmt.Errorf("cas: opening %s %s: %w", k.fn, k.digest(), err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cas: stat of %s %s: %w", k.fn, k.digest(), err)
	}
	if fi.Size() != k.size {
		f.Close()
		d.forget(k, e, fmt.Sprintf("file has %d bytes", fi.Size()))
		return nil, notFound(k)
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("cas: seeking %s %s to %d: %w", k.fn, k.digest(), offset, err)
		}
	}
	return f, nil
}

// Path returns the file of a present blob, marking it used, for callers that
// hardlink blobs (the executor's file cache). The file is shared with the
// store: it is read-only (mode 0444) and must never be written, truncated or
// chmod-ed, or every later reader gets corrupt data. It may be evicted at any
// time after Path returns, so a failing link means "fall back to Open", not
// "corrupt store". The empty blob has no file: Path reports false for it, and
// callers create empty files themselves.
func (d *Disk) Path(dg digest.Digest) (string, bool) {
	k, err := keyOf(dg)
	if err != nil || k.isEmpty() {
		return "", false
	}
	if d.lookup(k, d.clock.Add(1)) == nil {
		return "", false
	}
	return d.blobPath(k), true
}

// Remove drops the blob d from the store, if present: a caller that found
// its file damaged (a hardlink of it written through by an action) makes
// sure nobody is served the damaged bytes. Readers that opened it before keep
// reading what they opened.
func (d *Disk) Remove(dg digest.Digest, why string) {
	k, err := keyOf(dg)
	if err != nil || k.isEmpty() {
		return
	}
	s := &d.shards[k.shard()]
	s.mu.RLock()
	e := s.entries[k]
	s.mu.RUnlock()
	if e != nil {
		d.forget(k, e, why)
	}
}

// SizeBytes returns the total size of the blobs stored.
func (d *Disk) SizeBytes() int64 { return d.totalBytes.Load() }

// Count returns the number of blobs stored (the empty blobs not included).
func (d *Disk) Count() int { return int(d.count.Load()) }

// Evictions returns how many blobs, and how many bytes, eviction removed
// since the store was opened.
func (d *Disk) Evictions() (blobs, bytes int64) {
	return d.evictedBlobs.Load(), d.evictedBytes.Load()
}

// shardNames are the subdirectory names "00".."ff", precomputed because
// paths are built on every Open and commit.
var shardNames = func() (n [shardCount]string) {
	for i := range n {
		n[i] = hex.EncodeToString([]byte{byte(i)})
	}
	return n
}()

func (d *Disk) shardDir(fn digest.Function, i int) string {
	return d.fnDirs[fn] + string(filepath.Separator) + shardNames[i]
}

func (d *Disk) blobPath(k blobKey) string {
	return d.shardDir(k.fn, k.shard()) + string(filepath.Separator) + hex.EncodeToString(k.hash[:]) + "-" + strconv.FormatInt(k.size, 10)
}

func notFound(k blobKey) error {
	return fmt.Errorf("%w: %s %s", ErrNotFound, k.fn, k.digest())
}

func outOfRange(k blobKey, offset int64) error {
	return fmt.Errorf("%w: offset %d of %s %s (size %d)", ErrOutOfRange, offset, k.fn, k.digest(), k.size)
}

// syncDir makes the entries of directory dir (renames, creations) durable.
func syncDir(dir string) error { return syncPath(dir, "directory") }

// syncFile makes the bytes of the (closed) file at path durable.
func syncFile(path string) error { return syncPath(path, "file") }

func syncPath(path, what string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("cas: opening %s for fsync: %w", what, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cas: fsync of %s %s: %w", what, path, err)
	}
	return nil
}

// removeFile removes path; a file already gone is not an error.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
