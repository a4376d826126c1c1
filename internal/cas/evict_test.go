package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/hearth-build/hearth/internal/digest"
)

// blobN is a distinct 10-byte blob.
func blobN(i int) []byte { return []byte(fmt.Sprintf("blob-%05d", i)) }

func present(t *testing.T, s Store, dg digest.Digest) bool {
	t.Helper()
	return len(missing(t, s, dg)) == 0
}

func TestEvictionIsLRU(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		touch   func(t *testing.T, d *Disk, dg digest.Digest) // use of blob a
		evicted string                                        // which of a, b is evicted
	}{
		{"no use: oldest goes", func(*testing.T, *Disk, digest.Digest) {}, "a"},
		{"Open keeps a", func(t *testing.T, d *Disk, dg digest.Digest) {
			r, err := d.Open(ctx, dg, 0)
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
		}, "b"},
		{"FindMissing keeps a", func(t *testing.T, d *Disk, dg digest.Digest) { missing(t, d, dg) }, "b"},
		{"re-upload keeps a", func(t *testing.T, d *Disk, dg digest.Digest) { mustPut(t, d, dg.Function, blobN(0)) }, "b"},
		{"Path keeps a", func(t *testing.T, d *Disk, dg digest.Digest) { d.Path(dg) }, "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			d := newDisk(t, dir, 30)
			a := mustPut(t, d, digest.SHA256, blobN(0))
			b := mustPut(t, d, digest.SHA256, blobN(1))
			c := mustPut(t, d, digest.SHA256, blobN(2))
			tt.touch(t, d, a)
			e := mustPut(t, d, digest.SHA256, blobN(3))
			gone, kept := a, b
			if tt.evicted == "b" {
				gone, kept = b, a
			}
			if present(t, d, gone) {
				t.Errorf("%s not evicted", tt.evicted)
			}
			for _, dg := range []digest.Digest{kept, c, e} {
				if !present(t, d, dg) {
					t.Errorf("%s evicted", dg)
				}
			}
			if d.SizeBytes() != 30 || d.Count() != 3 || countBlobFiles(t, dir) != 3 {
				t.Errorf("bytes %d, count %d, files %d; want 30, 3, 3", d.SizeBytes(), d.Count(), countBlobFiles(t, dir))
			}
		})
	}
}

// TestEvictionOrderAcrossScans stores more blobs than one candidate scan
// holds, uses some blobs after a scan picked them as candidates, and checks
// that exactly the least recently used ones were evicted.
func TestEvictionOrderAcrossScans(t *testing.T) {
	const capacity = 300 // > minCandidates, so several scans happen
	d := newDisk(t, t.TempDir(), capacity*10)
	ds := make([]digest.Digest, 0, 640)
	for i := 0; i < 350; i++ { // evicts 0..49; the scan made 50.. candidates
		ds = append(ds, mustPut(t, d, digest.SHA256, blobN(i)))
	}
	if _, err := d.FindMissing(context.Background(), ds[100:110]); err != nil {
		t.Fatal(err)
	}
	for i := 350; i < 640; i++ { // 290 more: evicts 50..99, 110..349
		ds = append(ds, mustPut(t, d, digest.SHA256, blobN(i)))
		if d.SizeBytes() > capacity*10 {
			t.Fatalf("after blob %d the store holds %d bytes, over its bound", i, d.SizeBytes())
		}
	}
	for i, dg := range ds {
		want := i >= 100 && i < 110 || i >= 350
		if got := present(t, d, dg); got != want {
			t.Errorf("blob %d present = %v, want %v", i, got, want)
		}
	}
	if d.Count() != capacity {
		t.Errorf("Count = %d, want %d", d.Count(), capacity)
	}
}

func TestEvictionKeepsOpenReaderWorking(t *testing.T) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("keep reading "), 1000) // 13,000 bytes
	d := newDisk(t, t.TempDir(), int64(len(data))+100)
	dg := mustPut(t, d, digest.SHA256, data)
	r, err := d.Open(ctx, dg, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 100)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	other := mustPut(t, d, digest.SHA256, bytes.Repeat([]byte("x"), 200))
	if present(t, d, dg) || !present(t, d, other) {
		t.Fatal("the open blob was not evicted by a newer one; the test proves nothing")
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading an evicted blob: %v", err)
	}
	if got := append(head, rest...); !bytes.Equal(got, data) {
		t.Errorf("evicted blob read %d bytes, want %d intact", len(got), len(data))
	}
}

