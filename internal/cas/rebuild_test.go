package cas

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
)

func TestRestartRebuildsIndex(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	var ds []digest.Digest
	for i := 0; i < 20; i++ {
		fn := digest.Supported[i%len(digest.Supported)]
		ds = append(ds, mustPut(t, d, fn, blobN(i)))
	}
	// A crash mid-upload leaves a temp file; stray files are someone else's.
	w, err := d.Create(ctx, digest.Compute(digest.SHA256, []byte("in flight")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("in fl")); err != nil {
		t.Fatal(err)
	}
	strays := []string{
		filepath.Join(dir, "README"),
		filepath.Join(dir, "sha256", "notes.txt"),
		filepath.Join(dir, "sha256", "ab", "not-a-blob"),
		filepath.Join(dir, "blake3", "00", ds[1].Hash+"-1"), // wrong shard directory
	}
	for _, p := range strays {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if n := tmpEntries(t, dir); len(n) != 1 {
		t.Fatalf("%d temp files before restart, want 1", len(n))
	}

	// Restart: a new store on the same directory, the old one abandoned as
	// by kill -9 (its open writer never closed).
	d2 := newDisk(t, dir, 0)
	if n := tmpEntries(t, dir); len(n) != 0 {
		t.Errorf("temp files survived the restart: %v", n)
	}
	if d2.Count() != len(ds) || d2.SizeBytes() != d.SizeBytes() {
		t.Errorf("after restart count %d, bytes %d; want %d, %d", d2.Count(), d2.SizeBytes(), len(ds), d.SizeBytes())
	}
	for i, dg := range ds {
		if got := mustGet(t, d2, dg); string(got) != string(blobN(i)) {
			t.Errorf("blob %d reads %q after restart", i, got)
		}
	}
	for _, p := range strays {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("stray file %s touched: %v", p, err)
		}
	}
}

func TestRestartBoundedStore(t *testing.T) {
	tests := []struct {
		name string
		// mtimeAgo[i] is how long ago blob i was last written; the LRU
		// order after restart follows it.
		mtimeAgo  []time.Duration
		maxBlobs  int
		wantAfter []bool // present after restart and one more put
	}{
		{"mtime order, not name order", []time.Duration{time.Minute, 3 * time.Hour, 2 * time.Hour}, 3, []bool{true, false, true}},
		{"lowered bound evicts at start", []time.Duration{time.Hour, 2 * time.Hour, 3 * time.Hour, 4 * time.Hour}, 2, []bool{true, false, false, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			d := newDisk(t, dir, 0)
			var ds []digest.Digest
			for i, ago := range tt.mtimeAgo {
				dg := mustPut(t, d, digest.SHA256, blobN(i))
				ds = append(ds, dg)
				p, _ := d.Path(dg)
				mt := time.Now().Add(-ago)
				if err := os.Chtimes(p, mt, mt); err != nil {
					t.Fatal(err)
				}
			}
			d2 := newDisk(t, dir, int64(tt.maxBlobs)*10)
			if d2.SizeBytes() > int64(tt.maxBlobs)*10 {
				t.Errorf("after restart %d bytes, over the bound %d", d2.SizeBytes(), tt.maxBlobs*10)
			}
			newest := mustPut(t, d2, digest.SHA256, blobN(99))
			for i, dg := range ds {
				if got := present(t, d2, dg); got != tt.wantAfter[i] {
					t.Errorf("blob %d present = %v, want %v", i, got, tt.wantAfter[i])
				}
			}
			if !present(t, d2, newest) {
				t.Error("the blob just stored was evicted")
			}
		})
	}
}

func TestRestartRemovesBlobOfWrongSize(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	good := mustPut(t, d, digest.SHA256, blobN(0))
	bad := mustPut(t, d, digest.SHA256, blobN(1))
	p, _ := d.Path(bad)
	// A clean stop first: after an unclean one the upload journal would
	// store the damaged blob again (journal_test.go).
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 4); err != nil {
		t.Fatal(err)
	}
	// A bounded store stats every file at start, so it notices.
	d2 := newDisk(t, dir, 1000)
	if present(t, d2, bad) || !present(t, d2, good) || d2.Count() != 1 {
		t.Errorf("bad present %v, good present %v, count %d; want false, true, 1", present(t, d2, bad), present(t, d2, good), d2.Count())
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("truncated blob file not removed: %v", err)
	}
}
