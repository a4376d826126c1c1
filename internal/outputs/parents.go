package outputs

import (
	"errors"
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"

	"github.com/hearth-build/hearth/internal/fsutil"
)

// CreateParents creates, beneath inputRoot, the directories leading up to
// every output cmd asks for (but not output directories themselves), as
// REAPI requires a worker to do before running the command. Like Collect it
// never follows a symlink: a symlink or a file where a parent directory
// should be is an error wrapping ErrUnexpectedType. A malformed Command is an
// error wrapping ErrInvalid.
func CreateParents(inputRoot string, cmd *repb.Command) error {
	return CreateParentsWith(inputRoot, cmd, nil)
}

// CreateParentsWith is CreateParents renaming a directory from spares into
// place (on the same file system) where one is missing: on some volumes a
// mkdir costs a few hundred µs of system time, and a warm worker's request
// usually needs new output directories (bin/<package>) on its critical path.
func CreateParentsWith(inputRoot string, cmd *repb.Command, spares *fsutil.SpareDirs) error {
	outs, _, err := plan(cmd)
	if err != nil {
		return err
	}
	rootfd, err := unix.Open(inputRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("outputs: open input root %q: %w", inputRoot, err)
	}
	defer unix.Close(rootfd)
	done := map[string]bool{"": true}
	for _, o := range outs {
		if o.rel == "" {
			continue
		}
		parent, _ := splitRel(o.rel)
		if done[parent] {
			continue
		}
		if err := mkdirBeneath(rootfd, parent, spares); err != nil {
			return fmt.Errorf("outputs: create parent directories of output %q: %w", o.name, err)
		}
		for p := parent; p != "" && !done[p]; p, _ = splitRel(p) {
			done[p] = true
		}
	}
	return nil
}

// makeDirAt makes the directory name in dirfd with mode 0755: a spare
// renamed into place, else a mkdir (either answers EEXIST when something
// is in the way).
func makeDirAt(dirfd int, name string, spares *fsutil.SpareDirs) error {
	if placed, err := spares.PlaceAt(dirfd, name); placed || err != nil {
		return err
	}
	return unix.Mkdirat(dirfd, name, 0o755)
}

// mkdirBeneath creates rel and its missing ancestors beneath rootfd, one
// component at a time, refusing to pass through a symlink. An existing
// directory is opened without a mkdir; a missing one is a spare renamed
// into place when spares has one.
func mkdirBeneath(rootfd int, rel string, spares *fsutil.SpareDirs) error {
	cur := rootfd
	defer func() {
		if cur != rootfd {
			unix.Close(cur)
		}
	}()
	walked := ""
	for seg := range strings.SplitSeq(rel, "/") {
		walked = joinRel(walked, seg)
		const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		fd, err := unix.Openat(cur, seg, dirFlags, 0)
		if errors.Is(err, unix.ENOENT) {
			if err := makeDirAt(cur, seg, spares); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("mkdir %q: %w", walked, err)
			}
			fd, err = unix.Openat(cur, seg, dirFlags, 0)
		}
		if err != nil {
			if st, serr := lstatAt(cur, seg); serr == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return fmt.Errorf("%w: %q is a %s, not a directory", ErrUnexpectedType, walked, typeName(st.Mode))
			}
			return fmt.Errorf("open %q: %w", walked, err)
		}
		if cur != rootfd {
			unix.Close(cur)
		}
		cur = fd
	}
	return nil
}
