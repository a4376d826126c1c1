package cas

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
)

// Rebuilding the index at startup.
//
// The index is rebuilt from directory listings: the file name carries the hash
// and the size, so an unbounded store never stats a file (1M blobs are 512
// directory reads at most). A bounded store stats each file once, for its mtime (the
// time it was committed), which seeds the LRU order; the stat also catches a
// file whose size disagrees with its name, which is then removed. Shards are
// scanned in parallel; each worker owns whole shards, so there is no lock
// contention.

// rebuildStats counts what the rebuild found besides blobs.
type rebuildStats struct {
	unknown  int64 // files and directories that are not blobs, left alone
	damaged  int64 // blob files of the wrong size (or bytes), removed
	verified int64 // blob files hashed after an unclean stop
}

// maxUnknownLogged caps the warnings about unknown files, so that a directory
// of junk does not flood the log; the total is in the startup line.
const maxUnknownLogged = 10

func (d *Disk) rebuild() (rebuildStats, error) {
	var st rebuildStats
	if err := d.checkTopLevel(&st); err != nil {
		return st, err
	}
	var (
		next     atomic.Int64
		maxStamp atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	workers := min(runtime.GOMAXPROCS(0), 8)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= shardCount {
					return
				}
				ms, err := d.rebuildShard(i, &st)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				for cur := maxStamp.Load(); ms > cur && !maxStamp.CompareAndSwap(cur, ms); cur = maxStamp.Load() {
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return st, firstErr
	}
	// New uses must rank after every mtime seen, and after each other.
	d.clock.Store(max(time.Now().UnixNano(), maxStamp.Load()) + 1)
	return st, nil
}

// checkTopLevel logs anything in the store's directory that the store does not
// own; it is left alone.
func (d *Disk) checkTopLevel(st *rebuildStats) error {
	names, err := readDirNames(d.dir)
	if err != nil {
		return fmt.Errorf("cas: listing %s: %w", d.dir, err)
	}
	for _, name := range names {
		if name == tmpDirName || name == journalName || name == relaxedMarkerName {
			continue
		}
		if _, ok := digest.FunctionFromLower(name); ok {
			continue
		}
		d.unknownFile(st, filepath.Join(d.dir, name))
	}
	for _, fn := range digest.Supported {
		names, err := readDirNames(d.fnDirs[fn])
		if err != nil {
			return fmt.Errorf("cas: listing %s: %w", d.fnDirs[fn], err)
		}
		for _, name := range names {
			if len(name) != 2 || !isLowerHex(name) {
				d.unknownFile(st, filepath.Join(d.fnDirs[fn], name))
			}
		}
	}
	return nil
}

// rebuildShard indexes shard i of every digest function and returns the
// newest stamp it assigned.
func (d *Disk) rebuildShard(i int, st *rebuildStats) (int64, error) {
	s := &d.shards[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	var newest int64
	for _, fn := range digest.Supported {
		n, err := d.rebuildShardDir(s, fn, i, st)
		if err != nil {
			return 0, err
		}
		newest = max(newest, n)
	}
	return newest, nil
}

// rebuildShardDir indexes the directory of shard i of fn into s.
func (d *Disk) rebuildShardDir(s *shard, fn digest.Function, i int, st *rebuildStats) (int64, error) {
	dir := d.shardDir(fn, i)
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil // no blob of this shard stored yet
	}
	if err != nil {
		return 0, fmt.Errorf("cas: listing %s: %w", dir, err)
	}
	// ReadDir(-1) on an open file does not sort (os.ReadDir does), and
	// takes the file type from the directory entry: no stat.
	ents, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("cas: listing %s: %w", dir, err)
	}
	// One allocation for the directory's entries rather than one per blob:
	// a million small objects cost startup time and GC work for ever. An
	// evicted entry's slot is only freed with its whole chunk, which wastes
	// a few bytes per blob at worst.
	chunk := make([]entry, len(ents))
	used := 0
	var newest int64
	for _, de := range ents {
		name := de.Name()
		k, ok := parseBlobName(fn, name)
		if !ok || !de.Type().IsRegular() || name[:2] != shardNames[i] {
			d.unknownFile(st, filepath.Join(dir, name))
			continue
		}
		if k.isEmpty() {
			continue // always present without a file; harmless
		}
		var stamp int64
		if d.maxBytes > 0 || !d.uncleanSince.IsZero() {
			fi, err := de.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("cas: stat of %s: %w", filepath.Join(dir, name), err)
			}
			if fi.Size() != k.size {
				atomic.AddInt64(&st.damaged, 1)
				d.logger.Warn("cas: removing a blob file of the wrong size", "path", filepath.Join(dir, name), "size", fi.Size())
				if err := removeFile(filepath.Join(dir, name)); err != nil {
					return 0, fmt.Errorf("cas: removing damaged blob %s: %w", filepath.Join(dir, name), err)
				}
				continue
			}
			if !d.uncleanSince.IsZero() && !fi.ModTime().Before(d.uncleanSince) {
				atomic.AddInt64(&st.verified, 1)
				ok, err := blobFileMatches(filepath.Join(dir, name), k)
				if err != nil {
					return 0, err
				}
				if !ok {
					atomic.AddInt64(&st.damaged, 1)
					d.logger.Warn("cas: removing a blob file whose bytes do not match its name (unsynced when the previous process stopped)", "path", filepath.Join(dir, name))
					if err := removeFile(filepath.Join(dir, name)); err != nil {
						return 0, fmt.Errorf("cas: removing damaged blob %s: %w", filepath.Join(dir, name), err)
					}
					continue
				}
			}
			if d.maxBytes > 0 {
				stamp = fi.ModTime().UnixNano()
				newest = max(newest, stamp)
			}
		}
		e := &chunk[used]
		used++
		e.stamp.Store(stamp)
		s.entries[k] = e
		d.totalBytes.Add(k.size)
		d.count.Add(1)
	}
	return newest, nil
}

// unknownFile records a file the store does not own. st's counters are
// updated from several workers.
func (d *Disk) unknownFile(st *rebuildStats, path string) {
	if n := atomic.AddInt64(&st.unknown, 1); n <= maxUnknownLogged {
		d.logger.Warn("cas: ignoring a file that is not a blob", "path", path)
	}
}

// parseBlobName parses "{hash}-{size}", accepting only the canonical form the
// store writes (lower-case hex, decimal size without sign or leading zeros).
func parseBlobName(fn digest.Function, name string) (blobKey, bool) {
	hash, sizeStr, ok := strings.Cut(name, "-")
	if !ok || sizeStr == "" || sizeStr[0] < '0' || sizeStr[0] > '9' || (len(sizeStr) > 1 && sizeStr[0] == '0') {
		return blobKey{}, false
	}
	size, err := strconv.ParseInt(sizeStr, 10, 64)
	if err != nil {
		return blobKey{}, false
	}
	k, err := keyOf(digest.Digest{Function: fn, Hash: hash, Size: size})
	return k, err == nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if hexValue[s[i]] == badHex {
			return false
		}
	}
	return true
}

// blobFileMatches reports whether the file at path holds exactly k's bytes.
func blobFileMatches(path string, k blobKey) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("cas: verifying %s: %w", path, err)
	}
	defer f.Close()
	h := digest.NewHasher(k.fn)
	n, err := io.Copy(h, f)
	if err != nil {
		return false, fmt.Errorf("cas: verifying %s: %w", path, err)
	}
	return n == k.size && hex.EncodeToString(h.Sum(nil)) == k.digest().Hash, nil
}
