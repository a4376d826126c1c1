package outputs

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Everything below opens paths relative to a directory file descriptor and
// never follows a symlink in any component, so that an action which leaves
// "out -> /etc" behind cannot make Hearth read /etc/passwd as "out/passwd".
// openat2 with RESOLVE_NO_SYMLINKS does that in one system call; where it is
// unavailable (Linux < 5.6, or seccomp filters that refuse it) the path is
// walked one component at a time with O_NOFOLLOW.

// errSymlinkInPath is returned by openBeneath when a component of the path
// is a symlink (the kernel's ELOOP, made explicit for the fallback walk).
var errSymlinkInPath = errors.New("a path component is a symbolic link")

// noOpenat2 is set once openat2 turned out to be unavailable.
var noOpenat2 atomic.Bool

// openBeneath opens rel, a validated relative path ("" means dirfd itself),
// beneath dirfd with flags, following no symlink at all. A symlink in any
// component yields errSymlinkInPath; other errors are the kernel's errno
// (ENOENT, ENOTDIR, ...).
func openBeneath(dirfd int, rel string, flags int) (int, error) {
	if rel == "" {
		rel = "."
	}
	flags |= unix.O_CLOEXEC
	if !noOpenat2.Load() {
		// No O_NOFOLLOW here: with it a trailing symlink opened with
		// O_DIRECTORY fails with ENOTDIR, indistinguishable from a file;
		// without it RESOLVE_NO_SYMLINKS reports every symlink as ELOOP.
		fd, err := unix.Openat2(dirfd, rel, &unix.OpenHow{
			Flags:   uint64(flags),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		})
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
			// ENOSYS: kernel too old. EPERM: a seccomp filter refusing
			// openat2 (open itself reports permission problems as EACCES).
			// The walk below gives the right answer either way.
			noOpenat2.Store(true)
		case errors.Is(err, unix.ELOOP):
			return -1, errSymlinkInPath
		default:
			return -1, err
		}
	}
	return walkBeneath(dirfd, rel, flags|unix.O_NOFOLLOW)
}

// walkBeneath is openBeneath without openat2.
func walkBeneath(dirfd int, rel string, flags int) (int, error) {
	cur := dirfd
	closeCur := func() {
		if cur != dirfd {
			unix.Close(cur)
		}
	}
	segs := strings.Split(rel, "/")
	for i, seg := range segs {
		f := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i == len(segs)-1 {
			f = flags
		}
		if seg == "." {
			// Only rel == "." reaches here (paths are canonical).
			fd, err := unix.Openat(cur, ".", f&^unix.O_NOFOLLOW, 0)
			closeCur()
			return fd, err
		}
		fd, err := unix.Openat(cur, seg, f, 0)
		if err != nil {
			// O_NOFOLLOW|O_DIRECTORY on a symlink fails with ENOTDIR, and
			// O_NOFOLLOW alone with ELOOP; tell symlinks apart explicitly.
			if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
				var st unix.Stat_t
				if unix.Fstatat(cur, seg, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
					err = errSymlinkInPath
				}
			}
			closeCur()
			return -1, err
		}
		closeCur()
		cur = fd
	}
	return cur, nil
}

// lstatAt stats name in dirfd without following a symlink.
func lstatAt(dirfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// readlinkAt returns the target of the symlink name in dirfd.
func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
		if size > 1<<20 {
			return "", fmt.Errorf("symlink %q: target longer than 1 MiB", name)
		}
	}
}

// resolvedType returns the file type (S_IFMT bits) that rel, a symlink
// beneath rootfd, resolves to, following symlinks only while they stay
// beneath rootfd. ok is false when that cannot be told without leaving the
// root: a dangling link, an absolute target, a target outside the root, or
// a kernel without openat2.
func resolvedType(rootfd int, rel string) (mode uint32, ok bool) {
	if noOpenat2.Load() {
		return 0, false
	}
	fd, err := unix.Openat2(rootfd, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0, false
	}
	return st.Mode & unix.S_IFMT, true
}

// typeName names a file type for error messages.
func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "named pipe"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("file of mode %#o", mode)
}
