package actioncache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// maxCheckedTreeBytes bounds how large a Tree or Directory blob CheckComplete
// loads to look at the files inside. A Tree beyond it (an output directory of
// some hundred thousand files) is only checked for its own presence: reading it
// on every cache lookup would cost more than the rare miss it could prevent.
const maxCheckedTreeBytes = 64 << 20

// findMissingChunk is how many digests one FindMissing call checks.
const findMissingChunk = 10000

// NewCompletenessChecking wraps ac so that Get hands out a result only while
// every blob it references is in blobs (see CheckComplete); otherwise Get
// returns ErrNotFound and the client runs the action again. Put is unchanged.
//
// The CAS is shared by all instance names (blobs are content addressed, so one
// instance cannot alter what another reads), while results stay separate per
// instance.
func NewCompletenessChecking(ac Store, blobs cas.Store) Store {
	return &completenessChecking{ac: ac, blobs: blobs}
}

type completenessChecking struct {
	ac    Store
	blobs cas.Store
}

func (c *completenessChecking) Get(ctx context.Context, instance string, action digest.Digest) (*repb.ActionResult, error) {
	r, err := c.ac.Get(ctx, instance, action)
	if err != nil {
		return nil, err
	}
	if err := CheckComplete(ctx, c.blobs, action.Function, r); err != nil {
		return nil, fmt.Errorf("action %s: %w", action, err)
	}
	return r, nil
}

func (c *completenessChecking) Put(ctx context.Context, instance string, action digest.Digest, result *repb.ActionResult) error {
	return c.ac.Put(ctx, instance, action, result)
}

// CheckComplete returns nil if every blob r references is in blobs: output
// files, stdout and stderr, each output directory's Tree and the files inside
// it, and each root_directory_digest with every Directory and file below it.
// A missing blob, or one that should be a Tree or Directory and is not, makes
// the result unusable and is reported as ErrNotFound (wrapped). FindMissing
// also marks the blobs as used, which keeps them alive for the client that is
// about to fetch them.
func CheckComplete(ctx context.Context, blobs cas.Store, fn digest.Function, r *repb.ActionResult) error {
	c := &completeness{ctx: ctx, blobs: blobs, fn: fn, seen: map[digest.Key]bool{}}
	for _, f := range r.GetOutputFiles() {
		if err := c.add(f.GetDigest(), "output file "+f.GetPath()); err != nil {
			return err
		}
	}
	if r.GetStdoutDigest() != nil {
		if err := c.add(r.GetStdoutDigest(), "stdout"); err != nil {
			return err
		}
	}
	if r.GetStderrDigest() != nil {
		if err := c.add(r.GetStderrDigest(), "stderr"); err != nil {
			return err
		}
	}
	var trees, roots []digest.Digest
	for _, d := range r.GetOutputDirectories() {
		if d.GetTreeDigest() != nil {
			t, err := c.parse(d.GetTreeDigest(), "tree of output directory "+d.GetPath())
			if err != nil {
				return err
			}
			trees = append(trees, t)
		}
		if d.GetRootDirectoryDigest() != nil {
			rd, err := c.parse(d.GetRootDirectoryDigest(), "root directory of output directory "+d.GetPath())
			if err != nil {
				return err
			}
			roots = append(roots, rd)
		}
	}
	// Trees and roots themselves are checked with the files first: if any is
	// gone there is no point loading the others.
	for _, d := range append(append([]digest.Digest(nil), trees...), roots...) {
		c.addDigest(d)
	}
	if err := c.flush(); err != nil {
		return err
	}
	for _, t := range trees {
		if err := c.addTreeFiles(t); err != nil {
			return err
		}
	}
	for _, rd := range roots {
		if err := c.addDirectoryHierarchy(rd); err != nil {
			return err
		}
	}
	return c.flush()
}

// completeness accumulates digests to check and checks them in chunks.
type completeness struct {
	ctx     context.Context
	blobs   cas.Store
	fn      digest.Function
	seen    map[digest.Key]bool
	pending []digest.Digest
}

func (c *completeness) parse(pd *repb.Digest, what string) (digest.Digest, error) {
	d, err := digest.FromProto(c.fn, pd)
	if err != nil {
		// Results are validated when clients store them, so this is a result
		// written by a buggy producer: unusable, not a server failure.
		slog.Warn("action result references a malformed digest", "what", what, "err", err)
		return digest.Digest{}, fmt.Errorf("%w: %s has a malformed digest: %v", ErrNotFound, what, err)
	}
	return d, nil
}

