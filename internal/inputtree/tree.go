// Package inputtree owns an action's input root: on the executor, loading the
// Merkle tree of Directory protos from CAS and validating it (Load), checking
// that every input file is present (Tree.MissingFiles), and materializing it
// in an action directory by hardlinks from the file cache (Stage); in the
// Execution service, checking that a root is valid and complete before the
// action is queued, remembering the subtrees already found so (Checker). It
// also validates the relative paths other packages take from clients (output
// paths, working_directory) with ValidateRelativePath.
//
// Everything a client sends is checked here once, so that the code which
// creates files can build paths only from names known to be single, safe
// path components.
package inputtree

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// ErrInvalid is wrapped by every error about a malformed input tree or path;
// the service edge maps it to INVALID_ARGUMENT. The message names the
// offending path.
var ErrInvalid = errors.New("invalid input tree")

// Limits against trees that are small in CAS but huge when expanded: one
// Directory may be referenced many times, so a few kilobytes of protos can
// describe 2^40 files. Bazel's own input roots stay far below both.
const (
	// MaxDepth is the deepest directory nesting accepted (the root is 0).
	MaxDepth = 512
	// MaxNodes bounds the files, directories and symlinks of an expanded
	// tree together (a loaded tree costs roughly 150 bytes per node).
	MaxNodes = 2 << 20
	// MaxDirectoryBytes bounds the size of one Directory proto (a directory
	// of 100,000 files is about 10 MB).
	MaxDirectoryBytes = 64 << 20
)

// ToolInputProperty is the node property Bazel puts on the files of a
// persistent worker's tool (with an empty value), when run with
// --experimental_remote_mark_tool_inputs.
const ToolInputProperty = "bazel_tool_input"

// Tree is a loaded and validated input root.
type Tree struct {
	// Root is the digest of the root Directory.
	Root digest.Digest
	// Dirs lists every directory, the root first (with Path ""), each
	// directory's parent before it.
	Dirs []Dir
	// Files lists every file, grouped by directory in the order of Dirs and
	// sorted by name within one directory.
	Files []File
	// Symlinks lists every symlink, ordered like Files.
	Symlinks []Symlink
}

// File is a regular file of the input root.
type File struct {
	// Path is relative to the input root, with '/' separators.
	Path       string
	Digest     digest.Digest
	Executable bool
	// ToolInput is whether the file carries the bazel_tool_input node
	// property: it belongs to a persistent worker's tool.
	ToolInput bool
	// Properties is nil when the node has none.
	Properties *NodeProperties
}

// Dir is a directory of the input root.
type Dir struct {
	// Path is relative to the input root ("" for the root itself).
	Path       string
	Digest     digest.Digest
	Properties *NodeProperties

	// Index ranges into Tree.Files, Tree.Symlinks and Tree.Dirs of this
	// directory's direct children, for Stage.
	filesLo, filesHi int
	symsLo, symsHi   int
	subsLo, subsHi   int
	depth            int
}

// Symlink is a symbolic link of the input root. Its target is relative and
// does not lexically leave the input root (Load rejects anything else).
type Symlink struct {
	Path       string
	Target     string
	Properties *NodeProperties
}

// NodeProperties are the REAPI node properties of a file, directory or
// symlink. They are recorded, not applied: staged files share their inode
// with the file cache, so they cannot take a per-action mode or mtime.
type NodeProperties struct {
	// Properties are the name/value pairs in the order sent.
	Properties []Property
	// MTime is the zero time when absent.
	MTime time.Time
	// UnixMode holds permission bits (at most 07777) when HasUnixMode.
	UnixMode    uint32
	HasUnixMode bool
}

// Property is one name/value node property.
type Property struct {
	Name, Value string
}

// Has reports whether a property named name is present. It is nil-safe.
func (p *NodeProperties) Has(name string) bool {
	if p == nil {
		return false
	}
	for _, q := range p.Properties {
		if q.Name == name {
			return true
		}
	}
	return false
}

// findMissingChunk bounds one FindMissing call, so a huge tree does not make
// one enormous request to a remote store.
const findMissingChunk = 10_000

// HasDir reports whether path (slash-separated, relative to the root) is a
// directory of the tree.
func (t *Tree) HasDir(path string) bool {
	for i := range t.Dirs {
		if t.Dirs[i].Path == path {
			return true
		}
	}
	return false
}

// MissingFiles asks store which of the tree's file blobs it lacks and
// returns them as a *cas.MissingError listing every one, or nil if all are
// present.
func (t *Tree) MissingFiles(ctx context.Context, store cas.Store) error {
	seen := make(map[digest.Digest]struct{}, len(t.Files))
	unique := make([]digest.Digest, 0, len(t.Files))
	for i := range t.Files {
		d := t.Files[i].Digest
		if _, dup := seen[d]; dup || d.IsEmpty() {
			continue
		}
		seen[d] = struct{}{}
		unique = append(unique, d)
	}
	var missing []digest.Digest
	for lo := 0; lo < len(unique); lo += findMissingChunk {
		hi := min(lo+findMissingChunk, len(unique))
		m, err := store.FindMissing(ctx, unique[lo:hi])
		if err != nil {
			return fmt.Errorf("inputtree: looking for the input files: %w", err)
		}
		missing = append(missing, m...)
	}
	if len(missing) > 0 {
		return &cas.MissingError{Digests: missing}
	}
	return nil
}
