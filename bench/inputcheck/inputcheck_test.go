package inputcheck

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
)

const fn = digest.SHA256

// Shape of the shared subtree (a toolchain) and of each action's own part.
const (
	toolchainDirs   = 50
	filesPerDir     = 40
	ownFilesPerRoot = 5
)

type fixture struct {
	store     cas.Store
	toolchain digest.Digest
	n         int
}

func put(b *testing.B, s cas.Store, data []byte) digest.Digest {
	d := digest.Compute(fn, data)
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
	return put(b, s, data)
}

// newFixture stores a toolchain of toolchainDirs × filesPerDir files on a
// real disk store, as `hearth serve` keeps its CAS.
func newFixture(b *testing.B) *fixture {
	disk, err := cas.NewDisk(b.TempDir(), cas.DiskOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	store := cas.NewVerifying(disk)
	top := &repb.Directory{}
	for i := range toolchainDirs {
		d := &repb.Directory{}
		for j := range filesPerDir {
			f := put(b, store, fmt.Appendf(nil, "toolchain file %d/%d", i, j))
			d.Files = append(d.Files, &repb.FileNode{Name: fmt.Sprintf("f%03d", j), Digest: f.Proto()})
		}
		top.Directories = append(top.Directories, &repb.DirectoryNode{Name: fmt.Sprintf("d%03d", i), Digest: putDir(b, store, d).Proto()})
	}
	return &fixture{store: store, toolchain: putDir(b, store, top)}
}

// nextRoot stores a new input root: the toolchain plus files of its own.
func (f *fixture) nextRoot(b *testing.B) digest.Digest {
	f.n++
	src := &repb.Directory{}
	for j := range ownFilesPerRoot {
		d := put(b, f.store, fmt.Appendf(nil, "source %d of action %d", j, f.n))
		src.Files = append(src.Files, &repb.FileNode{Name: fmt.Sprintf("s%d.c", j), Digest: d.Proto()})
	}
	return putDir(b, f.store, &repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "src", Digest: putDir(b, f.store, src).Proto()},
		{Name: "toolchain", Digest: f.toolchain.Proto()},
	}})
}

// BenchmarkExecuteInputCheck measures one check of a new input root that
// shares the toolchain with the previous actions.
func BenchmarkExecuteInputCheck(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b)
	run := func(b *testing.B, check func(root digest.Digest) error) {
		for b.Loop() {
			b.StopTimer()
			root := f.nextRoot(b)
			b.StartTimer()
			if err := check(root); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("load+probe whole tree (before)", func(b *testing.B) {
		run(b, func(root digest.Digest) error {
			tree, err := inputtree.Load(ctx, f.store, fn, root)
			if err != nil {
				return err
			}
			return tree.MissingFiles(ctx, f.store)
		})
	})
	b.Run("Checker, shared subtree remembered", func(b *testing.B) {
		c := inputtree.NewChecker(1<<16, 0)
		if err := c.Check(ctx, f.store, fn, f.nextRoot(b), ""); err != nil {
			b.Fatal(err)
		}
		run(b, func(root digest.Digest) error { return c.Check(ctx, f.store, fn, root, "") })
	})
	b.Run("Checker, nothing remembered", func(b *testing.B) {
		run(b, func(root digest.Digest) error {
			return inputtree.NewChecker(1<<16, 0).Check(ctx, f.store, fn, root, "")
		})
	})
}