func (c *completeness) add(pd *repb.Digest, what string) error {
	d, err := c.parse(pd, what)
	if err != nil {
		return err
	}
	c.addDigest(d)
	return nil
}

func (c *completeness) addDigest(d digest.Digest) {
	if d.IsEmpty() || c.seen[d.Key()] {
		return
	}
	c.seen[d.Key()] = true
	c.pending = append(c.pending, d)
}

// flush checks every pending digest.
func (c *completeness) flush() error {
	for len(c.pending) > 0 {
		n := min(len(c.pending), findMissingChunk)
		missing, err := c.blobs.FindMissing(c.ctx, c.pending[:n])
		if err != nil {
			return fmt.Errorf("checking the result's blobs: %w", err)
		}
		if len(missing) > 0 {
			return fmt.Errorf("%w: result references %d blob(s) no longer in the CAS, e.g. %s", ErrNotFound, len(missing), missing[0])
		}
		c.pending = c.pending[n:]
	}
	return nil
}

// load reads a Tree or Directory blob, or returns ok=false if it is too large
// to inspect (see maxCheckedTreeBytes).
func (c *completeness) load(d digest.Digest, m proto.Message, what string) (ok bool, err error) {
	if d.Size > maxCheckedTreeBytes {
		return false, nil
	}
	if d.IsEmpty() {
		// An empty Directory (or Tree) encodes to zero bytes.
		return true, nil
	}
	rc, err := c.blobs.Open(c.ctx, d, 0)
	if errors.Is(err, cas.ErrNotFound) {
		return false, fmt.Errorf("%w: %s %s is no longer in the CAS", ErrNotFound, what, d)
	}
	if err != nil {
		return false, fmt.Errorf("reading %s %s: %w", what, d, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, d.Size+1))
	if err != nil {
		return false, fmt.Errorf("reading %s %s: %w", what, d, err)
	}
	if int64(len(data)) != d.Size {
		return false, fmt.Errorf("reading %s %s: store returned %d bytes", what, d, len(data))
	}
	if err := proto.Unmarshal(data, m); err != nil {
		slog.Warn("action result references a blob that does not decode", "what", what, "digest", d.String(), "err", err)
		return false, fmt.Errorf("%w: %s %s does not decode: %v", ErrNotFound, what, d, err)
	}
	return true, nil
}

func (c *completeness) addTreeFiles(t digest.Digest) error {
	tree := &repb.Tree{}
	ok, err := c.load(t, tree, "output tree")
	if err != nil || !ok {
		return err
	}
	if err := c.addDirectoryFiles(tree.GetRoot(), "root of tree "+t.String()); err != nil {
		return err
	}
	for i, child := range tree.GetChildren() {
		if err := c.addDirectoryFiles(child, fmt.Sprintf("child %d of tree %s", i, t)); err != nil {
			return err
		}
	}
	return c.flush()
}

func (c *completeness) addDirectoryFiles(dir *repb.Directory, where string) error {
	for _, f := range dir.GetFiles() {
		if err := c.add(f.GetDigest(), fmt.Sprintf("file %q in %s", f.GetName(), where)); err != nil {
			return err
		}
	}
	return nil
}

// addDirectoryHierarchy walks the separately stored Directory protos below
// root (the DIRECTORY_ONLY output format), requiring each to be present.
func (c *completeness) addDirectoryHierarchy(root digest.Digest) error {
	visited := map[digest.Key]bool{root.Key(): true}
	queue := []digest.Digest{root}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		dir := &repb.Directory{}
		ok, err := c.load(d, dir, "output directory")
		if err != nil {
			return err
		}
		if !ok {
			c.addDigest(d) // too large to walk: at least require it
			continue
		}
		if err := c.addDirectoryFiles(dir, "directory "+d.String()); err != nil {
			return err
		}
		for _, sub := range dir.GetDirectories() {
			sd, err := c.parse(sub.GetDigest(), fmt.Sprintf("subdirectory %q of %s", sub.GetName(), d))
			if err != nil {
				return err
			}
			if !visited[sd.Key()] {
				visited[sd.Key()] = true
				queue = append(queue, sd)
			}
		}
	}
	return c.flush()
}
