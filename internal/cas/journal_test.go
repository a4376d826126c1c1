package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
)

// loseBlobFile removes dg's file behind the store's back: what a power loss
// may do to a blob installed relaxed before the syncer reached it.
func loseBlobFile(t *testing.T, d *Disk, dg digest.Digest) {
	t.Helper()
	p, ok := d.Path(dg)
	if !ok {
		t.Fatalf("%s is not in the store", dg)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func journalRecords(t *testing.T, dir string) []journalRecord {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, journalName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := readJournalFile(f, journalSize)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func smallBlob(i int) []byte {
	return []byte(fmt.Sprintf("small upload %d %s", i, bytes.Repeat([]byte("x"), i)))
}

// An acknowledged small upload survives the loss of its blob file after an
// unclean stop: the next open stores it again from the journal, with its
// bytes. A large upload is synced in place and never journaled.
func TestJournalRestoresAcknowledgedUploads(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	a := mustPut(t, d, digest.SHA256, smallBlob(1))
	b := mustPut(t, d, digest.BLAKE3, smallBlob(2))
	large := bytes.Repeat([]byte("large "), journalMaxBlob/5)
	l := mustPut(t, d, digest.SHA256, large)
	c := mustPut(t, d, digest.SHA256, smallBlob(3))
	if recs := journalRecords(t, dir); len(recs) != 3 {
		t.Fatalf("journal holds %d records, want 3 (the small uploads only)", len(recs))
	}
	if _, ok := markerInfo(t, dir); ok {
		t.Fatal("journaled uploads created the relaxed-durability marker")
	}
	loseBlobFile(t, d, a)
	loseBlobFile(t, d, b)
	// c's file keeps its name and size but not its bytes.
	p, _ := d.Path(c)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, make([]byte, len(smallBlob(3))), 0o444); err != nil {
		t.Fatal(err)
	}

	d2 := newDisk(t, dir, 0) // d never closed: an unclean stop
	for dg, want := range map[digest.Digest][]byte{a: smallBlob(1), b: smallBlob(2), c: smallBlob(3), l: large} {
		if got := mustGet(t, d2, dg); !bytes.Equal(got, want) {
			t.Errorf("%s reads %d bytes, want its %d", dg, len(got), len(want))
		}
	}
	if d2.Count() != 4 {
		t.Errorf("count %d after the replay, want 4", d2.Count())
	}
}

// A record whose bytes do not hash to its key (torn by a crash, or the
// stale rest of an earlier round) is never stored, and the replay stops
// there; so does it at bytes that are not a record.
func TestJournalReplayStopsAtAnInvalidRecord(t *testing.T) {
	key := func(fn digest.Function, data []byte) blobKey {
		k, err := keyOf(digest.Compute(fn, data))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	record := func(k blobKey, data []byte) []byte { return append(newJournalRecord(k), data...) }
	valid := func(data []byte) []byte { return record(key(digest.SHA256, data), data) }
	torn := record(key(digest.SHA256, []byte("the whole blob")), []byte("the whole bl\x00\x00"))
	for _, tt := range []struct {
		name    string
		records [][]byte
		want    int // records replayed, from the first
	}{
		{"all valid", [][]byte{valid(smallBlob(1)), valid(smallBlob(2))}, 2},
		{"torn second", [][]byte{valid(smallBlob(1)), torn, valid(smallBlob(3))}, 1},
		{"garbage first", [][]byte{[]byte("not a record at all, not at all, no, not one bit"), valid(smallBlob(2))}, 0},
		{"cut short", [][]byte{valid(smallBlob(1)), valid(smallBlob(2))[:journalHeader+3]}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, journalName), bytes.Join(tt.records, nil), 0o600); err != nil {
				t.Fatal(err)
			}
			d := newDisk(t, dir, 0)
			if d.Count() != tt.want {
				t.Fatalf("%d blobs stored from the journal, want %d", d.Count(), tt.want)
			}
			for _, data := range [][]byte{smallBlob(1), smallBlob(2)}[:tt.want] {
				mustGet(t, d, digest.Compute(digest.SHA256, data))
			}
			if m := missing(t, d, digest.Compute(digest.SHA256, []byte("the whole blob"))); len(m) != 1 {
				t.Error("a torn record was stored")
			}
		})
	}
}

// Concurrent commits share fdatasyncs and fill the journal several times
// over; every acknowledged blob is there, and those journaled since the
// last rotation are restored after an unclean stop.
func TestJournalConcurrentCommitsAndRotation(t *testing.T) {
	old := journalSize
	journalSize = 4 << 10
	t.Cleanup(func() { journalSize = old })
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	const n = 64
	ds := make([]digest.Digest, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds[i] = mustPut(t, d, digest.SHA256, smallBlob(100+i))
		}()
	}
	wg.Wait()
	if m := missing(t, d, ds...); len(m) != 0 {
		t.Fatalf("missing after the commits: %v", m)
	}
	recs := journalRecords(t, dir)
	if len(recs) == 0 || len(recs) == n {
		t.Fatalf("the journal holds %d records of %d uploads: it did not rotate", len(recs), n)
	}
	crashAndCheck(t, d, dir, ds)
}

