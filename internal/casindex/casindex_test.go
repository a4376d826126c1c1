package casindex

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/redistest"
)

func TestIndex(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	ix, err := New(ctx, Options{URL: srv.URL(0), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	var ds []digest.Digest
	for i := range 2500 { // more than one batch
		ds = append(ds, digest.Compute(digest.SHA256, []byte(fmt.Sprint(i))))
	}
	if err := ix.Add(ctx, ds[:1200]...); err != nil {
		t.Fatal(err)
	}
	has, err := ix.Has(ctx, ds)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range has {
		if h != (i < 1200) {
			t.Fatalf("Has[%d] = %v", i, h)
		}
	}
	// A fresh entry outlives Remove: the read that found the object gone
	// may have raced its upload.
	if err := ix.Remove(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if has, _ := ix.Has(ctx, ds[:1]); !has[0] {
		t.Fatal("Remove dropped an entry written just now")
	}
	// One written longer ago than freshWindow goes (aged by lowering its TTL).
	if err := ix.c.PExpire(ctx, ix.key(ds[0]), time.Hour-DefaultFreshWindow-time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	if err := ix.Remove(ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	if has, _ := ix.Has(ctx, ds[:1]); has[0] {
		t.Fatal("removed entry still present")
	}
	if err := ix.Remove(ctx, ds[1500]); err != nil {
		t.Fatalf("Remove of an absent entry: %v", err)
	}
	// The same hash under another function is another blob.
	other := ds[1]
	other.Function = digest.BLAKE3
	if has, _ := ix.Has(ctx, []digest.Digest{other}); has[0] {
		t.Fatal("functions share entries")
	}
	srv.Restart()
	if has, err := ix.Has(ctx, ds[1:2]); err != nil || !has[0] {
		t.Fatalf("after a Redis restart: %v, %v", has, err)
	}
	srv.Stop()
	if _, err := ix.Has(ctx, ds[:1]); !errors.Is(err, cas.ErrUnavailable) {
		t.Fatalf("Has with Redis stopped: %v, want ErrUnavailable", err)
	}
}

func TestNewUnreachable(t *testing.T) {
	if _, err := New(context.Background(), Options{URL: "redis://127.0.0.1:1/0"}); !errors.Is(err, cas.ErrUnavailable) {
		t.Fatalf("New on a closed port: %v", err)
	}
}
