package cas

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hearth-build/hearth/internal/digest"
	"golang.org/x/sys/unix"
)

// errWriterDone is returned by writes after Commit or Close.
var errWriterDone = errors.New("cas: writer already committed or closed")

// Create implements Store. A blob larger than MaxBytes is ErrTooLarge. Writing
// a blob that is already present costs no disk I/O: the bytes are counted and
// dropped, and the present blob is pinned (never evicted) until the writer is
// closed, so that a successful Commit always means "the blob is there".
func (d *Disk) Create(ctx context.Context, dg digest.Digest) (Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, err := keyOf(dg)
	if err != nil {
		return nil, fmt.Errorf("cas: create: %w", err)
	}
	if d.maxBytes > 0 && k.size > d.maxBytes {
		return nil, fmt.Errorf("%w: %s %s is %d bytes, the store holds at most %d", ErrTooLarge, k.fn, k.digest(), k.size, d.maxBytes)
	}
	if k.isEmpty() {
		return &presentWriter{k: k}, nil
	}
	if e := d.pin(k); e != nil {
		return &presentWriter{d: d, k: k, e: e}, nil
	}
	return d.createWith(ctx, k, true)
}

// createWith starts the upload of a new blob k. A relaxed ctx makes it a
// relaxed write; otherwise, with useJournal, a small blob is made durable
// through the journal (journal.go) once it is ready, and else by fsyncs.
func (d *Disk) createWith(ctx context.Context, k blobKey, useJournal bool) (Writer, error) {
	relaxed := isRelaxed(ctx)
	journaled := !relaxed && useJournal && d.journal.usable(k.size)
	if relaxed {
		if err := d.relaxed.begin(); err != nil {
			d.logger.Warn("cas: storing a blob durably instead of relaxed", "err", err)
			relaxed = false
		}
	}
	f, err := d.spares.Create()
	if errors.Is(err, fs.ErrNotExist) {
		// Someone removed tmp/ behind our back; recreate it once.
		if err = os.MkdirAll(d.tmpDir, dirMode); err == nil {
			f, err = os.CreateTemp(d.tmpDir, "upload-*")
		}
	}
	if err != nil {
		if relaxed {
			d.relaxed.end("")
		}
		return nil, fmt.Errorf("cas: starting the upload of %s %s: %w", k.fn, k.digest(), err)
	}
	w := &fileWriter{d: d, k: k, f: f, tmp: f.Name(), relaxed: relaxed}
	if journaled {
		w.journal = newJournalRecord(k)
	}
	return w, nil
}

// pin returns the present entry of k with one more pin, or nil.
func (d *Disk) pin(k blobKey) *entry {
	s := &d.shards[k.shard()]
	s.mu.RLock()
	defer s.mu.RUnlock()
	e := s.entries[k]
	if !e.present() {
		return nil
	}
	// Pinned under the read lock: eviction checks pins under the write
	// lock, so it either sees this pin or removed the entry before it.
	e.pins.Add(1)
	e.stamp.Store(d.clock.Add(1))
	return e
}

// tooMany is the early failure of a write past the digest's size.
func tooMany(k blobKey, n int64) error {
	return fmt.Errorf("%w: %s %s: %d bytes written, more than its size %d", ErrMismatch, k.fn, k.digest(), n, k.size)
}

func wrongSize(k blobKey, n int64) error {
	return fmt.Errorf("%w: %s %s: %d bytes written, its size is %d", ErrMismatch, k.fn, k.digest(), n, k.size)
}

// presentWriter writes a blob the store already holds (or the empty blob,
// with e nil): it only checks the byte count.
type presentWriter struct {
	d         *Disk
	k         blobKey
	e         *entry // pinned while the writer is open
	written   int64
	done      bool
	committed bool
}

func (w *presentWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errWriterDone
	}
	if w.written+int64(len(p)) > w.k.size {
		return 0, tooMany(w.k, w.written+int64(len(p)))
	}
	w.written += int64(len(p))
	return len(p), nil
}

