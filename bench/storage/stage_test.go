package storage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/inputtree"
)

func putBlob(b *testing.B, s cas.Store, data []byte) digest.Digest {
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(context.Background(), s, d, data); err != nil {
		b.Fatal(err)
	}
	return d
}

func putDir(b *testing.B, s cas.Store, dir *repb.Directory) digest.Digest {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(dir)
	if err != nil {
		b.Fatal(err)
	}
	return putBlob(b, s, data)
}

// BenchmarkStage stages a tree of 20 directories × 50 files (one in ten
// executable) into a fresh action directory from a warm file cache: the
// hardlinks, directories and modes a one-shot action's inputs cost.
func BenchmarkStage(b *testing.B) {
	ctx := context.Background()
	disk, err := cas.NewDisk(b.TempDir(), cas.DiskOptions{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	var dirs []*repb.DirectoryNode
	for i := range 20 {
		var files []*repb.FileNode
		for j := range 50 {
			d := putBlob(b, disk, bytes.Repeat(fmt.Appendf(nil, "%d/%d ", i, j), 100))
			files = append(files, &repb.FileNode{Name: fmt.Sprintf("f%02d", j), Digest: d.Proto(), IsExecutable: j%10 == 0})
		}
		d := putDir(b, disk, &repb.Directory{Files: files})
		dirs = append(dirs, &repb.DirectoryNode{Name: fmt.Sprintf("d%02d", i), Digest: d.Proto()})
	}
	tree, err := inputtree.Load(ctx, disk, digest.SHA256, putDir(b, disk, &repb.Directory{Directories: dirs}))
	if err != nil {
		b.Fatal(err)
	}
	scratch := b.TempDir()
	cache, err := filecache.New(filepath.Join(scratch, "cache"), disk, filecache.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(scratch, "action")
	for b.Loop() {
		b.StopTimer()
		if err := os.RemoveAll(dir); err != nil {
			b.Fatal(err)
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := inputtree.Stage(ctx, tree, cache, dir); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if fi, err := os.Stat(filepath.Join(dir, "d19", "f40")); err != nil || fi.Mode()&0o100 == 0 {
		b.Fatalf("staged d19/f40: %v, mode %v; want an executable file", err, fi)
	}
}
