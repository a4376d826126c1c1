// Package outputs owns the capture of an action's outputs: it finds the
// outputs a Command asks for beneath the input root, hashes them, uploads
// every blob the CAS lacks, and describes them in an ActionResult exactly as
// REAPI v2 prescribes (output_files, output_directories as Tree digests and
// optionally Directory hierarchies, output_symlinks and their deprecated v2.0
// twins). It also uploads stdout and stderr.
//
// Security: the action that produced the outputs is untrusted. Output paths
// are validated lexically (ErrInvalid), and opened relative to the input
// root without following a symlink in any component. An output that is
// itself a symlink is reported as a symlink and never followed, wherever it
// points. A symlink in a parent component of an output (say "out -> /etc"
// with output "out/passwd") makes Collect fail with ErrUnexpectedType rather
// than silently drop the output, so the user learns why it is missing.
package outputs

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// ErrInvalid is wrapped by every error about a malformed Command: a bad
// output path or working directory, an unsupported output node property.
// The service edge maps it to INVALID_ARGUMENT.
var ErrInvalid = errors.New("invalid output request")

// ErrUnexpectedType is wrapped when an output exists but is of a kind the
// Command rules out: a legacy output file that is a directory (or a symlink
// resolving to one), a legacy output directory that is a file, an output
// that is a device, pipe or socket, or an output beneath a symlinked parent
// directory. REAPI maps this to FAILED_PRECONDITION.
var ErrUnexpectedType = errors.New("output has an unexpected type")

// ErrAbsoluteSymlink is wrapped when an action produced an output symlink
// (or a symlink inside an output directory) with an absolute target. Hearth
// advertises symlink_absolute_path_strategy DISALLOWED, for which REAPI
// prescribes FAILED_PRECONDITION.
var ErrAbsoluteSymlink = errors.New("output symlink has an absolute target")

func checkSymlinkTarget(name, target string) error {
	if strings.HasPrefix(target, "/") {
		return fmt.Errorf("%w: %q points to %q (this server does not allow absolute symlink targets)", ErrAbsoluteSymlink, name, target)
	}
	return nil
}

// Collect finds the outputs cmd asks for beneath inputRoot (paths are
// relative to cmd's working_directory, itself relative to inputRoot),
// uploads their blobs to store with digest function fn, and returns an
// ActionResult with only the output fields set. A requested output that does
// not exist is simply absent from the result.
//
// With output_paths (v2.1+) each output is whatever is found: a file, a
// directory or a symlink (output_symlinks). With the legacy output_files and
// output_directories, the kind is checked and symlinks go to the deprecated
// output_file_symlinks and output_directory_symlinks fields, which is what a
// v2.0 client reads; output_symlinks stays empty, as the spec says.
//
// Every output directory gets a tree_digest (a topologically sorted Tree,
// children deduplicated, so equal trees give equal digests); with
// output_directory_format DIRECTORY_ONLY or TREE_AND_DIRECTORY it also gets a
// root_directory_digest, with every Directory uploaded (a superset of
// DIRECTORY_ONLY, which REAPI allows). Devices, pipes and sockets inside an
// output directory cannot be represented and are left out.
func Collect(ctx context.Context, store cas.Store, fn digest.Function, inputRoot string, cmd *repb.Command) (*repb.ActionResult, error) {
	fn, err := digest.Resolve(fn)
	if err != nil {
		return nil, err
	}
	outs, pr, err := plan(cmd)
	if err != nil {
		return nil, err
	}
	rootfd, err := unix.Open(inputRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("outputs: open input root %q: %w", inputRoot, err)
	}
	defer unix.Close(rootfd)

	c := &collector{
		ctx:    ctx,
		fn:     fn,
		rootfd: rootfd,
		props:  pr,
		blobs:  newBlobSet(),
	}
	c.hashing = newHashPool(ctx, fn, pr, runtime.GOMAXPROCS(0))
	found, err := c.findAll(outs)
	if werr := c.hashing.wait(); err == nil {
		err = werr
	}
	if err != nil {
		return nil, err
	}
	for _, q := range c.files {
		c.blobs.addFile(q.d, q.rel)
	}
	format := cmd.GetOutputDirectoryFormat()
	withDirs := format == repb.Command_DIRECTORY_ONLY || format == repb.Command_TREE_AND_DIRECTORY
	res := &repb.ActionResult{}
	for _, f := range found {
		switch {
		case f.file != nil:
			res.OutputFiles = append(res.OutputFiles, &repb.OutputFile{
				Path:           f.out.name,
				Digest:         f.file.Digest,
				IsExecutable:   f.file.IsExecutable,
				NodeProperties: f.file.NodeProperties,
			})
		case f.dir != nil:
			od, err := c.describeDir(f.out.name, f.dir, withDirs)
			if err != nil {
				return nil, err
			}
			res.OutputDirectories = append(res.OutputDirectories, od)
		case f.symlink != nil:
			switch f.out.kind {
			case kindAny:
				res.OutputSymlinks = append(res.OutputSymlinks, f.symlink)
			case kindFile:
				res.OutputFileSymlinks = append(res.OutputFileSymlinks, f.symlink)
			case kindDir:
				res.OutputDirectorySymlinks = append(res.OutputDirectorySymlinks, f.symlink)
			}
		}
	}
	if err := c.upload(ctx, store); err != nil {
		return nil, err
	}
	return res, nil
}

