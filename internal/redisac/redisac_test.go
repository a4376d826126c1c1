package redisac

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/redistest"
)

func result(code int32, out digest.Digest) *repb.ActionResult {
	return &repb.ActionResult{ExitCode: code, OutputFiles: []*repb.OutputFile{{Path: "out", Digest: out.Proto()}}}
}

func newStore(t *testing.T, srv *redistest.Server, opts Options) *Store {
	t.Helper()
	s, err := New(srv.Client(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPutGetNamespaces(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	sha := digest.Compute(digest.SHA256, []byte("action"))
	blake := digest.Digest{Function: digest.BLAKE3, Hash: sha.Hash, Size: sha.Size}
	keys := []struct {
		instance string
		action   digest.Digest
	}{
		{"", sha}, {"main", sha}, {"main/sub", sha}, {"../escape", sha}, {"main", blake},
		{"main", digest.Compute(digest.SHA256, []byte("other action"))},
	}
	out := digest.Compute(digest.SHA256, []byte("o"))
	for i, k := range keys {
		if _, err := s.Get(ctx, k.instance, k.action); !errors.Is(err, actioncache.ErrNotFound) {
			t.Fatalf("Get before Put: %v, want ErrNotFound", err)
		}
		if err := s.Put(ctx, k.instance, k.action, result(int32(i), out)); err != nil {
			t.Fatal(err)
		}
	}
	// Restart: acknowledged results survive (AOF), and the client reconnects.
	srv.Restart()
	for i, k := range keys {
		got, err := s.Get(ctx, k.instance, k.action)
		if err != nil {
			t.Fatalf("Get(%q, %v) after restart: %v", k.instance, k.action, err)
		}
		if !proto.Equal(got, result(int32(i), out)) {
			t.Errorf("Get(%q, %v) = %v, want exit code %d", k.instance, k.action, got, i)
		}
	}
	// Put replaces.
	if err := s.Put(ctx, "", sha, result(99, out)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(ctx, "", sha); err != nil || got.ExitCode != 99 {
		t.Fatalf("after replace: %v, %v", got, err)
	}
}

func TestBadDigestRejected(t *testing.T) {
	s := newStore(t, redistest.Start(t), Options{})
	bad := digest.Digest{Function: digest.SHA256, Hash: "../../x", Size: 1}
	if _, err := s.Get(context.Background(), "", bad); err == nil || errors.Is(err, actioncache.ErrNotFound) {
		t.Fatalf("Get with a malformed digest: %v, want a validation error", err)
	}
	if err := s.Put(context.Background(), "", bad, &repb.ActionResult{}); err == nil {
		t.Fatal("Put with a malformed digest succeeded")
	}
}

func TestTTL(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, redistest.Start(t), Options{TTL: 300 * time.Millisecond})
	a := digest.Compute(digest.SHA256, []byte("a"))
	if err := s.Put(ctx, "", a, result(1, a)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "", a); err != nil {
		t.Fatalf("Get right after Put: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := s.Get(ctx, "", a)
		if errors.Is(err, actioncache.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("result still there 5s after a 300ms TTL: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := New(nil, Options{TTL: -time.Second}); err == nil {
		t.Fatal("negative TTL accepted")
	}
}

func TestDamagedEntryIsMiss(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	a := digest.Compute(digest.SHA256, []byte("a"))
	key, err := s.Key("", a)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.rdb.Set(ctx, key, "\xff\xff not a proto", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "", a); !errors.Is(err, actioncache.ErrNotFound) {
		t.Fatalf("damaged entry: %v, want ErrNotFound", err)
	}
}

func TestRedisDownIsErrorNotMiss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := redistest.Start(t)
	s := newStore(t, srv, Options{})
	srv.Stop()
	a := digest.Compute(digest.SHA256, []byte("a"))
	if _, err := s.Get(ctx, "", a); err == nil || errors.Is(err, actioncache.ErrNotFound) {
		t.Fatalf("Get with redis down: %v, want an error that is not a miss", err)
	}
	if err := s.Put(ctx, "", a, result(1, a)); err == nil {
		t.Fatal("Put with redis down succeeded")
	}
}

// The completeness check composes over the Redis store: a result whose blobs
// are gone from the CAS is a miss, one whose blobs are present is a hit.
func TestCompletenessChecked(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, redistest.Start(t), Options{})
	blobs, err := cas.NewDisk(t.TempDir(), cas.DiskOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ac := actioncache.NewCompletenessChecking(s, blobs)
	present := []byte("present output")
	pd := digest.Compute(digest.SHA256, present)
	if err := cas.Put(ctx, blobs, pd, present); err != nil {
		t.Fatal(err)
	}
	gone := digest.Compute(digest.SHA256, []byte("never uploaded"))
	for i, tc := range []struct {
		out     digest.Digest
		wantHit bool
	}{{pd, true}, {gone, false}} {
		a := digest.Compute(digest.SHA256, []byte(fmt.Sprint("action", i)))
		if err := ac.Put(ctx, "", a, result(0, tc.out)); err != nil {
			t.Fatal(err)
		}
		_, err := ac.Get(ctx, "", a)
		if tc.wantHit && err != nil {
			t.Errorf("complete result: %v, want a hit", err)
		}
		if !tc.wantHit && !errors.Is(err, actioncache.ErrNotFound) {
			t.Errorf("result with a missing blob: %v, want ErrNotFound", err)
		}
	}
}