func (w *presentWriter) Commit() error {
	if w.committed {
		return nil
	}
	if w.done {
		return errWriterDone
	}
	if w.written != w.k.size {
		return wrongSize(w.k, w.written)
	}
	if w.e != nil && w.d.lookup(w.k, w.d.clock.Add(1)) != w.e {
		// Only Open's healing removes a pinned entry: its file was
		// deleted or damaged by something other than this store.
		return fmt.Errorf("%w: %s %s vanished from the disk store during the upload (deleted outside the store?); upload it again", ErrNotFound, w.k.fn, w.k.digest())
	}
	w.committed = true
	w.release()
	return nil
}

func (w *presentWriter) Close() error {
	w.release()
	return nil
}

func (w *presentWriter) release() {
	if w.done {
		return
	}
	w.done = true
	if w.e != nil {
		w.e.pins.Add(-1)
	}
}

// fileWriter writes a new blob to a temp file in tmp/.
type fileWriter struct {
	d         *Disk
	k         blobKey
	f         *os.File // nil once closed
	tmp       string   // "" once renamed into place or removed
	written   int64
	flushed   int64 // bytes whose writeback has been started
	err       error // sticky: a failed write fails the commit
	committed bool
	closed    bool
	// relaxed: Commit leaves the fsyncs to the background syncer
	// (relaxed.go); the syncer hears of the writer's end exactly once.
	relaxed bool
	// journal, when not nil, is the journal record (header, then the bytes
	// written) that Commit makes durable (journal.go) before installing the
	// blob without fsyncs.
	journal []byte
}

