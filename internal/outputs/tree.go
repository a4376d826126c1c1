package outputs

import (
	"errors"
	"fmt"
	"slices"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
)

// dirNode is a directory found beneath an output directory, before its
// Directory proto can be built (its files' digests are still being
// computed). Entries are appended in name order, so the Directory built from
// it is canonical.
type dirNode struct {
	props    *repb.NodeProperties
	files    []*repb.FileNode
	symlinks []*repb.SymlinkNode
	dirs     []childDir
}

type childDir struct {
	name string
	node *dirNode
}

// walkDir reads the directory name in parentfd (rel is its path from the
// input root) and everything beneath it, queueing its files for hashing.
// Symlinks are recorded, never followed; devices, pipes and sockets are left
// out because a Directory cannot represent them.
func (c *collector) walkDir(parentfd int, name, rel string) (*dirNode, error) {
	if err := c.hashing.failed(); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(parentfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("outputs: open directory %q: %w", rel, err)
	}
	defer unix.Close(fd)
	n := &dirNode{}
	if c.props.any() {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, fmt.Errorf("outputs: stat directory %q: %w", rel, err)
		}
		n.props = nodeProperties(c.props, &st)
	}
	names, err := readDirNames(fd)
	if err != nil {
		return nil, fmt.Errorf("outputs: read directory %q: %w", rel, err)
	}
	// Canonical Directory order is by UTF-8 bytes, which is Go's string
	// order.
	slices.Sort(names)
	for _, entry := range names {
		childRel := joinRel(rel, entry)
		st, err := lstatAt(fd, entry)
		if errors.Is(err, unix.ENOENT) {
			continue // removed meanwhile by a straggling process
		}
		if err != nil {
			return nil, fmt.Errorf("outputs: stat %q: %w", childRel, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			fn, err := c.queueFile(fd, entry, childRel)
			if err != nil {
				return nil, err
			}
			fn.Name = entry
			n.files = append(n.files, fn)
		case unix.S_IFDIR:
			child, err := c.walkDir(fd, entry, childRel)
			if err != nil {
				return nil, err
			}
			n.dirs = append(n.dirs, childDir{name: entry, node: child})
		case unix.S_IFLNK:
			target, err := readlinkAt(fd, entry)
			if err != nil {
				return nil, fmt.Errorf("outputs: read symlink %q: %w", childRel, err)
			}
			if err := checkSymlinkTarget(childRel, target); err != nil {
				return nil, err
			}
			sl := &repb.SymlinkNode{Name: entry, Target: target}
			if c.props.any() {
				sl.NodeProperties = nodeProperties(c.props, &st)
			}
			n.symlinks = append(n.symlinks, sl)
		}
	}
	return n, nil
}

// readDirNames lists the directory fd, without "." and "..".
func readDirNames(fd int) ([]string, error) {
	buf := make([]byte, 32<<10)
	var names []string
	for {
		n, err := unix.ReadDirent(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}

// queueFile opens the regular file name in dirfd and hands it to the hash
// pool, which fills the returned FileNode's digest, is_executable and node
// properties.
func (c *collector) queueFile(dirfd int, name, rel string) (*repb.FileNode, error) {
	// O_NONBLOCK: if the file was swapped for a named pipe since it was
	// stat'ed, opening must not hang; the hash pool rejects non-regular files.
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("outputs: open %q: %w", rel, err)
	}
	q := &queuedFile{rel: rel, node: &repb.FileNode{}}
	if err := c.hashing.submit(fd, q); err != nil {
		return nil, err
	}
	c.files = append(c.files, q)
	return q.node, nil
}

// encodedDir is a Directory proto in its canonical encoding.
type encodedDir struct {
	digest digest.Digest
	data   []byte
}

// treeBuilder encodes the Directory protos of one output directory,
// deduplicated, in post-order (every directory after all its children).
type treeBuilder struct {
	fn    digest.Function
	seen  map[digest.Key]bool
	order []encodedDir
}

func (b *treeBuilder) encode(n *dirNode) (digest.Digest, error) {
	dir := &repb.Directory{Files: n.files, Symlinks: n.symlinks, NodeProperties: n.props}
	for _, child := range n.dirs {
		d, err := b.encode(child.node)
		if err != nil {
			return digest.Digest{}, err
		}
		dir.Directories = append(dir.Directories, &repb.DirectoryNode{Name: child.name, Digest: d.Proto()})
	}
	// Deterministic marshaling writes fields in field-number order, which
	// is the canonical encoding REAPI hashes.
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(dir)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("outputs: encode directory: %w", err)
	}
	d := digest.Compute(b.fn, data)
	if !b.seen[d.Key()] {
		b.seen[d.Key()] = true
		b.order = append(b.order, encodedDir{digest: d, data: data})
	}
	return d, nil
}

// describeDir builds the Tree (and, if withDirs, the Directory hierarchy) of
// the output directory root, registers the blobs to upload, and returns the
// OutputDirectory named name.
//
// The Tree is written by hand as REAPI recommends for topologically sorted
// trees: the root as field 1, then each distinct child Directory as field 2,
// in reverse post-order, which puts every parent before all of its children.
// Children are visited in name order, so equal trees give equal digests.
func (c *collector) describeDir(name string, root *dirNode, withDirs bool) (*repb.OutputDirectory, error) {
	b := &treeBuilder{fn: c.fn, seen: map[digest.Key]bool{}}
	rootDigest, err := b.encode(root)
	if err != nil {
		return nil, err
	}
	// The root is last in post-order and appears nowhere else: a directory
	// cannot equal one of its own descendants.
	rootEnc := b.order[len(b.order)-1]
	size := len(rootEnc.data) + 16
	for _, e := range b.order[:len(b.order)-1] {
		size += len(e.data) + 16
	}
	tree := make([]byte, 0, size)
	tree = protowire.AppendTag(tree, 1, protowire.BytesType)
	tree = protowire.AppendBytes(tree, rootEnc.data)
	for i := len(b.order) - 2; i >= 0; i-- {
		tree = protowire.AppendTag(tree, 2, protowire.BytesType)
		tree = protowire.AppendBytes(tree, b.order[i].data)
	}
	treeDigest := digest.Compute(c.fn, tree)
	c.blobs.addBytes(treeDigest, tree)
	od := &repb.OutputDirectory{
		Path:                  name,
		TreeDigest:            treeDigest.Proto(),
		IsTopologicallySorted: true,
	}
	if withDirs {
		for _, e := range b.order {
			c.blobs.addBytes(e.digest, e.data)
		}
		od.RootDirectoryDigest = rootDigest.Proto()
	}
	return od, nil
}
