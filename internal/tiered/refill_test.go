package tiered

import (
	"bytes"
	"context"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// slowDisk is a fast tier whose writes take a while each: a disk that
// cannot keep up with the slow tier's reads.
type slowDisk struct {
	cas.Store
	perWrite atomic.Int64 // nanoseconds
	writes   atomic.Int64
	creates  atomic.Int64
}

func newSlowDisk(s cas.Store, perWrite time.Duration) *slowDisk {
	d := &slowDisk{Store: s}
	d.perWrite.Store(int64(perWrite))
	return d
}

func (s *slowDisk) Create(ctx context.Context, d digest.Digest) (cas.Writer, error) {
	s.creates.Add(1)
	w, err := s.Store.Create(ctx, d)
	if err != nil {
		return nil, err
	}
	return &slowWriter{Writer: w, s: s}, nil
}

type slowWriter struct {
	cas.Writer
	s *slowDisk
}

func (w *slowWriter) Write(p []byte) (int, error) {
	w.s.writes.Add(1)
	time.Sleep(time.Duration(w.s.perWrite.Load()))
	return w.Writer.Write(p)
}

// TestColdReadDoesNotWaitForTheDisk: a cold read of a blob larger than the
// fill's queue, with a fast tier far slower than the read, is not slowed to
// the disk's pace: the fill gives up, and the blob reaches the fast tier
// afterwards by a background fill of its own.
func TestColdReadDoesNotWaitForTheDisk(t *testing.T) {
	r := newRig(t, 1<<30)
	ctx := context.Background()
	size := 64 << 20 // 64 one-MiB buffers, 4× the fill's queue
	// The disk takes 300 ms per 1 MiB write (3.3 MiB/s), far slower than
	// the read even under -race on a loaded machine. A read that waited for
	// its fill would return only after (64 - 16 queued) = 48 disk writes;
	// one whose fill gave up returns after about the 16 the queue held.
	// Counting writes rather than timing the read keeps the test
	// independent of the machine's speed.
	slow := newSlowDisk(r.fast, 300*time.Millisecond)
	r.store = New(slow, r.slow, r.index, nil)
	data, d := blob(t, size)
	if err := cas.Put(ctx, r.slow, d, data); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, r.store, d)
	writes := slow.writes.Load()
	slow.perWrite.Store(0) // let the background fill run at full speed
	if !bytes.Equal(got, data) {
		t.Fatal("the cold read returned different bytes")
	}
	if writes >= 40 {
		t.Errorf("the cold read returned after %d fast-tier writes: it waited for the disk", writes)
	}
	r.store.Wait()
	if !has(t, r.fast, d) {
		t.Fatal("the blob did not reach the fast tier after the background fill")
	}
	if got := readAll(t, r.fast, d); !bytes.Equal(got, data) {
		t.Fatal("the background fill stored different bytes")
	}

	// A small blob still fills inline (no second read).
	small, ds := blob(t, 100_000)
	if err := cas.Put(ctx, r.slow, ds, small); err != nil {
		t.Fatal(err)
	}
	readAll(t, r.store, ds)
	r.store.Wait()
	if !has(t, r.fast, ds) {
		t.Fatal("a small cold read did not fill the fast tier")
	}
}

// TestLossyWriter: a lossy copy whose queue is full gives up without
// blocking the stream and commits nothing; a blocking one (a write's
// second leg) waits and commits.
func TestLossyWriter(t *testing.T) {
	r := newRig(t, 1<<30)
	ctx := context.Background()
	data, d := blob(t, 40<<20)
	for _, lossy := range []bool{true, false} {
		slow := newSlowDisk(r.fast, 20*time.Millisecond)
		w, err := slow.Create(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		a := newAsyncWriter(w)
		if lossy {
			a = newLossyWriter(w)
		}
		for off := 0; off < len(data); off += 256 << 10 {
			if _, err := a.Write(data[off : off+256<<10]); err != nil {
				t.Fatalf("lossy=%v: Write: %v", lossy, err)
			}
		}
		err = a.Commit()
		a.Close()
		if lossy {
			if err != errFellBehind || !a.fellBehind() {
				t.Fatalf("lossy copy behind a slow disk: Commit %v, fellBehind %v", err, a.fellBehind())
			}
			if has(t, r.fast, d) {
				t.Fatal("a dropped copy was committed")
			}
			if n := slow.writes.Load(); n >= 40 {
				t.Errorf("the dropped copy still made %d disk writes", n)
			}
			continue
		}
		if err != nil {
			t.Fatalf("blocking copy: Commit %v", err)
		}
		if !has(t, r.fast, d) {
			t.Fatal("a blocking copy was not committed")
		}
	}
}

// TestFillWithoutEOF: a reader that stops after the blob's size without
// asking for the EOF (ByteStream's Read, through an io.LimitReader) and
// closes still fills the fast tier, inline for a small blob and in the
// background for one whose fill fell behind.
func TestFillWithoutEOF(t *testing.T) {
	r := newRig(t, 1<<30)
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		size     int
		perWrite time.Duration
	}{
		{"inline", 300_000, 0},
		{"fell behind", 40 << 20, 200 * time.Millisecond},
	} {
		slow := newSlowDisk(r.fast, tc.perWrite)
		r.store = New(slow, r.slow, r.index, nil)
		data, d := blob(t, tc.size)
		if err := cas.Put(ctx, r.slow, d, data); err != nil {
			t.Fatal(err)
		}
		rd, err := r.store.Open(ctx, d, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(io.LimitReader(rd, d.Size))
		rd.Close()
		slow.perWrite.Store(0)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read %d bytes, %v", tc.name, len(got), err)
		}
		r.store.Wait()
		if !has(t, r.fast, d) {
			t.Errorf("%s: a read of exactly the blob's bytes did not fill the fast tier", tc.name)
		}
	}
}

