package inputtree

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
)

const fn = digest.SHA256

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// scratch returns a new empty directory, on tmpfs when the machine has one:
// a Disk fsyncs every blob, which costs milliseconds on a real disk, and some
// tests store hundreds of Directories. Everything a test stages lives in
// scratch directories, so the store, the cache and the action directories
// share one filesystem, as hardlinking needs.
func scratch(t testing.TB) string {
	t.Helper()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "inputtree-test-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

func newDisk(t testing.TB) *cas.Disk {
	t.Helper()
	d, err := cas.NewDisk(scratch(t), cas.DiskOptions{Logger: quiet()})
	if err != nil {
		t.Fatalf("NewDisk: %v", err)
	}
	return d
}

// newCache returns a file cache fed by src and the directory it lives in.
func newCache(t testing.TB, src cas.Store, maxBytes int64) (*filecache.Cache, string) {
	t.Helper()
	dir := filepath.Join(scratch(t), "cache")
	c, err := filecache.New(dir, src, filecache.Options{MaxBytes: maxBytes, Logger: quiet()})
	if err != nil {
		t.Fatalf("filecache.New: %v", err)
	}
	return c, dir
}

func putBlob(t testing.TB, s cas.Store, data []byte) digest.Digest {
	t.Helper()
	d := digest.Compute(fn, data)
	if err := cas.Put(context.Background(), s, d, data); err != nil {
		t.Fatalf("Put: %v", err)
	}
	return d
}

func putDir(t testing.TB, s cas.Store, dir *repb.Directory) digest.Digest {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(dir)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return putBlob(t, s, data)
}

// dirDigest is the digest a Directory would have, without storing it.
func dirDigest(t testing.TB, dir *repb.Directory) digest.Digest {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(dir)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return digest.Compute(fn, data)
}

func file(name string, d digest.Digest, exec bool) *repb.FileNode {
	return &repb.FileNode{Name: name, Digest: d.Proto(), IsExecutable: exec}
}

func subdir(name string, d digest.Digest) *repb.DirectoryNode {
	return &repb.DirectoryNode{Name: name, Digest: d.Proto()}
}

func symlink(name, target string) *repb.SymlinkNode {
	return &repb.SymlinkNode{Name: name, Target: target}
}