// crashAndCheck loses the blob file of every record in the journal (what a
// power loss may do to blobs installed since the last sync), reopens the
// store without closing d, and checks that ds[i] reads smallBlob(100+i).
func crashAndCheck(t *testing.T, d *Disk, dir string, ds []digest.Digest) {
	t.Helper()
	for _, r := range journalRecords(t, dir) {
		loseBlobFile(t, d, r.k.digest())
	}
	d2 := newDisk(t, dir, 0)
	for i, dg := range ds {
		if got := mustGet(t, d2, dg); !bytes.Equal(got, smallBlob(100+i)) {
			t.Fatalf("%s reads %q", dg, got)
		}
	}
}

// A clean Close leaves nothing to replay; a store whose journal is not
// ready yet makes small uploads durable with fsyncs, outside the journal.
func TestJournalCleanCloseAndFsyncFallback(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	a := mustPut(t, d, digest.SHA256, smallBlob(1))
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if recs := journalRecords(t, dir); len(recs) != 0 {
		t.Fatalf("%d records left after a clean Close", len(recs))
	}
	d2 := newDisk(t, dir, 0)
	d2.journal.ready.Store(false)
	b := mustPut(t, d2, digest.SHA256, smallBlob(2))
	if recs := journalRecords(t, dir); len(recs) != 0 {
		t.Fatalf("an upload before the journal was ready was journaled (%d records)", len(recs))
	}
	if m := missing(t, d2, a, b); len(m) != 0 {
		t.Fatalf("missing %v", m)
	}
}

// A full half is synced in the background: commits go on in the other
// half meanwhile, and only one that finds the other half full too waits
// for that sync. Every blob is there after an unclean stop.
func TestJournalRotationSyncsInTheBackground(t *testing.T) {
	old, oldSync := journalSize, drainSyncfs
	journalSize = 4 << 10
	release := make(chan struct{})
	started := make(chan struct{}, 16)
	drainSyncfs = func(fd int) error {
		started <- struct{}{}
		<-release
		return oldSync(fd)
	}
	t.Cleanup(func() { journalSize, drainSyncfs = old, oldSync })
	dir := t.TempDir()
	d := newDisk(t, dir, 0)

	// Each record is ~190 bytes: a half holds 10 of them.
	var ds []digest.Digest
	put := func(i int) { ds = append(ds, mustPut(t, d, digest.SHA256, smallBlob(100+i))) }
	i := 0
	for ; len(started) == 0; i++ {
		put(i) // fills the first half; the one that does not fit starts its drain
		if i > 40 {
			t.Fatal("no drain started after 40 commits")
		}
	}
	first := i
	for ; i < first+5; i++ {
		put(i) // the second half has room: no waiting for the blocked drain
	}
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		for j := i; j < i+10; j++ {
			ds = append(ds, mustPut(t, d, digest.SHA256, smallBlob(100+j)))
		}
	}()
	select {
	case <-blocked:
		t.Fatal("commits filled the second half and went on while the first half's syncfs had not finished")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("commits still waiting after the drain's syncfs finished")
	}
	crashAndCheck(t, d, dir, ds)
}

// Each half is scanned on its own, and a journal written as one sequence
// before the halves existed (records across the middle) is read whole.
func TestJournalHalvesAtRecovery(t *testing.T) {
	old := journalSize
	journalSize = 4 << 10
	t.Cleanup(func() { journalSize = old })
	record := func(i int) []byte {
		data := smallBlob(100 + i)
		k, err := keyOf(digest.Compute(digest.SHA256, data))
		if err != nil {
			t.Fatal(err)
		}
		return append(newJournalRecord(k), data...)
	}
	t.Run("one sequence across the middle", func(t *testing.T) {
		var file []byte
		n := 0
		for ; len(file) < int(journalSize)*3/4; n++ {
			file = append(file, record(n)...)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, journalName), file, 0o600); err != nil {
			t.Fatal(err)
		}
		if d := newDisk(t, dir, 0); d.Count() != n {
			t.Fatalf("%d blobs restored, want %d", d.Count(), n)
		}
	})
	t.Run("second half after a cleared first", func(t *testing.T) {
		file := make([]byte, journalSize/2)
		for i := range 3 {
			file = append(file, record(i)...)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, journalName), file, 0o600); err != nil {
			t.Fatal(err)
		}
		d := newDisk(t, dir, 0)
		if d.Count() != 3 {
			t.Fatalf("%d blobs restored, want 3", d.Count())
		}
		mustGet(t, d, digest.Compute(digest.SHA256, smallBlob(102)))
	})
}

// When the journal stops (a drain's syncfs failed), an upload that had
// chosen it is still stored, with fsyncs, and later uploads bypass it.
func TestJournalStoppedUnderAWriter(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	data := smallBlob(1)
	dg := digest.Compute(digest.SHA256, data)
	w, err := d.Create(context.Background(), dg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	d.journal.mu.Lock()
	d.journal.failed = errors.New("syncfs: input/output error (injected)")
	d.journal.ready.Store(false)
	d.journal.mu.Unlock()
	if err := w.Commit(); err != nil {
		t.Fatalf("Commit after the journal stopped: %v", err)
	}
	later := mustPut(t, d, digest.SHA256, smallBlob(2))
	if recs := journalRecords(t, dir); len(recs) != 0 {
		t.Fatalf("%d records journaled after the journal stopped", len(recs))
	}
	if got := mustGet(t, d, dg); !bytes.Equal(got, data) {
		t.Fatalf("%s reads %q", dg, got)
	}
	mustGet(t, d, later)
}
