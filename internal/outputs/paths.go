package outputs

import (
	"fmt"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// Supported output node properties: the NodeProperties fields Hearth fills
// when a Command lists them in output_node_properties. Any other name is
// rejected with ErrInvalid, as REAPI prescribes (INVALID_ARGUMENT).
const (
	PropertyMtime    = "mtime"
	PropertyUnixMode = "unix_mode"
)

// kind is what a Command says an output is.
type kind int

const (
	kindAny  kind = iota // output_paths: whatever is found
	kindFile             // legacy output_files
	kindDir              // legacy output_directories
)

// output is one requested output: the path as the client named it (relative
// to the working directory) and the same path relative to the input root.
type output struct {
	name string
	rel  string
	kind kind
}

// checkPath validates a relative path lexically: forward slashes, no leading
// or trailing slash, no empty, "." or ".." segment, no NUL. Such a path can
// only name something beneath the directory it is relative to, as long as no
// component is followed as a symlink (which the opening code guarantees).
// The empty path is accepted only when allowEmpty is set.
func checkPath(what, p string, allowEmpty bool) error {
	if p == "" {
		if allowEmpty {
			return nil
		}
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("%w: %s %q contains a NUL byte", ErrInvalid, what, p)
	}
	if strings.HasPrefix(p, "/") {
		return fmt.Errorf("%w: %s %q is absolute; it must be relative", ErrInvalid, what, p)
	}
	for seg := range strings.SplitSeq(p, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%w: %s %q has an empty segment (double or trailing slash)", ErrInvalid, what, p)
		case ".", "..":
			return fmt.Errorf("%w: %s %q has a %q segment; paths must be canonical and stay beneath the input root", ErrInvalid, what, p, seg)
		}
	}
	return nil
}

// joinRel joins two validated relative paths.
func joinRel(dir, p string) string {
	switch {
	case dir == "":
		return p
	case p == "":
		return dir
	}
	return dir + "/" + p
}

// splitRel splits a validated non-empty relative path into parent and base.
func splitRel(rel string) (parent, base string) {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i], rel[i+1:]
	}
	return "", rel
}

// Validate checks the parts of cmd that decide where outputs are collected:
// working_directory, the output paths in use (output_paths when non-empty,
// else the legacy output_files and output_directories, which output_paths
// supersedes) and output_node_properties. Every failure wraps ErrInvalid and
// names the bad value. The Execution service calls it before queueing an
// action; Collect calls it again.
//
// Paths must be relative, canonical ("a/b", not "a//b", "./a" or "a/"), and
// must not contain "..". The empty path, meaning the working directory
// itself, is allowed as an output directory (REAPI allows it explicitly) and
// in output_paths (where it can only be a directory), never as an output
// file. Duplicates are rejected, and so is a path listed both as a legacy
// output file and output directory. Unsorted lists are tolerated.
func Validate(cmd *repb.Command) error {
	_, _, err := plan(cmd)
	return err
}

// props says which output node properties were requested.
type props struct {
	mtime, unixMode bool
}

func (p props) any() bool { return p.mtime || p.unixMode }

// plan validates cmd and returns the outputs to collect, in the order the
// Command lists them (output files before output directories for the legacy
// fields), and the requested node properties.
func plan(cmd *repb.Command) ([]output, props, error) {
	var pr props
	if cmd == nil {
		return nil, pr, fmt.Errorf("%w: command is missing", ErrInvalid)
	}
	for _, name := range cmd.GetOutputNodeProperties() {
		switch name {
		case PropertyMtime:
			pr.mtime = true
		case PropertyUnixMode:
			pr.unixMode = true
		default:
			return nil, pr, fmt.Errorf("%w: output node property %q is not supported (supported: %q, %q)", ErrInvalid, name, PropertyMtime, PropertyUnixMode)
		}
	}
	wd := cmd.GetWorkingDirectory()
	if err := checkPath("working directory", wd, true); err != nil {
		return nil, pr, err
	}
	var outs []output
	seen := map[string]kind{}
	add := func(what, p string, k kind, allowEmpty bool) error {
		if err := checkPath(what, p, allowEmpty); err != nil {
			return err
		}
		if prev, dup := seen[p]; dup {
			if prev != k {
				return fmt.Errorf("%w: %q is listed both as an output file and as an output directory", ErrInvalid, p)
			}
			return fmt.Errorf("%w: %s %q is listed twice", ErrInvalid, what, p)
		}
		seen[p] = k
		outs = append(outs, output{name: p, rel: joinRel(wd, p), kind: k})
		return nil
	}
	if paths := cmd.GetOutputPaths(); len(paths) > 0 {
		for _, p := range paths {
			if err := add("output path", p, kindAny, true); err != nil {
				return nil, pr, err
			}
		}
		return outs, pr, nil
	}
	for _, p := range cmd.GetOutputFiles() {
		if err := add("output file", p, kindFile, false); err != nil {
			return nil, pr, err
		}
	}
	for _, p := range cmd.GetOutputDirectories() {
		if err := add("output directory", p, kindDir, true); err != nil {
			return nil, pr, err
		}
	}
	// REAPI: "An output file cannot be ... a parent of another output file"
	// (nor, then, of an output directory: it would have to be both).
	for _, o := range outs {
		if o.kind != kindFile {
			continue
		}
		for _, other := range outs {
			if strings.HasPrefix(other.name, o.name+"/") {
				return nil, pr, fmt.Errorf("%w: output file %q is a parent of output %q", ErrInvalid, o.name, other.name)
			}
		}
	}
	return outs, pr, nil
}
