package inputtree

import (
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
)

// directory is a fetched Directory proto that passed validation, with its
// digests and properties parsed once however often the tree references it.
type directory struct {
	msg        *repb.Directory
	props      *NodeProperties
	fileDigest []digest.Digest
	fileProps  []*NodeProperties
	subDigest  []digest.Digest
	symProps   []*NodeProperties
}

// validateDirectory checks one Directory found at path (used in messages
// only; a Directory referenced from several places is validated once).
//
// Order: REAPI says each of files, directories and symlinks MUST be sorted by
// name. Hearth enforces it: Bazel, Buck2 and the other clients sort, checking
// costs one comparison per entry, and an unsorted Directory is not canonical,
// so the digest a client computed for it differs from the one any other
// party would compute for the same tree (cache misses that are hard to
// debug). Strict order also finds duplicates within a kind for free. Node
// properties must be sorted by name too, for the same reason (REAPI lists it
// among the rules of canonical form); a name may repeat with other values.
func validateDirectory(fn digest.Function, path string, msg *repb.Directory) (*directory, error) {
	d := &directory{
		msg:        msg,
		fileDigest: make([]digest.Digest, len(msg.Files)),
		fileProps:  make([]*NodeProperties, len(msg.Files)),
		subDigest:  make([]digest.Digest, len(msg.Directories)),
		symProps:   make([]*NodeProperties, len(msg.Symlinks)),
	}
	var err error
	if d.props, err = parseProperties(path, msg.NodeProperties); err != nil {
		return nil, err
	}
	for i, f := range msg.Files {
		p := joinPath(path, f.Name)
		if err := checkEntryName(path, "file", msg.Files, i, (*repb.FileNode).GetName); err != nil {
			return nil, err
		}
		if d.fileDigest[i], err = digest.FromProto(fn, f.Digest); err != nil {
			return nil, fmt.Errorf("%w: file %q: %w", ErrInvalid, p, err)
		}
		if d.fileProps[i], err = parseProperties(p, f.NodeProperties); err != nil {
			return nil, err
		}
	}
	for i, s := range msg.Directories {
		if err := checkEntryName(path, "directory", msg.Directories, i, (*repb.DirectoryNode).GetName); err != nil {
			return nil, err
		}
		if d.subDigest[i], err = digest.FromProto(fn, s.Digest); err != nil {
			return nil, fmt.Errorf("%w: directory %q: %w", ErrInvalid, joinPath(path, s.Name), err)
		}
	}
	for i, s := range msg.Symlinks {
		p := joinPath(path, s.Name)
		if err := checkEntryName(path, "symlink", msg.Symlinks, i, (*repb.SymlinkNode).GetName); err != nil {
			return nil, err
		}
		if err := checkTargetForm(s.Target); err != nil {
			return nil, fmt.Errorf("%w: symlink %q: %s", ErrInvalid, p, err)
		}
		if d.symProps[i], err = parseProperties(p, s.NodeProperties); err != nil {
			return nil, err
		}
	}
	// Names must be unique across kinds too: a file and a directory of one
	// name cannot both be created.
	if n, ok := commonName(msg.Files, (*repb.FileNode).GetName, msg.Directories, (*repb.DirectoryNode).GetName); ok {
		return nil, fmt.Errorf("%w: %q is both a file and a directory", ErrInvalid, joinPath(path, n))
	}
	if n, ok := commonName(msg.Files, (*repb.FileNode).GetName, msg.Symlinks, (*repb.SymlinkNode).GetName); ok {
		return nil, fmt.Errorf("%w: %q is both a file and a symlink", ErrInvalid, joinPath(path, n))
	}
	if n, ok := commonName(msg.Directories, (*repb.DirectoryNode).GetName, msg.Symlinks, (*repb.SymlinkNode).GetName); ok {
		return nil, fmt.Errorf("%w: %q is both a directory and a symlink", ErrInvalid, joinPath(path, n))
	}
	return d, nil
}

// checkEntryName checks that entry i of a directory's list of one kind has a
// valid name, strictly after the previous entry's.
func checkEntryName[T any](dir, kind string, list []T, i int, name func(T) string) error {
	n := name(list[i])
	if why := nameProblem(n); why != "" {
		return fmt.Errorf("%w: %s %q: %s", ErrInvalid, kind, joinPath(dir, n), why)
	}
	if i == 0 {
		return nil
	}
	switch prev := name(list[i-1]); {
	case prev == n:
		return fmt.Errorf("%w: %s %q appears twice", ErrInvalid, kind, joinPath(dir, n))
	case prev > n:
		return fmt.Errorf("%w: %s %q comes after %q: the %ss of a Directory must be sorted by name", ErrInvalid, kind, joinPath(dir, n), prev, kind)
	}
	return nil
}

// nameProblem says what is wrong with a directory entry's name, or "".
func nameProblem(n string) string {
	switch {
	case n == "":
		return "the name is empty"
	case n == "." || n == "..":
		return "the name must not be . or .."
	case strings.IndexByte(n, '/') >= 0:
		return "the name contains '/' (each entry is one path component)"
	case strings.IndexByte(n, 0) >= 0:
		return "the name contains a NUL byte"
	}
	return ""
}

