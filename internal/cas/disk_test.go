package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
)

// quietLogger keeps expected warnings (damaged files, unknown files) out of
// the test output.
func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newDisk(t *testing.T, dir string, maxBytes int64) *Disk {
	t.Helper()
	d, err := NewDisk(dir, DiskOptions{MaxBytes: maxBytes, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("NewDisk(%s): %v", dir, err)
	}
	waitJournal(t, d)
	return d
}

// waitJournal waits until d's upload journal is prepared, so that a test's
// small durable writes take the journaled path that a running server's do.
func waitJournal(t *testing.T, d *Disk) {
	t.Helper()
	if d.journal == nil {
		t.Fatal("the disk store has no upload journal")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !d.JournalReady() {
		if time.Now().After(deadline) {
			t.Fatal("the upload journal was not prepared within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func mustPut(t *testing.T, s Store, fn digest.Function, data []byte) digest.Digest {
	t.Helper()
	dg := digest.Compute(fn, data)
	if err := Put(context.Background(), s, dg, data); err != nil {
		t.Fatalf("Put(%s): %v", dg, err)
	}
	return dg
}

func mustGet(t *testing.T, s Store, dg digest.Digest) []byte {
	t.Helper()
	b, err := Get(context.Background(), s, dg)
	if err != nil {
		t.Fatalf("Get(%s): %v", dg, err)
	}
	return b
}

func missing(t *testing.T, s Store, ds ...digest.Digest) []digest.Digest {
	t.Helper()
	m, err := s.FindMissing(context.Background(), ds)
	if err != nil {
		t.Fatalf("FindMissing: %v", err)
	}
	return m
}

// tmpEntries lists the uploads in progress (or left behind) in dir/tmp.
func tmpEntries(t *testing.T, dir string) []string {
	t.Helper()
	names, err := readDirNames(filepath.Join(dir, tmpDirName))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestDiskOpenAtOffsets(t *testing.T) {
	ctx := context.Background()
	data := []byte("0123456789abcdef")
	for _, fn := range digest.Supported {
		d := newDisk(t, t.TempDir(), 0)
		dg := mustPut(t, d, fn, data)
		tests := []struct {
			name    string
			offset  int64
			want    string
			wantErr error
		}{
			{"start", 0, string(data), nil},
			{"middle", 10, "abcdef", nil},
			{"last byte", 15, "f", nil},
			{"at size", 16, "", nil},
			{"past size", 17, "", ErrOutOfRange},
			{"negative", -1, "", ErrOutOfRange},
		}
		for _, tt := range tests {
			t.Run(fn.String()+"/"+tt.name, func(t *testing.T) {
				r, err := d.Open(ctx, dg, tt.offset)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("Open at %d: err = %v, want %v", tt.offset, err, tt.wantErr)
					}
					if !strings.Contains(err.Error(), dg.Hash) {
						t.Errorf("error %q does not name the digest", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("Open at %d: %v", tt.offset, err)
				}
				defer r.Close()
				got, err := io.ReadAll(r)
				if err != nil || string(got) != tt.want {
					t.Fatalf("read %q, %v; want %q", got, err, tt.want)
				}
			})
		}
	}
}

func TestDiskNotFound(t *testing.T) {
	d := newDisk(t, t.TempDir(), 0)
	dg := digest.Compute(digest.SHA256, []byte("never stored"))
	_, err := d.Open(context.Background(), dg, 0)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), dg.String()) {
		t.Fatalf("Open of an absent blob: %v, want ErrNotFound naming %s", err, dg)
	}
	if m := missing(t, d, dg); len(m) != 1 || m[0] != dg {
		t.Errorf("FindMissing = %v, want [%s]", m, dg)
	}
	if p, ok := d.Path(dg); ok {
		t.Errorf("Path of an absent blob = %q", p)
	}
}

func TestDiskEmptyBlob(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	for _, fn := range digest.Supported {
		t.Run(fn.String(), func(t *testing.T) {
			empty := digest.Empty(fn)
			if m := missing(t, d, empty); len(m) != 0 {
				t.Errorf("FindMissing reports the empty blob missing: %v", m)
			}
			r, err := d.Open(ctx, empty, 0)
			if err != nil {
				t.Fatalf("Open(empty): %v", err)
			}
			if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
				t.Errorf("empty blob read %q, %v", b, err)
			}
			r.Close()
			if _, err := d.Open(ctx, empty, 1); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("Open(empty, 1): %v, want ErrOutOfRange", err)
			}
			if err := Put(ctx, d, empty, nil); err != nil {
				t.Errorf("Put(empty): %v", err)
			}
			w, err := d.Create(ctx, empty)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte("x")); !errors.Is(err, ErrMismatch) {
				t.Errorf("writing a byte to the empty blob: %v, want ErrMismatch", err)
			}
			w.Close()
		})
	}
	if d.Count() != 0 || d.SizeBytes() != 0 {
		t.Errorf("empty blobs were stored: count %d, bytes %d", d.Count(), d.SizeBytes())
	}
	if n := countBlobFiles(t, dir); n != 0 {
		t.Errorf("%d files on disk for empty blobs", n)
	}
}

// countBlobFiles counts the files under the digest-function directories.
func countBlobFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	for _, fn := range digest.Supported {
		err := filepath.WalkDir(filepath.Join(dir, digest.Lower(fn)), func(_ string, de os.DirEntry, err error) error {
			if err == nil && !de.IsDir() {
				n++
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func TestDiskNamespaces(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, t.TempDir(), 0)
	data := []byte("same bytes, two functions")
	sha := mustPut(t, d, digest.SHA256, data)
	// The SHA256 hash under BLAKE3 is a different (absent) blob.
	alias := digest.Digest{Function: digest.BLAKE3, Hash: sha.Hash, Size: sha.Size}
	if m := missing(t, d, alias); len(m) != 1 {
		t.Fatalf("BLAKE3 digest with a SHA256 blob's hash is not missing: %v", m)
	}
	if _, err := d.Open(ctx, alias, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open(alias): %v, want ErrNotFound", err)
	}
	b3 := mustPut(t, d, digest.BLAKE3, data)
	if d.Count() != 2 {
		t.Errorf("Count = %d, want 2 (one blob per function)", d.Count())
	}
	ps, _ := d.Path(sha)
	pb, _ := d.Path(b3)
	if !strings.Contains(ps, string(filepath.Separator)+"sha256"+string(filepath.Separator)) ||
		!strings.Contains(pb, string(filepath.Separator)+"blake3"+string(filepath.Separator)) {
		t.Errorf("paths %q and %q are not in their function's directory", ps, pb)
	}
}

func TestDiskLayoutAndMode(t *testing.T) {
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	dg := mustPut(t, d, digest.SHA256, []byte("layout"))
	p, ok := d.Path(dg)
	want := filepath.Join(dir, "sha256", dg.Hash[:2], fmt.Sprintf("%s-%d", dg.Hash, dg.Size))
	if !ok || p != want {
		t.Fatalf("Path = %q, %v; want %q", p, ok, want)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o444 {
		t.Errorf("blob mode = %v, want 0444", fi.Mode().Perm())
	}
	if d.Count() != 1 || d.SizeBytes() != dg.Size {
		t.Errorf("Count %d, SizeBytes %d; want 1, %d", d.Count(), d.SizeBytes(), dg.Size)
	}
	if _, ok := d.Path(digest.Empty(digest.SHA256)); ok {
		t.Error("Path reports a file for the empty blob")
	}
}

func TestDiskFindMissingOrderAndDuplicates(t *testing.T) {
	d := newDisk(t, t.TempDir(), 0)
	present := mustPut(t, d, digest.SHA256, []byte("present"))
	a := digest.Compute(digest.SHA256, []byte("a"))
	b := digest.Compute(digest.BLAKE3, []byte("b"))
	got := missing(t, d, b, present, a, b, digest.Empty(digest.BLAKE3), a)
	if len(got) != 2 || got[0] != b || got[1] != a {
		t.Fatalf("FindMissing = %v, want [%s %s]", got, b, a)
	}
}

func TestDiskRejectsInvalidDigests(t *testing.T) {
	ctx := context.Background()
	d := newDisk(t, t.TempDir(), 0)
	good := digest.Compute(digest.SHA256, []byte("x"))
	tests := []struct {
		name string
		dg   digest.Digest
	}{
		{"short hash", digest.Digest{Function: digest.SHA256, Hash: good.Hash[:10], Size: 1}},
		{"upper case", digest.Digest{Function: digest.SHA256, Hash: strings.ToUpper(good.Hash), Size: 1}},
		{"path traversal", digest.Digest{Function: digest.SHA256, Hash: "../../" + good.Hash[6:], Size: 1}},
		{"negative size", digest.Digest{Function: digest.SHA256, Hash: good.Hash, Size: -1}},
		{"unsupported function", digest.Digest{Function: 99, Hash: good.Hash, Size: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := d.FindMissing(ctx, []digest.Digest{good, tt.dg}); !errors.Is(err, digest.ErrInvalid) {
				t.Errorf("FindMissing: %v, want ErrInvalid", err)
			}
			if _, err := d.Open(ctx, tt.dg, 0); !errors.Is(err, digest.ErrInvalid) {
				t.Errorf("Open: %v, want ErrInvalid", err)
			}
			if _, err := d.Create(ctx, tt.dg); !errors.Is(err, digest.ErrInvalid) {
				t.Errorf("Create: %v, want ErrInvalid", err)
			}
			if _, ok := d.Path(tt.dg); ok {
				t.Error("Path accepted an invalid digest")
			}
		})
	}
}

func TestDiskWriterChecksSize(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	dg := digest.Compute(digest.SHA256, []byte("twelve bytes"))
	tests := []struct {
		name   string
		writes []string
	}{
		{"short", []string{"twelve"}},
		{"long in one write", []string{"twelve bytes!"}},
		{"long over two writes", []string{"twelve ", "bytes!"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := d.Create(ctx, dg)
			if err != nil {
				t.Fatal(err)
			}
			var werr error
			for _, s := range tt.writes {
				if _, werr = w.Write([]byte(s)); werr != nil {
					break
				}
			}
			cerr := w.Commit()
			if !errors.Is(cerr, ErrMismatch) {
				t.Errorf("Commit: %v, want ErrMismatch", cerr)
			}
			if werr != nil && !errors.Is(werr, ErrMismatch) {
				t.Errorf("Write: %v, want nil or ErrMismatch", werr)
			}
			w.Close()
			if m := missing(t, d, dg); len(m) != 1 {
				t.Error("a blob of the wrong size was stored")
			}
			if n := tmpEntries(t, dir); len(n) != 0 {
				t.Errorf("temp files left: %v", n)
			}
		})
	}
}

func TestDiskCloseWithoutCommit(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	data := []byte("abandoned upload")
	dg := digest.Compute(digest.BLAKE3, data)
	w, err := d.Create(ctx, dg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if n := tmpEntries(t, dir); len(n) != 1 {
		t.Fatalf("upload in progress: %d temp files, want 1", len(n))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err == nil {
		t.Error("Write after Close succeeded")
	}
	if err := w.Commit(); err == nil {
		t.Error("Commit after Close succeeded")
	}
	if n := tmpEntries(t, dir); len(n) != 0 {
		t.Errorf("temp files left: %v", n)
	}
	if m := missing(t, d, dg); len(m) != 1 || d.Count() != 0 || countBlobFiles(t, dir) != 0 {
		t.Errorf("abandoned upload is visible: missing %v, count %d", m, d.Count())
	}
}

func TestDiskConcurrentWritersOfOneBlob(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	data := bytes.Repeat([]byte("concurrent writers "), 20000) // ~380 KB
	dg := digest.Compute(digest.SHA256, data)
	const writers = 16
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := d.Create(ctx, dg)
			if err != nil {
				errs <- err
				return
			}
			defer w.Close()
			for off := 0; off < len(data); off += 32 << 10 {
				if _, err := w.Write(data[off:min(off+32<<10, len(data))]); err != nil {
					errs <- err
					return
				}
			}
			errs <- w.Commit()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	if got := mustGet(t, d, dg); !bytes.Equal(got, data) {
		t.Fatalf("blob corrupted: %d bytes read, want %d", len(got), len(data))
	}
	if d.Count() != 1 || d.SizeBytes() != dg.Size || countBlobFiles(t, dir) != 1 {
		t.Errorf("count %d, bytes %d, files %d; want 1, %d, 1", d.Count(), d.SizeBytes(), countBlobFiles(t, dir), dg.Size)
	}
	if n := tmpEntries(t, dir); len(n) != 0 {
		t.Errorf("temp files left: %v", n)
	}
}

func TestDiskWriteOfPresentBlobUsesNoTempFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := newDisk(t, dir, 0)
	data := []byte("already here")
	dg := mustPut(t, d, digest.SHA256, data)
	w, err := d.Create(ctx, dg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if n := tmpEntries(t, dir); len(n) != 0 {
		t.Errorf("writing a present blob created temp files %v", n)
	}
	if err := w.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	w.Close()

	w, err = d.Create(ctx, dg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[:3]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); !errors.Is(err, ErrMismatch) {
		t.Errorf("short write of a present blob: Commit = %v, want ErrMismatch", err)
	}
	w.Close()
	if got := mustGet(t, d, dg); !bytes.Equal(got, data) {
		t.Errorf("blob changed to %q", got)
	}
}

func TestDiskFileDamagedBehindOurBack(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		damage func(path string) error
	}{
		{"deleted", os.Remove},
		{"truncated", func(p string) error {
			if err := os.Chmod(p, 0o644); err != nil {
				return err
			}
			return os.Truncate(p, 3)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDisk(t, t.TempDir(), 0)
			dg := mustPut(t, d, digest.SHA256, []byte("fragile blob"))
			p, _ := d.Path(dg)
			if err := tt.damage(p); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Open(ctx, dg, 0); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Open of a damaged blob: %v, want ErrNotFound", err)
			}
			if m := missing(t, d, dg); len(m) != 1 {
				t.Error("damaged blob still reported present")
			}
			if d.Count() != 0 || d.SizeBytes() != 0 {
				t.Errorf("count %d, bytes %d after healing; want 0, 0", d.Count(), d.SizeBytes())
			}
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("damaged file not removed: %v", err)
			}
			// It can be stored again.
			mustPut(t, d, digest.SHA256, []byte("fragile blob"))
			if got := mustGet(t, d, dg); string(got) != "fragile blob" {
				t.Errorf("re-stored blob reads %q", got)
			}
		})
	}
}

func TestDiskTooLarge(t *testing.T) {
	d := newDisk(t, t.TempDir(), 10)
	big := digest.Compute(digest.SHA256, []byte("eleven byte"))
	if _, err := d.Create(context.Background(), big); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "10") {
		t.Fatalf("Create of 11 bytes in a 10-byte store: %v, want ErrTooLarge naming the bound", err)
	}
	mustPut(t, d, digest.SHA256, []byte("ten bytes!"))
}

func TestNewDiskRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		dir  string
		opts DiskOptions
	}{
		{"empty dir", "", DiskOptions{}},
		{"negative bound", t.TempDir(), DiskOptions{MaxBytes: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewDisk(tt.dir, tt.opts); err == nil {
				t.Error("NewDisk succeeded")
			}
		})
	}
}

func TestDiskCanceledContext(t *testing.T) {
	d := newDisk(t, t.TempDir(), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dg := digest.Compute(digest.SHA256, []byte("x"))
	if _, err := d.FindMissing(ctx, []digest.Digest{dg}); !errors.Is(err, context.Canceled) {
		t.Errorf("FindMissing: %v", err)
	}
	if _, err := d.Open(ctx, dg, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Open: %v", err)
	}
	if _, err := d.Create(ctx, dg); !errors.Is(err, context.Canceled) {
		t.Errorf("Create: %v", err)
	}
}

func TestRemove(t *testing.T) {
	d := newDisk(t, t.TempDir(), 0)
	ctx := context.Background()
	data := []byte("damaged later")
	dg := digest.Compute(digest.SHA256, data)
	if err := Put(ctx, d, dg, data); err != nil {
		t.Fatal(err)
	}
	d.Remove(dg, "test")
	if missing, _ := d.FindMissing(ctx, []digest.Digest{dg}); len(missing) != 1 {
		t.Fatal("removed blob still present")
	}
	if d.Count() != 0 || d.SizeBytes() != 0 {
		t.Fatalf("count %d size %d after removal", d.Count(), d.SizeBytes())
	}
	d.Remove(dg, "twice")                      // absent: nothing happens
	d.Remove(digest.Empty(digest.SHA256), "x") // the empty blob is always there
	if missing, _ := d.FindMissing(ctx, []digest.Digest{digest.Empty(digest.SHA256)}); len(missing) != 0 {
		t.Fatal("the empty blob went missing")
	}
	if err := Put(ctx, d, dg, data); err != nil {
		t.Fatalf("storing it again: %v", err)
	}
}
