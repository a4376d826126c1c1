package outputs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// writeBig writes size bytes of a non-repeating pattern and returns their
// SHA-256, without holding them in memory.
func writeBig(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	block := make([]byte, 1<<20)
	for written := int64(0); written < size; written += int64(len(block)) {
		for i := 0; i < len(block); i += 8 {
			v := written + int64(i)
			block[i], block[i+1], block[i+2], block[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		}
		n := min(int64(len(block)), size-written)
		f.Write(block[:n])
		h.Write(block[:n])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestCollectLargeOutputStreams(t *testing.T) {
	const size = 50 << 20
	root := t.TempDir()
	mkdir(t, filepath.Join(root, "d"))
	wantHash := writeBig(t, filepath.Join(root, "big"), size)
	if err := os.Link(filepath.Join(root, "big"), filepath.Join(root, "d", "big-too")); err != nil {
		t.Fatal(err)
	}
	store := newStore(t)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := Collect(context.Background(), store, digest.SHA256, root, &repb.Command{OutputPaths: []string{"big", "d"}})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	// Two 50 MiB files were hashed and one uploaded; buffers are a few
	// 256 KiB per worker.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("Collect allocated %d MiB for a 50 MiB output; it must stream", alloc>>20)
	}
	f := res.GetOutputFiles()[0]
	if f.GetDigest().GetHash() != wantHash || f.GetDigest().GetSizeBytes() != size {
		t.Fatalf("digest %v, want %s/%d", f.GetDigest(), wantHash, size)
	}
	if store.creates.Load() != 2 { // the content once, the Tree
		t.Errorf("%d blobs written, want 2", store.creates.Load())
	}
	d, _ := digest.FromProto(digest.SHA256, f.GetDigest())
	r, err := store.Open(context.Background(), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := sha256.New()
	if n, err := io.Copy(h, r); err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != wantHash {
		t.Fatalf("stored blob: %d bytes, err %v, hash mismatch", n, err)
	}
}

func TestUploadFile(t *testing.T) {
	dir := t.TempDir()
	store := newStore(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		content string
	}{
		{"empty", ""},
		{"small", "some stdout\n"},
		{"medium", strings.Repeat("0123456789abcdef", 1<<16)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			writeFile(t, p, tc.content, 0o644)
			for _, fn := range digest.Supported {
				d, err := UploadFile(ctx, store, fn, p)
				if err != nil {
					t.Fatal(err)
				}
				if want := digest.Compute(fn, []byte(tc.content)); d != want {
					t.Fatalf("%s: digest %s, want %s", fn, d, want)
				}
				if got, err := cas.Get(ctx, store, d); err != nil || string(got) != tc.content {
					t.Fatalf("%s: stored %d bytes, err %v", fn, len(got), err)
				}
			}
		})
	}
	t.Run("not a regular file", func(t *testing.T) {
		if _, err := UploadFile(ctx, store, digest.SHA256, dir); err == nil {
			t.Fatal("uploading a directory succeeded")
		}
	})
	t.Run("absent", func(t *testing.T) {
		if _, err := UploadFile(ctx, store, digest.SHA256, filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("got %v, want os.ErrNotExist", err)
		}
	})
	t.Run("unsupported digest function", func(t *testing.T) {
		if _, err := UploadFile(ctx, store, repb.DigestFunction_MD5, filepath.Join(dir, "small")); !errors.Is(err, digest.ErrInvalid) {
			t.Fatalf("got %v, want digest.ErrInvalid", err)
		}
	})
}

func TestUploadBytes(t *testing.T) {
	store := newStore(t)
	ctx := context.Background()
	for _, data := range [][]byte{nil, []byte("stderr text"), bytes.Repeat([]byte{7}, 3<<20)} {
		store.creates.Store(0)
		d, err := UploadBytes(ctx, store, repb.DigestFunction_UNKNOWN, data) // UNKNOWN means SHA256
		if err != nil {
			t.Fatal(err)
		}
		if want := digest.Compute(digest.SHA256, data); d != want {
			t.Fatalf("digest %s, want %s", d, want)
		}
		if got, err := cas.Get(ctx, store, d); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("stored %d bytes, err %v", len(got), err)
		}
		wantCreates := int64(1)
		if len(data) == 0 {
			wantCreates = 0 // the empty blob is never written
		}
		if store.creates.Load() != wantCreates {
			t.Errorf("%d writes, want %d", store.creates.Load(), wantCreates)
		}
		// Present now: not written again.
		store.creates.Store(0)
		if _, err := UploadBytes(ctx, store, digest.SHA256, data); err != nil || store.creates.Load() != 0 {
			t.Errorf("second upload: err %v, %d writes", err, store.creates.Load())
		}
	}
}

// TestCopyVerifiedRefusesChangedFile covers a straggling process rewriting
// an output between hashing and upload: nothing may be committed under the
// old digest, even to a store that does not verify.
func TestCopyVerifiedRefusesChangedFile(t *testing.T) {
	disk, err := cas.NewDisk(t.TempDir(), cas.DiskOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d := digest.Compute(digest.SHA256, []byte("original"))
	buf := make([]byte, 4)
	for _, changed := range []string{"modified", "longer than before", "short"} {
		if err := copyVerified(ctx, disk, d, strings.NewReader(changed), "out", buf); err == nil {
			t.Fatalf("%q committed as the digest of \"original\"", changed)
		}
	}
	if missing, _ := disk.FindMissing(ctx, []digest.Digest{d}); len(missing) != 1 {
		t.Fatal("a blob was stored under a digest it does not match")
	}
	if err := copyVerified(ctx, disk, d, strings.NewReader("original"), "out", buf); err != nil {
		t.Fatalf("unchanged content: %v", err)
	}
}
