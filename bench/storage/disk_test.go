package storage

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

var quiet = slog.New(slog.DiscardHandler)

// BenchmarkDiskFindMissing measures FindMissing on requests of 10,000
// digests, half of them present, against a store of 50,000 blobs. The target
// is at least 500,000 digests/s.
func BenchmarkDiskFindMissing(b *testing.B) {
	const stored, perRequest = 50_000, 10_000
	dir := b.TempDir()
	ds := make([]digest.Digest, 0, stored)
	// Write blob files the way the store lays them out (without the fsyncs
	// of Put, which would dominate the setup) and let NewDisk index them.
	for i := range stored {
		data := fmt.Appendf(nil, "bench blob %d", i)
		dg := digest.Compute(digest.SHA256, data)
		p := filepath.Join(dir, "sha256", dg.Hash[:2], fmt.Sprintf("%s-%d", dg.Hash, dg.Size))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o444); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, dg)
	}
	start := time.Now()
	d, err := cas.NewDisk(dir, cas.DiskOptions{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	if d.Count() != stored {
		b.Fatalf("NewDisk indexed %d blobs, want %d: the layout this benchmark writes is not the store's", d.Count(), stored)
	}
	b.Logf("indexed %d blobs in %v", d.Count(), time.Since(start))
	req := make([]digest.Digest, 0, perRequest)
	for i := range perRequest / 2 {
		req = append(req, ds[i*(stored/perRequest)])
		req = append(req, digest.Compute(digest.SHA256, fmt.Appendf(nil, "absent %d", i)))
	}
	ctx := context.Background()
	check := func(m []digest.Digest, err error) {
		if err != nil || len(m) != perRequest/2 {
			b.Errorf("FindMissing: %d missing, %v; want %d", len(m), err, perRequest/2)
		}
	}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			check(d.FindMissing(ctx, req))
		}
		b.ReportMetric(float64(b.N*perRequest)/b.Elapsed().Seconds(), "digests/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				check(d.FindMissing(ctx, req))
			}
		})
		b.ReportMetric(float64(b.N*perRequest)/b.Elapsed().Seconds(), "digests/s")
	})
}

// BenchmarkDiskPutSmall measures storing new 4 KiB blobs durably (a
// client's uploads), from 1 and from 8 writers at once (Bazel uploads an
// action's new inputs 8 at a time), through the upload journal (a record
// and a shared fdatasync) and without it (the file's fsync, the rename and
// the directory's fsync), with the server's 16 spare upload files.
func BenchmarkDiskPutSmall(b *testing.B) {
	for _, journal := range []bool{true, false} {
		for _, writers := range []int{1, 8} {
			b.Run(fmt.Sprintf("journal=%v/writers=%d", journal, writers), func(b *testing.B) {
				benchPutSmall(b, journal, writers)
			})
		}
	}
}

func benchPutSmall(b *testing.B, journal bool, writers int) {
	d, err := cas.NewDisk(b.TempDir(), cas.DiskOptions{Logger: quiet, NoJournal: !journal, SpareFiles: 16})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for journal && !d.JournalReady() {
		time.Sleep(time.Millisecond)
	}
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	took := make([][]time.Duration, writers)
	b.ResetTimer()
	for w := range writers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				data := fmt.Appendf(nil, "%04096d", i)
				start := time.Now()
				if err := cas.Put(ctx, d, digest.Compute(digest.SHA256, data), data); err != nil {
					b.Error(err)
					return
				}
				took[w] = append(took[w], time.Since(start))
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	// The tail shows what a client's upload may wait for beyond the mean:
	// with the journal, a rotation (16 MiB is ~3,900 of these puts).
	all := slices.Concat(took...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
		b.ReportMetric(float64(all[len(all)-1].Microseconds()), "max-µs")
	}
}
