package outputs

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// quiet discards the disk store's startup logs.
var quiet = slog.New(slog.DiscardHandler)

// countingStore is a real store that counts the blobs written to it, so
// tests can tell which blobs Collect uploaded.
type countingStore struct {
	cas.Store
	creates atomic.Int64
}

func (s *countingStore) Create(ctx context.Context, d digest.Digest) (cas.Writer, error) {
	s.creates.Add(1)
	return s.Store.Create(ctx, d)
}

// newStore returns a verifying disk store in a fresh directory, as a server
// runs it: a blob whose bytes do not match its digest fails the test.
func newStore(t *testing.T) *countingStore {
	t.Helper()
	disk, err := cas.NewDisk(filepath.Join(t.TempDir(), "cas"), cas.DiskOptions{Logger: quiet})
	if err != nil {
		t.Fatalf("cas.NewDisk: %v", err)
	}
	return &countingStore{Store: cas.NewVerifying(disk)}
}

// layout creates files beneath root. Keys are slash paths; values:
//
//	"dir/"          -> the value is ignored, key ends in '/': a directory
//	"->target"      -> a symlink to target
//	"x:content"     -> an executable file
//	anything else   -> a regular file with that content
func layout(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, v := range files {
		full := filepath.Join(root, filepath.FromSlash(strings.TrimSuffix(p, "/")))
		if strings.HasSuffix(p, "/") {
			mkdir(t, full)
			continue
		}
		mkdir(t, filepath.Dir(full))
		switch {
		case strings.HasPrefix(v, "->"):
			if err := os.Symlink(v[2:], full); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(v, "x:"):
			writeFile(t, full, v[2:], 0o755)
		default:
			writeFile(t, full, v, 0o644)
		}
	}
}

func mkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
}

// get reads a whole blob, failing the test if it is absent.
func get(t *testing.T, s cas.Store, d *repb.Digest, fn digest.Function) []byte {
	t.Helper()
	dg, err := digest.FromProto(fn, d)
	if err != nil {
		t.Fatalf("bad digest %v: %v", d, err)
	}
	data, err := cas.Get(context.Background(), s, dg)
	if err != nil {
		t.Fatalf("blob %s: %v", dg, err)
	}
	return data
}

// getTree reads and parses the Tree blob d.
func getTree(t *testing.T, s cas.Store, d *repb.Digest, fn digest.Function) *repb.Tree {
	t.Helper()
	tree := &repb.Tree{}
	if err := proto.Unmarshal(get(t, s, d, fn), tree); err != nil {
		t.Fatalf("Tree %v: %v", d, err)
	}
	return tree
}

// dirDigest is the digest of a Directory in canonical encoding.
func dirDigest(t *testing.T, fn digest.Function, d *repb.Directory) digest.Digest {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return digest.Compute(fn, data)
}

// checkTopological checks what is_topologically_sorted promises: children
// stored once, each referenced by a directory stored before it, and every
// referenced directory present.
func checkTopological(t *testing.T, fn digest.Function, tree *repb.Tree) {
	t.Helper()
	index := map[digest.Key]int{}
	for i, c := range tree.GetChildren() {
		k := dirDigest(t, fn, c).Key()
		if _, dup := index[k]; dup {
			t.Fatalf("child %d stored twice in Tree", i)
		}
		index[k] = i
	}
	referenced := map[int]bool{}
	check := func(parent int, d *repb.Directory) {
		for _, n := range d.GetDirectories() {
			dg, err := digest.FromProto(fn, n.GetDigest())
			if err != nil {
				t.Fatal(err)
			}
			i, ok := index[dg.Key()]
			if !ok {
				t.Fatalf("directory %q referenced but not in Tree", n.GetName())
			}
			if i <= parent {
				t.Fatalf("child %q (index %d) stored before its parent (index %d)", n.GetName(), i, parent)
			}
			referenced[i] = true
		}
	}
	check(-1, tree.GetRoot())
	for i, c := range tree.GetChildren() {
		check(i, c)
	}
	if len(referenced) != len(tree.GetChildren()) {
		t.Fatalf("%d children stored, %d referenced", len(tree.GetChildren()), len(referenced))
	}
}

// childByDigest finds the child Directory a DirectoryNode refers to.
func childByDigest(t *testing.T, fn digest.Function, tree *repb.Tree, n *repb.DirectoryNode) *repb.Directory {
	t.Helper()
	for _, c := range tree.GetChildren() {
		if dirDigest(t, fn, c).Hash == n.GetDigest().GetHash() {
			return c
		}
	}
	t.Fatalf("directory %q not in Tree", n.GetName())
	return nil
}

func time0(sec int64) time.Time { return time.Unix(sec, 0) }

func names[T interface{ GetName() string }](nodes []T) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.GetName())
	}
	return out
}
