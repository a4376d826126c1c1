package cas

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
)

func relaxedPut(t *testing.T, s Store, data []byte) digest.Digest {
	t.Helper()
	dg := digest.Compute(digest.SHA256, data)
	if err := Put(WithRelaxedDurability(context.Background()), s, dg, data); err != nil {
		t.Fatalf("relaxed Put(%s): %v", dg, err)
	}
	return dg
}

func markerInfo(t *testing.T, dir string) (os.FileInfo, bool) {
	t.Helper()
	fi, err := os.Stat(filepath.Join(dir, relaxedMarkerName))
	if os.IsNotExist(err) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi, true
}

// waitMarkerAfter waits until the syncer has moved the marker's mtime past t.
func waitMarkerAfter(t *testing.T, dir string, after time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if fi, ok := markerInfo(t, dir); ok && fi.ModTime().After(after) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the relaxed-durability marker did not advance past %s", after)
}

func TestRelaxedBlobVisibleAtOnceAndCleanClose(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	durable := mustPut(t, d, digest.SHA256, []byte("acknowledged upload"))
	if _, ok := markerInfo(t, dir); ok {
		t.Fatal("a durable write created the relaxed-durability marker")
	}
	dg := relaxedPut(t, d, []byte("an action's output"))
	if got := mustGet(t, d, dg); string(got) != "an action's output" {
		t.Fatalf("relaxed blob reads %q", got)
	}
	if _, ok := markerInfo(t, dir); !ok {
		t.Fatal("no marker while a relaxed blob may be unsynced")
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := markerInfo(t, dir); ok {
		t.Fatal("Close left the marker: the next open would verify for nothing")
	}
	d2 := newDisk(t, dir, 0)
	if m := missing(t, d2, dg, durable); len(m) != 0 {
		t.Fatalf("after a clean stop, missing %v", m)
	}
}

// An unclean stop: the next open hashes the blobs that may be unsynced
// and removes those whose bytes do not match (what a power loss may leave),
// while the blobs older than the marker's "synced up to" time are trusted.
func TestRelaxedUncleanStopVerifiesRecentBlobs(t *testing.T) {
	for _, bounded := range []int64{0, 1 << 30} {
		dir := t.TempDir()
		d := newDisk(t, dir, bounded)
		old := mustPut(t, d, digest.SHA256, []byte("written long ago"))
		oldPath := d.blobPath(mustKey(t, old))
		past := time.Now().Add(-time.Hour)
		if err := os.Chtimes(oldPath, past, past); err != nil {
			t.Fatal(err)
		}
		good := relaxedPut(t, d, []byte("output that reached the disk"))
		bad := relaxedPut(t, d, []byte("output the crash damaged"))
		waitMarkerAfter(t, dir, time.Now().Add(-relaxedClockMargin/2))
		// Same size, other bytes: what stale blocks would look like.
		badPath := d.blobPath(mustKey(t, bad))
		if err := os.Chmod(badPath, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(badPath, bytes.Repeat([]byte{0}, int(bad.Size)), 0o644); err != nil {
			t.Fatal(err)
		}
		// No Close: the process "crashed".
		d2 := newDisk(t, dir, bounded)
		if m := missing(t, d2, old, good); len(m) != 0 {
			t.Fatalf("bounded=%d: intact blobs reported missing after the unclean stop: %v", bounded, m)
		}
		if m := missing(t, d2, bad); len(m) != 1 {
			t.Fatalf("bounded=%d: a blob whose bytes do not match its name survived the reopen", bounded)
		}
		if _, err := os.Stat(badPath); !os.IsNotExist(err) {
			t.Fatalf("bounded=%d: damaged blob file still on disk: %v", bounded, err)
		}
		if _, ok := markerInfo(t, dir); ok {
			t.Fatalf("bounded=%d: marker left after everything was verified", bounded)
		}
	}
}

// The marker's "synced up to" time never passes a relaxed writer still in
// flight: its blob, committed after the others were synced, must still be
// verified after a crash.
func TestRelaxedMarkerWaitsForWritersInFlight(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	slow := []byte("a large output still being written")
	slowDigest := digest.Compute(digest.SHA256, slow)
	w, err := d.Create(WithRelaxedDurability(context.Background()), slowDigest)
	if err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	relaxedPut(t, d, []byte("a small output, committed meanwhile"))
	time.Sleep(10 * relaxedBatchDelay)
	if fi, ok := markerInfo(t, dir); !ok || fi.ModTime().After(created) {
		t.Fatalf("marker advanced past a writer in flight (ok=%v)", ok)
	}
	if _, err := w.Write(slow); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	waitMarkerAfter(t, dir, created)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// An abandoned relaxed writer leaves nothing behind and does not hold the
// marker back.
func TestRelaxedAbandonedWriter(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	dg := digest.Compute(digest.SHA256, []byte("never finished"))
	w, err := d.Create(WithRelaxedDurability(context.Background()), dg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("never")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	closed := time.Now()
	waitMarkerAfter(t, dir, closed.Add(-relaxedClockMargin/2))
	if m := missing(t, d, dg); len(m) != 1 {
		t.Fatal("an abandoned upload is present")
	}
	if got := tmpEntries(t, dir); len(got) != 0 {
		t.Fatalf("abandoned upload left %v", got)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func mustKey(t *testing.T, dg digest.Digest) blobKey {
	t.Helper()
	k, err := keyOf(dg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// With spare upload files, uploads (committed, abandoned, relaxed) behave
// as without, tmp/ holds only the spares, and Close removes them.
func TestDiskSpareFiles(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDisk(dir, DiskOptions{Logger: quietLogger(), SpareFiles: 4})
	if err != nil {
		t.Fatal(err)
	}
	var want []digest.Digest
	for i := range 10 {
		data := []byte{byte(i), 'x'}
		if i%2 == 0 {
			want = append(want, mustPut(t, d, digest.SHA256, data))
		} else {
			want = append(want, relaxedPut(t, d, data))
		}
	}
	for i, dg := range want {
		if got := mustGet(t, d, dg); !bytes.Equal(got, []byte{byte(i), 'x'}) {
			t.Fatalf("blob %d reads %q", i, got)
		}
	}
	abandoned := digest.Compute(digest.SHA256, []byte("abandoned"))
	w, err := d.Create(context.Background(), abandoned)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("aban"))
	w.Close()
	if n := len(tmpEntries(t, dir)); n > 4 {
		t.Fatalf("tmp/ holds %d files; at most the 4 spares expected", n)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if n := tmpEntries(t, dir); len(n) != 0 {
		t.Fatalf("Close left %v in tmp/", n)
	}
	if m := missing(t, newDisk(t, dir, 0), append(want, abandoned)...); len(m) != 1 || m[0] != abandoned {
		t.Fatalf("after reopening, missing %v; want only the abandoned upload", m)
	}
}

// Close does not hang on a relaxed writer nobody closed: it gives up after
// relaxedCloseWait and leaves the marker, so the next start verifies.
func TestRelaxedCloseDoesNotHangOnAnOpenWriter(t *testing.T) {
	defer func(was time.Duration) { relaxedCloseWait = was }(relaxedCloseWait)
	relaxedCloseWait = 100 * time.Millisecond
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	dg := digest.Compute(digest.SHA256, []byte("forgotten"))
	w, err := d.Create(WithRelaxedDurability(context.Background()), dg)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	if err := d.Close(); err == nil {
		t.Fatal("Close reported success with a relaxed writer still open")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Close took %s", took)
	}
	if _, ok := markerInfo(t, dir); !ok {
		t.Fatal("the marker was removed although a relaxed write may be unsynced")
	}
}