func (w *fileWriter) Write(p []byte) (int, error) {
	if w.committed || w.closed {
		return 0, errWriterDone
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.written+int64(len(p)) > w.k.size {
		w.err = tooMany(w.k, w.written+int64(len(p)))
		return 0, w.err
	}
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.journal != nil {
		w.journal = append(w.journal, p[:n]...)
	}
	if err != nil {
		w.err = fmt.Errorf("cas: writing %s %s: %w", w.k.fn, w.k.digest(), err)
		return n, w.err
	}
	// Start writing a large blob back to disk while it is still arriving,
	// a window at a time, so that Commit's fsync finds little left to do
	// and the page cache does not fill with dirty pages that throttle the
	// writer. SYNC_FILE_RANGE_WRITE only queues the I/O; it does not wait.
	if w.written-w.flushed >= writebackWindow {
		_ = unix.SyncFileRange(int(w.f.Fd()), w.flushed, w.written-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
		w.flushed = w.written
	}
	return n, nil
}

// writebackWindow is how much of a blob is written before its writeback is
// started.
const writebackWindow = 8 << 20

// Commit makes the blob durable and visible: chmod 0444 and fsync the temp
// file, rename it into place, fsync the directory. Only then does the index
// show the blob, so nothing acknowledged or visible can be lost in a crash.
// A relaxed writer's Commit skips both fsyncs (relaxed.go); a journaled
// one syncs its journal record instead (journal.go).
func (w *fileWriter) Commit() error {
	if w.committed {
		return nil
	}
	if w.closed {
		return errWriterDone
	}
	if w.err != nil {
		return w.err
	}
	if w.written != w.k.size {
		return wrongSize(w.k, w.written)
	}
	if err := w.finishFile(); err != nil {
		w.err = err
		return err
	}
	var stamp int64
	var added bool
	var err error
	if w.journal != nil {
		err = w.d.journal.commit(w.k, w.journal, func() (ierr error) {
			stamp, added, ierr = w.d.install(w.k, w.tmp, false)
			return ierr
		})
		w.journal = nil
		if errors.Is(err, errJournalOff) {
			// The journal stopped after this upload chose it: its file
			// was not fsynced, so it is synced now, then installed the
			// way a blob outside the journal is.
			if err = syncFile(w.tmp); err == nil {
				stamp, added, err = w.d.install(w.k, w.tmp, true)
			}
		}
	} else {
		stamp, added, err = w.d.install(w.k, w.tmp, !w.relaxed)
	}
	if err != nil {
		w.err = err
		return err
	}
	w.committed = true
	if w.relaxed {
		w.relaxed = false
		if added {
			w.d.relaxed.end(w.d.blobPath(w.k))
		} else {
			w.d.relaxed.end("")
		}
	}
	if !added {
		// A concurrent writer stored the blob first; ours is a duplicate.
		if err := removeFile(w.tmp); err != nil {
			w.d.logger.Warn("cas: removing a duplicate upload", "path", w.tmp, "err", err)
		}
		w.tmp = ""
		return nil
	}
	w.tmp = ""
	w.d.evict(stamp)
	return nil
}

// finishFile makes the temp file's content and mode durable and closes it.
func (w *fileWriter) finishFile() error {
	f := w.f
	w.f = nil
	err := f.Chmod(blobMode)
	if err == nil && !w.relaxed && w.journal == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cas: making %s %s durable: %w", w.k.fn, w.k.digest(), err)
	}
	return nil
}

func (w *fileWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if w.relaxed {
		w.relaxed = false
		w.d.relaxed.end("")
	}
	var err error
	if w.f != nil {
		err = w.f.Close()
		w.f = nil
	}
	if w.tmp != "" {
		if rerr := removeFile(w.tmp); rerr != nil && err == nil {
			err = fmt.Errorf("cas: removing an abandoned upload: %w", rerr)
		}
		w.tmp = ""
	}
	if w.committed {
		return nil
	}
	return err
}

// install moves the durable temp file tmp into place as blob k (and, if
// durable, fsyncs the directory). If k is already present (a concurrent
// writer won) it leaves tmp for the caller to remove and reports added =
// false. stamp is k's recency stamp.
func (d *Disk) install(k blobKey, tmp string, durable bool) (stamp int64, added bool, err error) {
	s := &d.shards[k.shard()]
	for {
		s.mu.Lock()
		e := s.entries[k]
		if e.present() {
			stamp = d.clock.Add(1)
			e.stamp.Store(stamp)
			s.mu.Unlock()
			return stamp, false, nil
		}
		if e == nil {
			break
		}
		// Another writer is installing this blob, or eviction is removing
		// it: wait, then look again.
		busy := e.busy
		s.mu.Unlock()
		<-busy
	}
	// Reserve the path: while e is busy, nobody else renames to or unlinks
	// it, so the file operations below need not hold the shard lock.
	e := &entry{busy: make(chan struct{})}
	s.entries[k] = e
	s.mu.Unlock()

	final := d.blobPath(k)
	err = os.Rename(tmp, final)
	if errors.Is(err, fs.ErrNotExist) {
		// First blob of this shard (or its directory was removed behind
		// our back): create the directory, durably, and retry.
		if err = d.makeShardDir(k); err == nil {
			err = os.Rename(tmp, final)
		}
	}
	renamed := err == nil
	if err == nil && durable {
		err = syncDir(filepath.Dir(final))
	}

	s.mu.Lock()
	busy := e.busy
	if err != nil {
		delete(s.entries, k)
		if renamed {
			// Not known to be durable, so not acknowledged: remove it
			// rather than leave a blob the index does not claim.
			_ = removeFile(final)
		}
		err = fmt.Errorf("cas: storing %s %s: %w", k.fn, k.digest(), err)
	} else {
		stamp = d.clock.Add(1)
		e.stamp.Store(stamp)
		e.busy = nil
		d.totalBytes.Add(k.size)
		d.count.Add(1)
	}
	close(busy)
	s.mu.Unlock()
	return stamp, err == nil, err
}

// makeShardDir creates the directory of k's shard and makes its entry in the
// digest function's directory durable.
func (d *Disk) makeShardDir(k blobKey) error {
	if err := os.MkdirAll(d.shardDir(k.fn, k.shard()), dirMode); err != nil {
		return err
	}
	return syncDir(d.fnDirs[k.fn])
}
