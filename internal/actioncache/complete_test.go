package actioncache

import (
	"context"
	"errors"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

func newCAS(t *testing.T) cas.Store {
	t.Helper()
	d, err := cas.NewDisk(t.TempDir(), cas.DiskOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cas.NewVerifying(d)
}

func put(t *testing.T, s cas.Store, fn digest.Function, data []byte) *repb.Digest {
	t.Helper()
	d := digest.Compute(fn, data)
	if err := cas.Put(context.Background(), s, d, data); err != nil {
		t.Fatal(err)
	}
	return d.Proto()
}

func putMessage(t *testing.T, s cas.Store, fn digest.Function, m proto.Message) *repb.Digest {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return put(t, s, fn, b)
}

// fullResult stores a result using every kind of reference: output file,
// stdout, stderr (empty, so never stored), a two-level Tree, and a Directory
// hierarchy with a file two levels down.
func fullResult(t *testing.T, s cas.Store, fn digest.Function) *repb.ActionResult {
	deep := put(t, s, fn, []byte("deep file"))
	sub := &repb.Directory{Files: []*repb.FileNode{{Name: "deep", Digest: deep}}}
	subDigest := putMessage(t, s, fn, sub)
	tree := &repb.Tree{
		Root:     &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: subDigest}}},
		Children: []*repb.Directory{sub},
	}
	root := putMessage(t, s, fn, &repb.Directory{
		Directories: []*repb.DirectoryNode{{Name: "sub", Digest: subDigest}, {Name: "empty", Digest: digest.Empty(fn).Proto()}},
	})
	return &repb.ActionResult{
		OutputFiles:       []*repb.OutputFile{{Path: "f", Digest: put(t, s, fn, []byte("file"))}},
		OutputDirectories: []*repb.OutputDirectory{{Path: "d", TreeDigest: putMessage(t, s, fn, tree), RootDirectoryDigest: root}},
		StdoutDigest:      put(t, s, fn, []byte("stdout")),
		StderrDigest:      digest.Empty(fn).Proto(),
	}
}

func TestCheckComplete(t *testing.T) {
	fn := digest.BLAKE3
	absent := digest.Compute(fn, []byte("absent")).Proto()
	for _, tc := range []struct {
		name     string
		mutate   func(t *testing.T, s cas.Store, r *repb.ActionResult)
		complete bool
	}{
		{"everything present", func(*testing.T, cas.Store, *repb.ActionResult) {}, true},
		{"empty result", func(_ *testing.T, _ cas.Store, r *repb.ActionResult) { proto.Reset(r) }, true},
		{"output file gone", func(_ *testing.T, _ cas.Store, r *repb.ActionResult) { r.OutputFiles[0].Digest = absent }, false},
		{"stdout gone", func(_ *testing.T, _ cas.Store, r *repb.ActionResult) { r.StdoutDigest = absent }, false},
		{"stderr gone", func(_ *testing.T, _ cas.Store, r *repb.ActionResult) { r.StderrDigest = absent }, false},
		{"tree gone", func(_ *testing.T, _ cas.Store, r *repb.ActionResult) { r.OutputDirectories[0].TreeDigest = absent }, false},
		{"root directory gone", func(_ *testing.T, _ cas.Store, r *repb.ActionResult) {
			r.OutputDirectories[0].RootDirectoryDigest = absent
		}, false},
		{"file in a tree child gone", func(t *testing.T, s cas.Store, r *repb.ActionResult) {
			r.OutputDirectories[0].TreeDigest = putMessage(t, s, fn, &repb.Tree{
				Root:     &repb.Directory{},
				Children: []*repb.Directory{{Files: []*repb.FileNode{{Name: "x", Digest: absent}}}},
			})
		}, false},
		{"file two levels below the root directory gone", func(t *testing.T, s cas.Store, r *repb.ActionResult) {
			sub := putMessage(t, s, fn, &repb.Directory{Files: []*repb.FileNode{{Name: "x", Digest: absent}}})
			mid := putMessage(t, s, fn, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: sub}}})
			r.OutputDirectories[0].RootDirectoryDigest = putMessage(t, s, fn, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "mid", Digest: mid}}})
		}, false},
		{"tree blob is not a Tree", func(t *testing.T, s cas.Store, r *repb.ActionResult) {
			r.OutputDirectories[0].TreeDigest = put(t, s, fn, []byte{0xff, 0xff})
		}, false},
		{"malformed digest stored", func(_ *testing.T, _ cas.Store, r *repb.ActionResult) {
			r.OutputFiles[0].Digest = &repb.Digest{Hash: "zz", SizeBytes: 1}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newCAS(t)
			r := fullResult(t, s, fn)
			tc.mutate(t, s, r)
			err := CheckComplete(context.Background(), s, fn, r)
			if tc.complete && err != nil {
				t.Fatalf("CheckComplete = %v, want nil", err)
			}
			if !tc.complete && !errors.Is(err, ErrNotFound) {
				t.Fatalf("CheckComplete = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestCompletenessCheckingStore(t *testing.T) {
	ctx := context.Background()
	s := newCAS(t)
	disk, err := NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ac := NewCompletenessChecking(disk, s)
	fn := digest.SHA256
	complete := digest.Compute(fn, []byte("complete action"))
	incomplete := digest.Compute(fn, []byte("incomplete action"))
	if err := ac.Put(ctx, "i", complete, fullResult(t, s, fn)); err != nil {
		t.Fatal(err)
	}
	gone := fullResult(t, s, fn)
	gone.StdoutDigest = digest.Compute(fn, []byte("never stored")).Proto()
	if err := ac.Put(ctx, "i", incomplete, gone); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.Get(ctx, "i", complete); err != nil {
		t.Errorf("complete result: %v", err)
	}
	if _, err := ac.Get(ctx, "i", incomplete); !errors.Is(err, ErrNotFound) {
		t.Errorf("incomplete result: %v, want ErrNotFound", err)
	}
	// The inner store still has it: the wrapper hides, it does not delete.
	if _, err := disk.Get(ctx, "i", incomplete); err != nil {
		t.Errorf("inner store lost the incomplete result: %v", err)
	}
	if _, err := ac.Get(ctx, "other", complete); !errors.Is(err, ErrNotFound) {
		t.Errorf("other instance: %v, want ErrNotFound", err)
	}
}
