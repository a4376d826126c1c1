package cas

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Relaxed durability, for blobs that nobody was promised would survive a
// power loss: the outputs an executor on this machine stores for the action
// it ran. A client's upload is acknowledged only once its blob is on disk
// (Commit fsyncs the file and its directory); an action's outputs are
// reproducible, so two journal commits per output on every action's reply
// path buy nothing a rerun does not. A relaxed Commit renames the blob into
// place (visible and served at once, from the page cache) and leaves the
// fsyncs to a background syncer that batches them, a few milliseconds later.
//
// What a power loss or kernel crash may then do, and why it is safe:
//   - lose a blob written in the last moments: it reads as absent, and an
//     action cache entry naming it reads as a miss (the completeness check),
//     exactly as after an eviction;
//   - leave a blob file truncated or, on a file system that does not order
//     data before metadata, holding other bytes: the store never serves it,
//     because the open after an unclean stop verifies every blob that may not
//     have been synced (see below).
//
// The marker file {dir}/relaxed-unsynced exists while relaxed blobs may be
// unsynced; it is created (durably) before the first relaxed blob of a
// process, and removed by Close once everything is synced. Its mtime is a
// "synced up to" time: every relaxed blob whose file is older was synced.
// The syncer moves it forward only when no relaxed write is in flight and
// nothing is pending, so a blob written later is necessarily newer. NewDisk,
// finding the marker (an unclean stop), hashes every blob at least as new as
// the marker (less a margin for the file system's coarse clock) and removes
// those whose bytes do not match their name.

type relaxedKey struct{}

// WithRelaxedDurability returns ctx marking the blobs created with it as
// relaxed (see above). Stores other than Disk ignore the mark: a remote
// store's writes are acknowledged as its own.
func WithRelaxedDurability(ctx context.Context) context.Context {
	return context.WithValue(ctx, relaxedKey{}, true)
}

func isRelaxed(ctx context.Context) bool {
	v, _ := ctx.Value(relaxedKey{}).(bool)
	return v
}

const (
	relaxedMarkerName = "relaxed-unsynced"
	// relaxedBatchDelay lets the commits of one action's outputs (and of
	// concurrent actions) gather into one batch of fsyncs.
	relaxedBatchDelay = 20 * time.Millisecond
	// relaxedClockMargin covers the file system stamping mtimes with a
	// coarse clock (a jiffy behind the real time).
	relaxedClockMargin = time.Second
)

// relaxedSyncer owns the marker and the blobs committed relaxed but not yet
// synced.
type relaxedSyncer struct {
	d *Disk

	mu       sync.Mutex
	marker   bool     // created in this process
	inflight int      // relaxed writers created and not yet committed or closed
	pending  []string // committed blob paths awaiting fsync
	running  bool     // a flush goroutine is scheduled or running
}

// relaxedCloseWait bounds how long Close waits for relaxed writers still
// open: a store's Close must not hang a shutdown on a writer someone forgot.
var relaxedCloseWait = 30 * time.Second // a variable for the test

func (s *relaxedSyncer) init(d *Disk) { s.d = d }

func (s *relaxedSyncer) markerPath() string { return filepath.Join(s.d.dir, relaxedMarkerName) }

// begin registers a relaxed writer before it writes anything, creating the
// marker first if this process has none yet.
func (s *relaxedSyncer) begin() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.marker {
		if err := s.createMarker(); err != nil {
			return err
		}
		s.marker = true
	}
	s.inflight++
	return nil
}

