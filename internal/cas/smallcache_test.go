package cas

import (
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/hearth-build/hearth/internal/digest"
)

func TestSmallBlobCache(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t, t.TempDir(), 0)
	c := NewSmallBlobCache(disk, 16, 40)
	small := []byte("a directory pb") // 14 bytes: cached
	large := []byte("a file larger than sixteen bytes")
	ds, dl := digest.Compute(digest.SHA256, small), digest.Compute(digest.SHA256, large)
	for d, data := range map[digest.Digest][]byte{ds: small, dl: large} {
		if err := Put(ctx, c, d, data); err != nil {
			t.Fatal(err)
		}
	}
	read := func(d digest.Digest, off int64) (string, error) {
		r, err := c.Open(ctx, d, off)
		if err != nil {
			return "", err
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		return string(b), err
	}
	if got, err := read(ds, 0); err != nil || got != string(small) {
		t.Fatalf("first read %q %v", got, err)
	}
	// Served from memory now: even with the file gone behind the store's back.
	p, _ := disk.Path(ds)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if got, err := read(ds, 2); err != nil || got != string(small[2:]) {
		t.Fatalf("cached read at offset 2: %q %v", got, err)
	}
	if _, err := read(ds, 15); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("offset past the end: %v", err)
	}
	// Large blobs are not cached: they come from the store each time.
	if got, err := read(dl, 0); err != nil || got != string(large) {
		t.Fatalf("large read %q %v", got, err)
	}
	// The bound evicts least recently used blobs.
	for i := range 5 {
		data := []byte{byte('0' + i), 'x', 'y', 'z', 'w', 'v', 'u', 't', 's', 'r'}
		d := digest.Compute(digest.SHA256, data)
		if err := Put(ctx, c, d, data); err != nil {
			t.Fatal(err)
		}
		if _, err := read(d, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := read(ds, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("evicted blob whose file is gone: %v, want ErrNotFound", err)
	}
	if sc := c.(*smallBlobCache); sc.total > 40 {
		t.Fatalf("cache holds %d bytes, bound 40", sc.total)
	}
}

func TestSmallBlobCacheRefusesDamagedCopies(t *testing.T) {
	ctx := context.Background()
	disk := newDisk(t, t.TempDir(), 0)
	c := NewSmallBlobCache(disk, 64, 1024)
	data := []byte("directory bytes")
	d := digest.Compute(digest.SHA256, data)
	if err := Put(ctx, disk, d, data); err != nil {
		t.Fatal(err)
	}
	p, _ := disk.Path(d)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("DIRECTORY BYTES"), 0o644); err != nil { // same size, other bytes
		t.Fatal(err)
	}
	if _, err := c.Open(ctx, d, 0); !errors.Is(err, ErrMismatch) {
		t.Fatalf("damaged blob: %v, want ErrMismatch", err)
	}
}
