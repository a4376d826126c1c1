package actioncache

import (
	"errors"
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
)

// ErrInvalid is wrapped by every reason Validate rejects a result, so the
// service edge can map it to INVALID_ARGUMENT. A malformed digest inside a
// result is reported with digest.ErrInvalid instead (also INVALID_ARGUMENT).
var ErrInvalid = errors.New("invalid action result")

// Validate checks an ActionResult received from a client before it is stored:
// every digest it carries must be well formed for fn, and every output path
// must be a relative path in REAPI's form. It does not check that the blobs
// exist (a Get does that, see CheckComplete).
//
// Paths may contain ".." segments: output paths are relative to the Command's
// working directory, which may sit below the input root, so "../out" is a
// legitimate output. Only what the spec forbids outright is rejected: a
// leading or trailing slash, empty segments, and NUL bytes (which no file
// system can store).
func Validate(fn digest.Function, r *repb.ActionResult) error {
	if r == nil {
		return fmt.Errorf("%w: action result is missing", ErrInvalid)
	}
	for i, f := range r.GetOutputFiles() {
		where := fmt.Sprintf("output_files[%d]", i)
		if err := checkOutputPath(f.GetPath(), false); err != nil {
			return fmt.Errorf("%w: %s path %q %v", ErrInvalid, where, f.GetPath(), err)
		}
		if _, err := digest.FromProto(fn, f.GetDigest()); err != nil {
			return fmt.Errorf("%s (%q) digest: %w", where, f.GetPath(), err)
		}
	}
	if err := checkUniquePaths("output_files", len(r.GetOutputFiles()), func(i int) string { return r.GetOutputFiles()[i].GetPath() }); err != nil {
		return err
	}
	for i, d := range r.GetOutputDirectories() {
		where := fmt.Sprintf("output_directories[%d]", i)
		// The empty path names the whole working directory, which the spec
		// allows for output directories.
		if err := checkOutputPath(d.GetPath(), true); err != nil {
			return fmt.Errorf("%w: %s path %q %v", ErrInvalid, where, d.GetPath(), err)
		}
		if d.GetTreeDigest() == nil && d.GetRootDirectoryDigest() == nil {
			return fmt.Errorf("%w: %s (%q) has neither tree_digest nor root_directory_digest", ErrInvalid, where, d.GetPath())
		}
		if d.GetTreeDigest() != nil {
			if _, err := digest.FromProto(fn, d.GetTreeDigest()); err != nil {
				return fmt.Errorf("%s (%q) tree_digest: %w", where, d.GetPath(), err)
			}
		}
		if d.GetRootDirectoryDigest() != nil {
			if _, err := digest.FromProto(fn, d.GetRootDirectoryDigest()); err != nil {
				return fmt.Errorf("%s (%q) root_directory_digest: %w", where, d.GetPath(), err)
			}
		}
	}
	if err := checkUniquePaths("output_directories", len(r.GetOutputDirectories()), func(i int) string { return r.GetOutputDirectories()[i].GetPath() }); err != nil {
		return err
	}
	symlinkLists := []struct {
		field string
		links []*repb.OutputSymlink
	}{
		{"output_symlinks", r.GetOutputSymlinks()},
		//lint:ignore SA1019 v2.0 clients still send the deprecated lists; they are validated like the rest.
		{"output_file_symlinks", r.GetOutputFileSymlinks()},
		//lint:ignore SA1019 as above.
		{"output_directory_symlinks", r.GetOutputDirectorySymlinks()},
	}
	// The deprecated lists repeat entries of output_symlinks by design (v2.0
	// compatibility), so paths are only required to be unique within a list.
	for _, list := range symlinkLists {
		for i, l := range list.links {
			where := fmt.Sprintf("%s[%d]", list.field, i)
			if err := checkOutputPath(l.GetPath(), false); err != nil {
				return fmt.Errorf("%w: %s path %q %v", ErrInvalid, where, l.GetPath(), err)
			}
			if l.GetTarget() == "" {
				return fmt.Errorf("%w: %s (%q) has an empty target", ErrInvalid, where, l.GetPath())
			}
			if strings.IndexByte(l.GetTarget(), 0) >= 0 {
				return fmt.Errorf("%w: %s (%q) target %q contains a NUL byte", ErrInvalid, where, l.GetPath(), l.GetTarget())
			}
		}
		if err := checkUniquePaths(list.field, len(list.links), func(i int) string { return list.links[i].GetPath() }); err != nil {
			return err
		}
	}
	for _, std := range []struct {
		field string
		d     *repb.Digest
	}{{"stdout_digest", r.GetStdoutDigest()}, {"stderr_digest", r.GetStderrDigest()}} {
		if std.d == nil {
			continue
		}
		if _, err := digest.FromProto(fn, std.d); err != nil {
			return fmt.Errorf("%s: %w", std.field, err)
		}
	}
	return nil
}

// checkOutputPath returns why p is not a relative slash-separated path, or nil.
func checkOutputPath(p string, allowEmpty bool) error {
	switch {
	case p == "" && allowEmpty:
		return nil
	case p == "":
		return errors.New("is empty")
	case strings.HasPrefix(p, "/"):
		return errors.New("is absolute (output paths are relative to the working directory)")
	case strings.HasSuffix(p, "/"):
		return errors.New("ends with a slash")
	case strings.Contains(p, "//"):
		return errors.New("has an empty segment")
	case strings.IndexByte(p, 0) >= 0:
		return errors.New("contains a NUL byte")
	}
	return nil
}

func checkUniquePaths(field string, n int, path func(int) string) error {
	if n < 2 {
		return nil
	}
	seen := make(map[string]int, n)
	for i := 0; i < n; i++ {
		p := path(i)
		if j, ok := seen[p]; ok {
			return fmt.Errorf("%w: %s[%d] and %s[%d] both have path %q", ErrInvalid, field, j, field, i, p)
		}
		seen[p] = i
	}
	return nil
}