func TestEvictionSparesPinnedBlobs(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, t.TempDir(), 25)
	a := mustPut(t, d, digest.SHA256, blobN(0))
	b := mustPut(t, d, digest.SHA256, blobN(1))
	// A re-upload of a in progress pins it: the writer's Commit must find it.
	w, err := d.Create(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	missing(t, d, b)                            // a is now the least recently used
	c := mustPut(t, d, digest.SHA256, blobN(2)) // over the bound: a is pinned, so b goes
	if !present(t, d, a) || present(t, d, b) || !present(t, d, c) {
		t.Fatalf("present a=%v b=%v c=%v; want a (pinned) and c", present(t, d, a), present(t, d, b), present(t, d, c))
	}
	if _, err := w.Write(blobN(0)); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("Commit of a pinned present blob: %v", err)
	}
}

func TestEvictionNeverEvictsTheBlobJustStored(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, t.TempDir(), 15)
	a := mustPut(t, d, digest.SHA256, blobN(0))
	w, err := d.Create(ctx, a) // pins a
	if err != nil {
		t.Fatal(err)
	}
	b := mustPut(t, d, digest.SHA256, blobN(1))
	// Nothing is evictable: a is pinned, b was just stored. The store stays
	// over its bound rather than break either promise.
	if !present(t, d, a) || !present(t, d, b) || d.SizeBytes() != 20 {
		t.Fatalf("present a=%v b=%v, bytes %d; want both, 20", present(t, d, a), present(t, d, b), d.SizeBytes())
	}
	w.Close() // unpins a without committing
	c := mustPut(t, d, digest.SHA256, blobN(2))
	if present(t, d, a) || present(t, d, b) || !present(t, d, c) || d.SizeBytes() != 10 {
		t.Errorf("present a=%v b=%v c=%v, bytes %d; want only c, 10", present(t, d, a), present(t, d, b), present(t, d, c), d.SizeBytes())
	}
}

// TestDiskConcurrentChurn runs writers, readers and FindMissing against a
// small bounded store, so that commits, duplicate commits, evictions and
// reads of blobs being evicted interleave; then checks that the index and
// the disk agree and every blob reads back intact.
func TestDiskConcurrentChurn(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const blobs, capacity = 40, 15
	d := newDisk(t, dir, capacity*10)
	ds := make([]digest.Digest, blobs)
	for i := range ds {
		ds[i] = digest.Compute(digest.BLAKE3, blobN(i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 4; g++ {
		wg.Add(2)
		go func() { // writer
			defer wg.Done()
			for j := 0; j < 50; j++ {
				i := (g*13 + j*7) % blobs
				if err := Put(ctx, d, ds[i], blobN(i)); err != nil {
					errs <- fmt.Errorf("put %d: %w", i, err)
					return
				}
			}
		}()
		go func() { // reader
			defer wg.Done()
			for j := 0; j < 200; j++ {
				i := (g + j*3) % blobs
				b, err := Get(ctx, d, ds[i])
				if err != nil && !errors.Is(err, ErrNotFound) {
					errs <- fmt.Errorf("get %d: %w", i, err)
					return
				}
				if err == nil && !bytes.Equal(b, blobN(i)) {
					errs <- fmt.Errorf("blob %d read %q", i, b)
					return
				}
				if _, err := d.FindMissing(ctx, ds[:10]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if d.SizeBytes() > capacity*10 {
		t.Errorf("%d bytes stored, over the bound %d", d.SizeBytes(), capacity*10)
	}
	if files := countBlobFiles(t, dir); files != d.Count() || int64(files)*10 != d.SizeBytes() {
		t.Errorf("%d files on disk, index says %d blobs of %d bytes", files, d.Count(), d.SizeBytes())
	}
	m := missing(t, d, ds...)
	if blobs-len(m) != d.Count() {
		t.Errorf("FindMissing sees %d present, Count says %d", blobs-len(m), d.Count())
	}
	for i, dg := range ds {
		if p, ok := d.Path(dg); ok {
			if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, blobN(i)) {
				t.Errorf("blob %d on disk: %q, %v", i, b, err)
			}
		}
	}
	if n := tmpEntries(t, dir); len(n) != 0 {
		t.Errorf("temp files left: %v", n)
	}
}
