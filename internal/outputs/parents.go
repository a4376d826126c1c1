package outputs

import (
	"errors"
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
)

// CreateParents creates, beneath inputRoot, the directories leading up to
// every output cmd asks for (but not output directories themselves), as
// REAPI requires a worker to do before running the command. Like Collect it
// never follows a symlink: a symlink or a file where a parent directory
// should be is an error wrapping ErrUnexpectedType. A malformed Command is an
// error wrapping ErrInvalid.
func CreateParents(inputRoot string, cmd *repb.Command) error {
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
		if err := mkdirBeneath(rootfd, parent); err != nil {
			return fmt.Errorf("outputs: create parent directories of output %q: %w", o.name, err)
		}
		for p := parent; p != "" && !done[p]; p, _ = splitRel(p) {
			done[p] = true
		}
	}
	return nil
}

// mkdirBeneath creates rel and its missing ancestors beneath rootfd, one
// component at a time, refusing to pass through a symlink.
func mkdirBeneath(rootfd int, rel string) error {
	cur := rootfd
	defer func() {
		if cur != rootfd {
			unix.Close(cur)
		}
	}()
	walked := ""
	for seg := range strings.SplitSeq(rel, "/") {
		walked = joinRel(walked, seg)
		if err := unix.Mkdirat(cur, seg, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %q: %w", walked, err)
		}
		fd, err := unix.Openat(cur, seg, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
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