// createMarker makes the marker durable before any relaxed blob exists.
func (s *relaxedSyncer) createMarker() error {
	f, err := os.OpenFile(s.markerPath(), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("cas: creating %s: %w", relaxedMarkerName, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(s.d.dir)
	}
	if err != nil {
		return fmt.Errorf("cas: creating %s: %w", relaxedMarkerName, err)
	}
	return nil
}

// end unregisters a relaxed writer; path is its committed blob ("" if it
// was abandoned or was a duplicate).
func (s *relaxedSyncer) end(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	if path != "" {
		s.pending = append(s.pending, path)
	}
	if !s.running && (len(s.pending) > 0 || s.inflight == 0) {
		s.running = true
		go s.flushLoop()
	}
}

// flushLoop syncs batches until nothing is pending, then advances the
// marker if no relaxed writer is in flight.
func (s *relaxedSyncer) flushLoop() {
	for {
		time.Sleep(relaxedBatchDelay)
		s.mu.Lock()
		batch := s.pending
		s.pending = nil
		s.mu.Unlock()
		s.syncAll(batch)
		s.mu.Lock()
		if len(s.pending) > 0 {
			s.mu.Unlock()
			continue
		}
		var advance time.Time
		if s.inflight == 0 {
			advance = time.Now()
		}
		s.running = false
		s.mu.Unlock()
		if !advance.IsZero() {
			// Not fsynced: if the new mtime is lost, the older one makes
			// the next open verify more blobs, never fewer.
			if err := os.Chtimes(s.markerPath(), advance, advance); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.d.logger.Warn("cas: advancing the relaxed-durability marker", "err", err)
			}
		}
		return
	}
}

// syncAll fsyncs each blob file of batch and then each of their
// directories. A blob removed meanwhile needs nothing.
func (s *relaxedSyncer) syncAll(batch []string) {
	dirs := make(map[string]bool)
	for _, p := range batch {
		f, err := os.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err == nil {
			err = f.Sync()
			f.Close()
		}
		if err != nil {
			s.d.logger.Warn("cas: syncing a relaxed blob", "path", p, "err", err)
			continue
		}
		dirs[filepath.Dir(p)] = true
	}
	for dir := range dirs {
		if err := syncDir(dir); err != nil {
			s.d.logger.Warn("cas: syncing a relaxed blob's directory", "err", err)
		}
	}
}

// close waits for every relaxed writer and pending sync, then removes the
// marker: the store is as durable as if nothing had been relaxed.
func (s *relaxedSyncer) close() error {
	deadline := time.Now().Add(relaxedCloseWait)
	s.mu.Lock()
	for s.running || s.inflight > 0 || len(s.pending) > 0 {
		if !s.running {
			s.running = true
			go s.flushLoop()
		}
		if open := s.inflight; time.Now().After(deadline) {
			s.mu.Unlock()
			// The marker stays: the next start verifies what they wrote.
			return fmt.Errorf("cas: %d relaxed writes still open after %s; left unsynced for the next start to verify", open, relaxedCloseWait)
		}
		s.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
		s.mu.Lock()
	}
	had := s.marker
	s.marker = false
	s.mu.Unlock()
	if !had {
		return nil
	}
	return s.d.removeRelaxedMarker()
}

// removeRelaxedMarker records, durably, that no relaxed write is unsynced.
func (d *Disk) removeRelaxedMarker() error {
	if err := os.Remove(filepath.Join(d.dir, relaxedMarkerName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cas: removing %s: %w", relaxedMarkerName, err)
	}
	return syncDir(d.dir)
}

// Close makes every blob committed with relaxed durability durable and
// records the clean stop, so that the next NewDisk need not verify them, and
// removes the spare upload files. The store must not be written to
// meanwhile or after.
func (d *Disk) Close() error {
	d.spares.Close()
	if err := d.relaxed.close(); err != nil {
		return err // the journal stays: the next start replays it
	}
	return d.journal.close()
}

// readRelaxedMarker reads the marker a previous process left: blobs at least as
// new as the returned time may be unsynced. ok is false after a clean stop.
func (d *Disk) readRelaxedMarker() (since time.Time, ok bool, err error) {
	fi, err := os.Stat(filepath.Join(d.dir, relaxedMarkerName))
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("cas: reading %s: %w", relaxedMarkerName, err)
	}
	return fi.ModTime().Add(-relaxedClockMargin), true, nil
}
