package cas

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/digest"
)

// BenchmarkFindMissing measures FindMissing on requests of 10,000 digests,
// half of them present, against a store of 50,000 blobs. The target is at
// least 500,000 digests/s.
func BenchmarkFindMissing(b *testing.B) {
	const stored, perRequest = 50_000, 10_000
	dir := b.TempDir()
	ds := make([]digest.Digest, 0, stored)
	// Write blob files the way the store lays them out (without the fsyncs
	// of Put, which would dominate the setup) and let NewDisk index them.
	for i := 0; i < stored; i++ {
		data := []byte(fmt.Sprintf("bench blob %d", i))
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
	d, err := NewDisk(dir, DiskOptions{Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("indexed %d blobs in %v", d.Count(), time.Since(start))
	req := make([]digest.Digest, 0, perRequest)
	for i := 0; i < perRequest/2; i++ {
		req = append(req, ds[i*(stored/perRequest)])
		req = append(req, digest.Compute(digest.SHA256, []byte(fmt.Sprintf("absent %d", i))))
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

// BenchmarkPutSmall measures storing new 4 KiB blobs (an action's outputs:
// the write, the file's fsync, the rename and the directory's fsync), from 1
// and from 8 writers at once (output upload uses 8).
func BenchmarkPutSmall(b *testing.B) {
	for _, writers := range []int{1, 8} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			d, err := NewDisk(b.TempDir(), DiskOptions{Logger: quietLogger()})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						data := []byte(fmt.Sprintf("%04096d", i))
						w, err := d.Create(ctx, digest.Compute(digest.SHA256, data))
						if err != nil {
							b.Error(err)
							return
						}
						if _, err := w.Write(data); err != nil {
							b.Error(err)
						} else if err := w.Commit(); err != nil {
							b.Error(err)
						}
						w.Close()
					}
				}()
			}
			wg.Wait()
		})
	}
}