// commonName returns a name present in both sorted lists, if any.
func commonName[A, B any](a []A, an func(A) string, b []B, bn func(B) string) (string, bool) {
	for i, j := 0, 0; i < len(a) && j < len(b); {
		x, y := an(a[i]), bn(b[j])
		switch {
		case x == y:
			return x, true
		case x < y:
			i++
		default:
			j++
		}
	}
	return "", false
}

// checkTargetForm checks what can be checked of a symlink target without
// knowing where the symlink sits; checkTargetBeneath does the rest.
func checkTargetForm(target string) error {
	switch {
	case target == "":
		return fmt.Errorf("the target is empty")
	case strings.IndexByte(target, 0) >= 0:
		return fmt.Errorf("the target %q contains a NUL byte", target)
	case strings.HasPrefix(target, "/"):
		// Hearth advertises symlink_absolute_path_strategy DISALLOWED: an
		// absolute target points outside the input root by definition.
		return fmt.Errorf("the target %q is absolute; only relative targets are allowed", target)
	}
	return nil
}

// checkTargetBeneath checks that a relative target, resolved lexically from
// a directory depth levels below the input root, stays inside the root. This
// keeps actions hermetic; it is not a security boundary (the action is
// arbitrary code anyway, and resolution through other symlinks of the tree is
// not modelled), and Stage never follows a symlink it creates.
func checkTargetBeneath(target string, depth int) error {
	if climb(target) > depth {
		return fmt.Errorf("the target %q leaves the input root", target)
	}
	return nil
}

// climb returns how many levels a relative target rises above the symlink's
// directory at its highest point: the least depth at which it stays inside
// the root.
func climb(target string) int {
	level, need := 0, 0
	for c := range strings.SplitSeq(target, "/") {
		switch c {
		case "", ".":
		case "..":
			level--
			need = max(need, -level)
		default:
			level++
		}
	}
	return need
}

// parseProperties validates and converts node properties found at path.
func parseProperties(path string, np *repb.NodeProperties) (*NodeProperties, error) {
	if np == nil || len(np.Properties) == 0 && np.Mtime == nil && np.UnixMode == nil {
		return nil, nil
	}
	out := &NodeProperties{}
	if len(np.Properties) > 0 {
		out.Properties = make([]Property, len(np.Properties))
	}
	for i, p := range np.Properties {
		if p.GetName() == "" {
			return nil, fmt.Errorf("%w: %q: node property %d has an empty name", ErrInvalid, displayPath(path), i)
		}
		if i > 0 {
			switch prev := np.Properties[i-1]; {
			case prev.GetName() > p.GetName():
				return nil, fmt.Errorf("%w: %q: node property %q comes after %q: node properties must be sorted by name", ErrInvalid, displayPath(path), p.GetName(), prev.GetName())
			case prev.GetName() == p.GetName() && prev.GetValue() == p.GetValue():
				return nil, fmt.Errorf("%w: %q: node property %s=%q is listed twice", ErrInvalid, displayPath(path), p.GetName(), p.GetValue())
			}
		}
		out.Properties[i] = Property{Name: p.GetName(), Value: p.GetValue()}
	}
	if np.Mtime != nil {
		if err := np.Mtime.CheckValid(); err != nil {
			return nil, fmt.Errorf("%w: %q: node property mtime: %v", ErrInvalid, displayPath(path), err)
		}
		out.MTime = np.Mtime.AsTime()
	}
	if np.UnixMode != nil {
		m := np.UnixMode.GetValue()
		if m > 0o7777 {
			return nil, fmt.Errorf("%w: %q: node property unix_mode %#o has bits beyond the permission bits 07777", ErrInvalid, displayPath(path), m)
		}
		out.UnixMode, out.HasUnixMode = m, true
	}
	return out, nil
}

// ValidateRelativePath checks a slash-separated path relative to the input
// root, as clients send in output paths and Command.working_directory. The
// empty path is the input root itself. Otherwise: no leading '/', no empty
// components (so no trailing '/' and no "//"), no "." or ".." components
// (each path has one spelling, so that output paths can be compared as
// strings and none points outside the root), and no NUL byte.
func ValidateRelativePath(p string) error {
	if p == "" {
		return nil
	}
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("%w: path %q contains a NUL byte", ErrInvalid, p)
	}
	if strings.HasPrefix(p, "/") {
		return fmt.Errorf("%w: path %q is absolute; it must be relative to the input root", ErrInvalid, p)
	}
	for c := range strings.SplitSeq(p, "/") {
		switch c {
		case "":
			return fmt.Errorf("%w: path %q has an empty component (a trailing '/' or \"//\")", ErrInvalid, p)
		case ".", "..":
			return fmt.Errorf("%w: path %q has a %q component", ErrInvalid, p, c)
		}
	}
	return nil
}

// joinPath joins a directory path relative to the root and a name.
func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// displayPath names a path in messages, the root included.
func displayPath(p string) string {
	if p == "" {
		return "."
	}
	return p
}
