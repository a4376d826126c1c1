package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// actionSpec describes an action for a REAPI client to build: the command
// and an input root given as files and symlinks by slash-separated path.
type actionSpec struct {
	args        []string
	env         map[string]string
	outputPaths []string
	workingDir  string
	files       map[string]string // path → content
	symlinks    map[string]string // path → target
	timeout     time.Duration
	// editCommand and editAction, when set, change the messages last, to
	// build what a careless client might send.
	editCommand func(*repb.Command)
	editAction  func(*repb.Action)
}

// builtAction is an actionSpec serialized as REAPI messages: the Action and
// every blob it references (Command, Directories, file contents).
type builtAction struct {
	action testBlob
	blobs  []testBlob
	files  map[string]testBlob // input file path → its blob
}

// build serializes s. Directory entries are sorted by name, as REAPI
// requires of a canonical Directory.
func (s actionSpec) build(t *testing.T) builtAction {
	t.Helper()
	cmd := &repb.Command{Arguments: s.args, OutputPaths: s.outputPaths, WorkingDirectory: s.workingDir}
	for _, name := range sortedKeys(s.env) {
		cmd.EnvironmentVariables = append(cmd.EnvironmentVariables, &repb.Command_EnvironmentVariable{Name: name, Value: s.env[name]})
	}
	if s.editCommand != nil {
		s.editCommand(cmd)
	}
	b := builtAction{files: map[string]testBlob{}}
	cmdBlob := marshalBlob(t, cmd)
	root := b.directory(t, "", s.files, s.symlinks)
	action := &repb.Action{CommandDigest: cmdBlob.digest, InputRootDigest: root.digest}
	if s.timeout > 0 {
		action.Timeout = durationpb.New(s.timeout)
	}
	if s.editAction != nil {
		s.editAction(action)
	}
	b.action = marshalBlob(t, action)
	b.blobs = append(b.blobs, cmdBlob, b.action)
	return b
}

// directory builds the Directory at dir (slash-separated, "" for the root)
// from the entries of files and symlinks below it, adding every message and
// file blob to b.blobs, and returns its blob.
func (b *builtAction) directory(t *testing.T, dir string, files, symlinks map[string]string) testBlob {
	t.Helper()
	msg := &repb.Directory{}
	subdirs := map[string]bool{}
	// child returns the entry name directly below dir, and whether p is
	// deeper than that.
	child := func(p string) (string, bool, bool) {
		rel := p
		if dir != "" {
			var ok bool
			if rel, ok = strings.CutPrefix(p, dir+"/"); !ok {
				return "", false, false
			}
		}
		name, _, deeper := strings.Cut(rel, "/")
		return name, deeper, true
	}
	for _, p := range sortedKeys(files) {
		name, deeper, ok := child(p)
		switch {
		case !ok:
		case deeper:
			subdirs[name] = true
		default:
			blob := newTestBlob([]byte(files[p]))
			b.files[p] = blob
			b.blobs = append(b.blobs, blob)
			msg.Files = append(msg.Files, &repb.FileNode{Name: name, Digest: blob.digest})
		}
	}
	for _, p := range sortedKeys(symlinks) {
		name, deeper, ok := child(p)
		switch {
		case !ok:
		case deeper:
			subdirs[name] = true
		default:
			msg.Symlinks = append(msg.Symlinks, &repb.SymlinkNode{Name: name, Target: symlinks[p]})
		}
	}
	for _, name := range sortedKeys(subdirs) {
		sub := b.directory(t, path.Join(dir, name), files, symlinks)
		msg.Directories = append(msg.Directories, &repb.DirectoryNode{Name: name, Digest: sub.digest})
	}
	blob := marshalBlob(t, msg)
	b.blobs = append(b.blobs, blob)
	return blob
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func marshalBlob(t *testing.T, m proto.Message) testBlob {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatalf("marshalling %T: %v", m, err)
	}
	return newTestBlob(data)
}

// upload puts every blob of a into the CAS, except those whose hashes are in
// skip.
func (c *reapiClient) upload(t *testing.T, a builtAction, skip ...testBlob) {
	t.Helper()
	var blobs []testBlob
	seen := map[string]bool{}
	for _, s := range skip {
		seen[s.digest.Hash] = true
	}
	for _, blob := range a.blobs {
		if !seen[blob.digest.Hash] {
			seen[blob.digest.Hash] = true
			blobs = append(blobs, blob)
		}
	}
	if err := c.batchUpload(t.Context(), blobs); err != nil {
		t.Fatalf("uploading the action's blobs: %v", err)
	}
}

// execute runs the action with digest d to completion, skipping the cache
// lookup. It returns the ExecuteResponse, or the error that ended the call:
// the Execute RPC's own status, or the Operation's error.
func (c *reapiClient) execute(ctx context.Context, d *repb.Digest) (*repb.ExecuteResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	stream, err := c.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: d, SkipCacheLookup: true, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		return nil, err
	}
	var last *longrunningpb.Operation
	for {
		op, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("the Execute stream ended without a done operation (last: %v)", last)
		}
		if err != nil {
			return nil, err
		}
		last = op
		if !op.GetDone() {
			continue
		}
		if e := op.GetError(); e != nil {
			return nil, status.ErrorProto(e)
		}
		resp := &repb.ExecuteResponse{}
		if err := op.GetResponse().UnmarshalTo(resp); err != nil {
			return nil, fmt.Errorf("done operation %s carries no ExecuteResponse: %v", op.GetName(), err)
		}
		return resp, nil
	}
}

// outcome is the status an Execute ended with, wherever the server put it:
// the RPC's error, or ExecuteResponse.status.
func outcome(resp *repb.ExecuteResponse, err error) *status.Status {
	if err != nil {
		return status.Convert(err)
	}
	if st := resp.GetStatus(); st != nil {
		return status.FromProto(st)
	}
	return status.New(codes.OK, "")
}
