package s3cas

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/s3test"
	"google.golang.org/grpc/codes"
)

func options(srv *s3test.Server) Options {
	return Options{
		Name: "cas", Endpoint: srv.Endpoint, Bucket: srv.Bucket, Region: "us-east-1", Prefix: "test",
		AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey, Retries: 1, PartSize: 5 << 20,
	}
}

func open(t *testing.T, o Options) *Store {
	t.Helper()
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func blob(t *testing.T, n int) ([]byte, digest.Digest) {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b, digest.Compute(digest.SHA256, b)
}

func read(t *testing.T, s cas.Store, d digest.Digest, off int64) []byte {
	t.Helper()
	r, err := s.Open(context.Background(), d, off)
	if err != nil {
		t.Fatalf("Open(%s, %d): %v", d, off, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %s from %d: %v", d, off, err)
	}
	return b
}

// objects lists the bucket's objects under the store's prefix.
func objects(t *testing.T, srv *s3test.Server) []string {
	t.Helper()
	var keys []string
	for o := range srv.Client().ListObjects(context.Background(), srv.Bucket, minio.ListObjectsOptions{Prefix: "test/", Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list: %v", o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

func TestStore(t *testing.T) {
	srv := s3test.Start(t)
	s := open(t, options(srv))
	ctx := context.Background()

	t.Run("put get ranged", func(t *testing.T) {
		data, d := blob(t, 1000)
		if err := cas.Put(ctx, s, d, data); err != nil {
			t.Fatalf("Put: %v", err)
		}
		if got := read(t, s, d, 0); !bytes.Equal(got, data) {
			t.Fatal("read back different bytes")
		}
		for _, off := range []int64{1, 999, 1000} {
			if got := read(t, s, d, off); !bytes.Equal(got, data[off:]) {
				t.Fatalf("read from %d: %d bytes, want %d", off, len(got), 1000-off)
			}
		}
		if _, err := s.Open(ctx, d, 1001); !errors.Is(err, cas.ErrOutOfRange) {
			t.Fatalf("Open beyond the end: %v, want ErrOutOfRange", err)
		}
		if _, err := srv.Client().StatObject(ctx, srv.Bucket, "test/sha256/"+d.Hash+"-1000", minio.StatObjectOptions{}); err != nil {
			t.Fatalf("object not under the documented key: %v", err)
		}
	})

	t.Run("multipart and chunked read", func(t *testing.T) {
		// Parts of 5 MiB; big enough to be read back in ranged GETs of
		// readChunk (a remainder of up to 2×readChunk is one GET), the
		// last one short.
		data, d := blob(t, 2*readChunk+3*(5<<20)+12345)
		w, err := s.Create(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		for p := data; len(p) > 0; {
			n := min(len(p), 100_000)
			if _, err := w.Write(p[:n]); err != nil {
				t.Fatalf("Write: %v", err)
			}
			p = p[n:]
		}
		if err := w.Commit(); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		w.Close()
		if got := read(t, s, d, 0); !bytes.Equal(got, data) {
			t.Fatal("multipart blob read back different bytes")
		}
		for _, off := range []int64{9<<20 + 7, readChunk, int64(len(data)) - 2*readChunk - 1} {
			if got := read(t, s, d, off); !bytes.Equal(got, data[off:]) {
				t.Fatalf("read of the multipart blob from %d differs", off)
			}
		}
	})

	t.Run("abort leaves nothing", func(t *testing.T) {
		data, d := blob(t, 2*(5<<20)+1)
		w, err := s.Create(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data[:len(data)-1]); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Close (abort): %v", err)
		}
		if _, err := s.Open(ctx, d, 0); !errors.Is(err, cas.ErrNotFound) {
			t.Fatalf("Open of an aborted blob: %v, want ErrNotFound", err)
		}
		uploads := 0
		for u := range srv.Client().ListIncompleteUploads(ctx, srv.Bucket, "test/sha256/"+d.Hash, true) {
			if u.Err == nil {
				uploads++
			}
		}
		if uploads != 0 {
			t.Fatalf("%d incomplete uploads left after abort", uploads)
		}
	})

	t.Run("mismatch never stored", func(t *testing.T) {
		v := cas.NewVerifying(s)
		for _, n := range []int{10, 2*(5<<20) + 3} {
			data, d := blob(t, n)
			bad := bytes.Clone(data)
			bad[n-1] ^= 1
			if err := cas.Put(ctx, v, d, bad); !errors.Is(err, cas.ErrMismatch) {
				t.Fatalf("Put of wrong bytes (%d): %v, want ErrMismatch", n, err)
			}
			if missing, err := s.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) != 1 {
				t.Fatalf("after a mismatched put of %d bytes FindMissing = %v, %v; want it missing", n, missing, err)
			}
		}
	})

	t.Run("find missing concurrent", func(t *testing.T) {
		var ds, want []digest.Digest
		for i := range 300 {
			data, d := blob(t, 10+i)
			if i%3 == 0 {
				if err := cas.Put(ctx, s, d, data); err != nil {
					t.Fatal(err)
				}
			} else {
				want = append(want, d)
			}
			ds = append(ds, d)
		}
		ds = append(ds, ds[1], digest.Empty(digest.SHA256))
		got, err := s.FindMissing(ctx, ds)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("FindMissing: %d missing, want %d in order", len(got), len(want))
		}
	})

	t.Run("not found", func(t *testing.T) {
		_, d := blob(t, 5)
		if _, err := s.Open(ctx, d, 0); !errors.Is(err, cas.ErrNotFound) || errcode.Code(err) != codes.NotFound {
			t.Fatalf("Open of an absent blob: %v", err)
		}
	})

	t.Run("bucket missing", func(t *testing.T) {
		o := options(srv)
		o.Bucket = "no-such-bucket"
		_, err := New(ctx, o)
		if err == nil || !strings.Contains(err.Error(), "no-such-bucket") || !strings.Contains(err.Error(), "does not exist") {
			t.Fatalf("New with a missing bucket: %v", err)
		}
	})

	t.Run("bad credentials", func(t *testing.T) {
		o := options(srv)
		o.SecretAccessKey = "wrong"
		_, err := New(ctx, o)
		if err == nil || !strings.Contains(err.Error(), "refused the credentials") || !strings.Contains(err.Error(), `"cas"`) {
			t.Fatalf("New with a wrong secret: %v", err)
		}
	})

	if keys := objects(t, srv); len(keys) == 0 {
		t.Fatal("no objects under the prefix")
	}
}

func TestServerStopped(t *testing.T) {
	srv := s3test.Start(t)
	s := open(t, options(srv))
	ctx := context.Background()
	data, d := blob(t, 100)
	if err := cas.Put(ctx, s, d, data); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	_, err := s.FindMissing(ctx, []digest.Digest{d})
	if errcode.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `s3 store "cas"`) {
		t.Fatalf("FindMissing with the server stopped: %v (%s), want UNAVAILABLE naming the store", err, errcode.Code(err))
	}
	if _, err := s.Open(ctx, d, 0); errcode.Code(err) != codes.Unavailable {
		t.Fatalf("Open with the server stopped: %v", err)
	}
	data2, d2 := blob(t, 100)
	if err := cas.Put(ctx, s, d2, data2); errcode.Code(err) != codes.Unavailable {
		t.Fatalf("Put with the server stopped: %v", err)
	}
	srv.Start()
	if got := read(t, s, d, 0); !bytes.Equal(got, data) {
		t.Fatal("after restart the blob reads back different bytes")
	}
	if err := cas.Put(ctx, s, d2, data2); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
}

// TestServerStoppedMidUpload: S3 dies while a multipart upload is under way
// (parts already sent); the commit fails UNAVAILABLE, and after S3 comes back
// nothing of the blob is visible: not to FindMissing, not to Open, not in
// the bucket. Only CompleteMultipartUpload, which Commit alone sends, makes
// an object appear.
func TestServerStoppedMidUpload(t *testing.T) {
	srv := s3test.Start(t)
	s := open(t, options(srv))
	ctx := context.Background()
	data, d := blob(t, 3*(5<<20)+123) // three full parts and a tail
	w, err := s.Create(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	// Two parts' worth: at least one part upload has been started.
	if _, err := w.Write(data[:2*(5<<20)+1]); err != nil {
		t.Fatalf("writing the first parts: %v", err)
	}
	srv.Stop()
	_, werr := w.Write(data[2*(5<<20)+1:])
	cerr := w.Commit()
	if werr == nil && cerr == nil {
		t.Fatal("the upload succeeded with the S3 server stopped")
	}
	if err := cerr; err == nil {
		err = werr
		if errcode.Code(err) != codes.Unavailable {
			t.Errorf("write with the server stopped: %v (%s), want UNAVAILABLE", err, errcode.Code(err))
		}
	} else if errcode.Code(err) != codes.Unavailable {
		t.Errorf("commit with the server stopped: %v (%s), want UNAVAILABLE", err, errcode.Code(err))
	}
	w.Close()
	srv.Start()
	missing, err := s.FindMissing(ctx, []digest.Digest{d})
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 1 {
		t.Errorf("FindMissing after the failed upload = %v, want the blob missing", missing)
	}
	if _, err := s.Open(ctx, d, 0); !errors.Is(err, cas.ErrNotFound) {
		t.Errorf("Open after the failed upload: %v, want not found", err)
	}
	if keys := objects(t, srv); len(keys) != 0 {
		t.Errorf("bucket holds %v after the failed upload, want nothing", keys)
	}
	// And the same blob uploads whole afterwards.
	if err := cas.Put(ctx, s, d, data); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
	if got := read(t, s, d, 0); !bytes.Equal(got, data) {
		t.Fatal("the re-uploaded blob reads back different bytes")
	}
}