// collector holds the state of one Collect call.
type collector struct {
	ctx     context.Context
	fn      digest.Function
	rootfd  int
	props   props
	hashing *hashPool
	files   []*queuedFile // every file handed to hashing, for upload
	blobs   *blobSet
}

// found is one output that exists; exactly one of file, dir, symlink is set.
// file's digest is filled by the hash pool, so it is read only after
// hashing.wait.
type found struct {
	out     output
	file    *repb.FileNode
	dir     *dirNode
	symlink *repb.OutputSymlink
}

// findAll looks up every output, queueing files for hashing.
func (c *collector) findAll(outs []output) ([]found, error) {
	var all []found
	for _, o := range outs {
		if err := c.ctx.Err(); err != nil {
			return nil, err
		}
		f, ok, err := c.find(o)
		if err != nil {
			return nil, err
		}
		if ok {
			all = append(all, f)
		}
	}
	return all, nil
}

// find looks up one output. ok is false when it does not exist.
func (c *collector) find(o output) (f found, ok bool, err error) {
	f.out = o
	if o.rel == "" {
		// The input root itself (empty working directory and path).
		dir, err := c.walkDir(c.rootfd, ".", "")
		f.dir = dir
		return f, err == nil, err
	}
	parentRel, base := splitRel(o.rel)
	parentfd, err := openBeneath(c.rootfd, parentRel, unix.O_RDONLY|unix.O_DIRECTORY)
	switch {
	case err == nil:
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		return f, false, nil // a parent is missing or is not a directory
	case errors.Is(err, errSymlinkInPath):
		return f, false, fmt.Errorf("%w: output %q: a parent directory is a symbolic link, which Hearth does not follow", ErrUnexpectedType, o.name)
	default:
		return f, false, fmt.Errorf("outputs: output %q: open parent directory: %w", o.name, err)
	}
	defer unix.Close(parentfd)
	st, err := lstatAt(parentfd, base)
	if errors.Is(err, unix.ENOENT) {
		return f, false, nil
	}
	if err != nil {
		return f, false, fmt.Errorf("outputs: output %q: %w", o.name, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if o.kind == kindDir {
			return f, false, fmt.Errorf("%w: output directory %q is a regular file", ErrUnexpectedType, o.name)
		}
		f.file, err = c.queueFile(parentfd, base, o.rel)
		return f, err == nil, err
	case unix.S_IFDIR:
		if o.kind == kindFile {
			return f, false, fmt.Errorf("%w: output file %q is a directory", ErrUnexpectedType, o.name)
		}
		f.dir, err = c.walkDir(parentfd, base, o.rel)
		return f, err == nil, err
	case unix.S_IFLNK:
		f.symlink, err = c.outputSymlink(parentfd, base, o)
		return f, err == nil, err
	default:
		return f, false, fmt.Errorf("%w: output %q is a %s", ErrUnexpectedType, o.name, typeName(st.Mode))
	}
}

// outputSymlink describes the output o, a symlink named base in parentfd,
// without following it. For the legacy fields REAPI requires the target to
// be of the declared kind; that is checked when the target can be resolved
// without leaving the input root, and a link that cannot (dangling, absolute,
// pointing outside) is accepted as it is.
func (c *collector) outputSymlink(parentfd int, base string, o output) (*repb.OutputSymlink, error) {
	target, err := readlinkAt(parentfd, base)
	if err != nil {
		return nil, fmt.Errorf("outputs: output %q: read symlink: %w", o.name, err)
	}
	if err := checkSymlinkTarget(o.name, target); err != nil {
		return nil, err
	}
	if o.kind != kindAny {
		if mode, ok := resolvedType(c.rootfd, o.rel); ok {
			if o.kind == kindFile && mode != unix.S_IFREG {
				return nil, fmt.Errorf("%w: output file %q is a symbolic link to a %s", ErrUnexpectedType, o.name, typeName(mode))
			}
			if o.kind == kindDir && mode != unix.S_IFDIR {
				return nil, fmt.Errorf("%w: output directory %q is a symbolic link to a %s", ErrUnexpectedType, o.name, typeName(mode))
			}
		}
	}
	sl := &repb.OutputSymlink{Path: o.name, Target: target}
	if c.props.any() {
		st, err := lstatAt(parentfd, base)
		if err != nil {
			return nil, fmt.Errorf("outputs: output %q: %w", o.name, err)
		}
		sl.NodeProperties = nodeProperties(c.props, &st)
	}
	return sl, nil
}