// countingSlow is a slow tier that records the offsets of its reads and
// counts the bytes they return.
type countingSlow struct {
	cas.Store
	mu      sync.Mutex
	offsets []int64
	bytes   atomic.Int64
}

func (s *countingSlow) Open(ctx context.Context, d digest.Digest, off int64) (io.ReadCloser, error) {
	r, err := s.Store.Open(ctx, d, off)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.offsets = append(s.offsets, off)
	s.mu.Unlock()
	return &countingReader{ReadCloser: r, n: &s.bytes}, nil
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
}

// TestStoppedFillResumes: a fill that fell behind the read is finished in
// the background from where it stopped: the slow tier is read again only
// from that offset, and the fast tier ends up with the whole blob.
func TestStoppedFillResumes(t *testing.T) {
	r := newRig(t, 1<<30)
	ctx := context.Background()
	size := int64(48 << 20) // 3× the fill's queue
	slowDisk := newSlowDisk(r.fast, 200*time.Millisecond)
	slow := &countingSlow{Store: r.slow}
	r.store = New(slowDisk, slow, nil, nil)
	data, d := blob(t, int(size))
	if err := cas.Put(ctx, r.slow, d, data); err != nil {
		t.Fatal(err)
	}
	rd, err := r.store.Open(ctx, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.LimitReader(rd, size))
	rd.Close()
	slowDisk.perWrite.Store(0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the cold read returned %d bytes (%v), not the blob", len(got), err)
	}
	r.store.Wait()
	if !has(t, r.fast, d) {
		t.Fatal("the blob did not reach the fast tier")
	}
	if got := readAll(t, r.fast, d); !bytes.Equal(got, data) {
		t.Fatal("the fast tier holds different bytes")
	}
	slow.mu.Lock()
	offsets := slow.offsets
	slow.mu.Unlock()
	if len(offsets) != 2 || offsets[0] != 0 || offsets[1] <= 0 || offsets[1] >= size {
		t.Fatalf("slow tier reads at offsets %v, want the read at 0 and the fill's finish after where it stopped", offsets)
	}
	if want := size + (size - offsets[1]); slow.bytes.Load() != want {
		t.Errorf("read %d bytes from the slow tier, want %d (the blob, then the %d the fill missed)", slow.bytes.Load(), want, size-offsets[1])
	}
	if creates := slowDisk.creates.Load(); creates != 1 {
		t.Errorf("%d fast-tier writers for one blob, want 1 (the fill, resumed)", creates)
	}
}

// TestOneFillAtATime: a read that misses the fast tier while another
// read's fill of the same blob is under way streams from the slow tier
// without a fill of its own; once the first fill is abandoned, the next
// read fills again.
func TestOneFillAtATime(t *testing.T) {
	r := newRig(t, 1<<30)
	ctx := context.Background()
	disk := newSlowDisk(r.fast, 0)
	r.store = New(disk, r.slow, nil, nil)
	data, d := blob(t, 3<<20)
	if err := cas.Put(ctx, r.slow, d, data); err != nil {
		t.Fatal(err)
	}
	first, err := r.store.Open(ctx, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(first, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	// A second read while the first one's fill is under way.
	if got := readAll(t, r.store, d); !bytes.Equal(got, data) {
		t.Fatal("the second read returned different bytes")
	}
	if n := disk.creates.Load(); n != 1 {
		t.Fatalf("%d fills for two concurrent reads of one blob, want 1", n)
	}
	// The first read is abandoned: its fill is discarded, and the next
	// read fills.
	first.Close()
	if has(t, r.fast, d) {
		t.Fatal("an abandoned fill was committed")
	}
	if got := readAll(t, r.store, d); !bytes.Equal(got, data) {
		t.Fatal("the third read returned different bytes")
	}
	r.store.Wait()
	if n := disk.creates.Load(); n != 2 {
		t.Fatalf("%d fills, want 2 (the abandoned one, then the third read's)", n)
	}
	if !has(t, r.fast, d) {
		t.Fatal("the third read did not fill the fast tier")
	}
}

// TestAbandonedCopySkipsItsQueue: closing a copy that was neither
// committed nor resumed (the client went away) does not first write what
// is still queued to a slow disk.
func TestAbandonedCopySkipsItsQueue(t *testing.T) {
	r := newRig(t, 1<<30)
	ctx := context.Background()
	data, d := blob(t, 40<<20)
	for _, lossy := range []bool{true, false} {
		disk := newSlowDisk(r.fast, 100*time.Millisecond)
		w, err := disk.Create(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		a := newAsyncWriter(w)
		if lossy {
			a = newLossyWriter(w)
		}
		// 20 MiB: more than the lossy copy's queue, less than what would
		// make the blocking one wait long.
		for off := 0; off < 20<<20; off += 1 << 20 {
			if lossy && a.fellBehind() {
				break
			}
			if _, err := a.Write(data[off : off+1<<20]); err != nil {
				t.Fatal(err)
			}
		}
		before := disk.writes.Load()
		a.Close()
		if after := disk.writes.Load(); after-before > 1 {
			t.Errorf("lossy=%v: Close wrote %d queued buffers of an abandoned copy", lossy, after-before)
		}
		if has(t, r.fast, d) {
			t.Fatalf("lossy=%v: an abandoned copy was committed", lossy)
		}
	}
}
