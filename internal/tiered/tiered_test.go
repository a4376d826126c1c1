package tiered

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc/codes"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casindex"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/s3cas"
	"github.com/hearth-build/hearth/internal/s3test"
)

type rig struct {
	s3    *s3test.Server
	fast  *cas.Disk
	slow  *s3cas.Store
	index *casindex.Index
	redis *redistest.Server
	store *Store
}

func newRig(t *testing.T, fastMax int64) *rig {
	t.Helper()
	ctx := context.Background()
	r := &rig{s3: s3test.Start(t)}
	var err error
	r.fast, err = cas.NewDisk(t.TempDir(), cas.DiskOptions{MaxBytes: fastMax})
	if err != nil {
		t.Fatal(err)
	}
	r.slow, err = s3cas.New(ctx, s3cas.Options{
		Endpoint: r.s3.Endpoint, Bucket: r.s3.Bucket, Region: "us-east-1",
		AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey, Retries: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	rs := redistest.Start(t)
	r.redis = rs
	r.index, err = casindex.New(ctx, casindex.Options{URL: rs.URL(0)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.index.Close() })
	r.store = New(r.fast, r.slow, r.index, nil)
	return r
}

func blob(t *testing.T, n int) ([]byte, digest.Digest) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b, digest.Compute(digest.SHA256, b)
}

func has(t *testing.T, s cas.Store, d digest.Digest) bool {
	t.Helper()
	m, err := s.FindMissing(context.Background(), []digest.Digest{d})
	if err != nil {
		t.Fatalf("FindMissing: %v", err)
	}
	return len(m) == 0
}

func readAll(t *testing.T, s cas.Store, d digest.Digest) []byte {
	t.Helper()
	r, err := s.Open(context.Background(), d, 0)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

func TestTiers(t *testing.T) {
	r := newRig(t, 1<<20)
	ctx := context.Background()

	// A write lands in both tiers and the index.
	data, d := blob(t, 1000)
	if err := cas.Put(ctx, r.store, d, data); err != nil {
		t.Fatal(err)
	}
	if !has(t, r.slow, d) {
		t.Fatal("written blob not in the slow tier when Commit returned")
	}
	waitFast(t, r.fast, d, "a written blob is not in the fast tier")
	if h, _ := r.index.Has(ctx, []digest.Digest{d}); !h[0] {
		t.Fatal("written blob not in the index")
	}

	// A blob only in the slow tier is read from it and fills the fast tier.
	data2, d2 := blob(t, 200_000)
	if err := cas.Put(ctx, r.slow, d2, data2); err != nil {
		t.Fatal(err)
	}
	if !has(t, r.store, d2) {
		t.Fatal("a blob in the slow tier only is reported missing")
	}
	if h, _ := r.index.Has(ctx, []digest.Digest{d2}); !h[0] {
		t.Fatal("a blob found by HEAD was not recorded in the index")
	}
	if got := readAll(t, r.store, d2); !bytes.Equal(got, data2) {
		t.Fatal("slow read returned different bytes")
	}
	waitFast(t, r.fast, d2, "a whole read did not fill the fast tier")

	// A blob larger than the whole fast tier goes to the slow tier only.
	big, dbig := blob(t, 2<<20)
	if err := cas.Put(ctx, r.store, dbig, big); err != nil {
		t.Fatalf("Put of a blob larger than the fast tier: %v", err)
	}
	if got := readAll(t, r.store, dbig); !bytes.Equal(got, big) {
		t.Fatal("big blob read back different bytes")
	}

	// A blob in neither tier is missing.
	_, d3 := blob(t, 10)
	if has(t, r.store, d3) {
		t.Fatal("absent blob reported present")
	}

	// With S3 down: the fast tier and the index still answer FindMissing;
	// what needs S3 is UNAVAILABLE; nothing reaches the fast tier unless S3
	// acknowledged it.
	data4, d4 := blob(t, 100)
	if err := cas.Put(ctx, r.slow, d4, data4); err != nil {
		t.Fatal(err)
	}
	if err := r.index.Add(ctx, d4); err != nil {
		t.Fatal(err)
	}
	r.s3.Stop()
	if m, err := r.store.FindMissing(ctx, []digest.Digest{d, d2, d4}); err != nil || len(m) != 0 {
		t.Fatalf("FindMissing answered by the fast tier and index with S3 down: %v, %v", m, err)
	}
	if _, err := r.store.FindMissing(ctx, []digest.Digest{d3}); errcode.Code(err) != codes.Unavailable {
		t.Fatalf("FindMissing needing S3 while it is down: %v", err)
	}
	data5, d5 := blob(t, 100)
	if err := cas.Put(ctx, r.store, d5, data5); errcode.Code(err) != codes.Unavailable {
		t.Fatalf("Put with S3 down: %v, want UNAVAILABLE", err)
	}
	if has(t, r.fast, d5) {
		t.Fatal("a write S3 refused was committed to the fast tier")
	}
	if got := readAll(t, r.store, d); !bytes.Equal(got, data) {
		t.Fatal("fast-tier read with S3 down differs")
	}
	r.s3.Start()
	if err := cas.Put(ctx, r.store, d5, data5); err != nil {
		t.Fatalf("Put after S3 restarted: %v", err)
	}
}

func TestIndexDisagreement(t *testing.T) {
	r := newRig(t, 1<<20)
	ctx := context.Background()
	// The index says present but the bucket lost the object (a lifecycle
	// rule deleted it): FindMissing trusts the index; the read reports
	// NotFound and drops the entry, so FindMissing is right again. The
	// entry is written just before, so the index's fresh window (which
	// keeps an entry a racing upload just wrote) is off here.
	var err error
	r.index, err = casindex.New(ctx, casindex.Options{URL: r.redis.URL(0), FreshWindow: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.index.Close() })
	r.store = New(r.fast, r.slow, r.index, nil)
	data, d := blob(t, 300)
	if err := cas.Put(ctx, r.slow, d, data); err != nil {
		t.Fatal(err)
	}
	if err := r.index.Add(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := r.s3.Client().RemoveObject(ctx, r.s3.Bucket, r.slow.Key(d), minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if !has(t, r.store, d) {
		t.Fatal("FindMissing should answer from the index")
	}
	if _, err := r.store.Open(ctx, d, 0); !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("Open of a blob gone from the bucket: %v, want NotFound", err)
	}
	if has(t, r.store, d) {
		t.Fatal("after the failed read the blob is still reported present")
	}
}

// waitFast waits for d to reach the fast tier, which commits in the
// background.
func waitFast(t *testing.T, fast cas.Store, d digest.Digest, msg string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !has(t, fast, d); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
	}
}

// TestFilesForAFileCache: the pair exposes the fast tier's files (so a file
// cache in front of it hardlinks them) and nothing for a blob only the slow
// tier holds (which the cache must then read through Open); Remove drops a
// damaged file from the fast tier only.
func TestFilesForAFileCache(t *testing.T) {
	r := newRig(t, 1<<20)
	ctx := context.Background()
	data, d := blob(t, 1000)
	if err := cas.Put(ctx, r.store, d, data); err != nil {
		t.Fatal(err)
	}
	r.store.Wait()
	p, ok := r.store.Path(d)
	if !ok {
		t.Fatal("Path of a blob in the fast tier: none")
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Path's file: %v, equal %v", err, bytes.Equal(got, data))
	}
	slowData, slowOnly := blob(t, 500)
	if err := cas.Put(ctx, r.slow, slowOnly, slowData); err != nil {
		t.Fatal(err)
	}
	if p, ok := r.store.Path(slowOnly); ok {
		t.Fatalf("Path of a blob only the slow tier holds: %s", p)
	}
	r.store.Remove(d, "test: damaged")
	if has(t, r.fast, d) {
		t.Fatal("Remove left the blob in the fast tier")
	}
	if !has(t, r.slow, d) {
		t.Fatal("Remove dropped the blob from the slow tier")
	}
	if got := readAll(t, r.store, d); !bytes.Equal(got, data) {
		t.Fatal("after Remove, the pair reads different bytes")
	}
}
