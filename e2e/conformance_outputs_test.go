package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// checkOutputLayouts checks where outputs land in the ActionResult for the
// v2.1 output_paths and the legacy output_files/output_directories, and the
// Tree encoding of output directories.
func (c *conformanceClient) checkOutputLayouts(t *testing.T) {
	ctx := t.Context()
	run := func(cmd *repb.Command) *repb.ActionResult {
		t.Helper()
		a := buildWithCommand(t, cmd)
		c.upload(t, a)
		resp, err := c.execute(ctx, a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("Execute %v: %v, exit %d", cmd, st, resp.GetResult().GetExitCode())
		}
		return resp.GetResult()
	}
	script := "echo x > f; ln -s f l; mkdir d; ln -s d dl; : " + uuid.NewString()
	// output_symlinks: "New in v2.1: this field will only be populated if the
	// command output_paths field was used, and not the pre v2.1 output_files
	// or output_directories fields."
	//lint:ignore SA1019 the legacy output fields are what this check covers.
	legacy := run(&repb.Command{Arguments: []string{"/bin/sh", "-c", script}, OutputFiles: []string{"l"}, OutputDirectories: []string{"dl"}})
	if len(legacy.GetOutputSymlinks()) != 0 {
		t.Errorf("legacy outputs populated output_symlinks: %v", legacy.GetOutputSymlinks())
	}
	// output_file_symlinks / output_directory_symlinks: "a single entry will
	// be present either in this field, or in the output_files field".
	//lint:ignore SA1019 the legacy output fields are what this check covers.
	if fs := legacy.GetOutputFileSymlinks(); len(fs) != 1 || fs[0].GetPath() != "l" || fs[0].GetTarget() != "f" {
		t.Errorf("output_file_symlinks %v, want l -> f", fs)
	}
	//lint:ignore SA1019 the legacy output fields are what this check covers.
	if ds := legacy.GetOutputDirectorySymlinks(); len(ds) != 1 || ds[0].GetPath() != "dl" || ds[0].GetTarget() != "d" {
		t.Errorf("output_directory_symlinks %v, want dl -> d", ds)
	}
	current := run(&repb.Command{Arguments: []string{"/bin/sh", "-c", script}, OutputPaths: []string{"dl", "l"}})
	if len(current.GetOutputSymlinks()) != 2 {
		t.Errorf("output_paths symlinks: output_symlinks %v, want dl and l", current.GetOutputSymlinks())
	}

	// Output paths "are relative to the working directory".
	// The working directory "must be a directory which exists in the input
	// tree": one without it is INVALID_ARGUMENT before anything runs.
	noWD := buildWithCommand(t, &repb.Command{Arguments: []string{"/bin/true"}, WorkingDirectory: "wd"})
	c.upload(t, noWD)
	if st := outcome(c.execute(ctx, noWD.action.digest)); st.Code() != codes.InvalidArgument {
		t.Errorf("working_directory absent from the input tree: %v, want INVALID_ARGUMENT", st)
	}
	withWD := actionSpec{
		args:        []string{"/bin/sh", "-c", "echo x > o; : " + uuid.NewString()},
		workingDir:  "wd",
		files:       map[string]string{"wd/input": "in"},
		outputPaths: []string{"o"},
	}.build(t)
	c.upload(t, withWD)
	resp, err := c.execute(ctx, withWD.action.digest)
	if st := outcome(resp, err); st.Code() != codes.OK {
		t.Fatalf("Execute with working_directory wd: %v", st)
	}
	wd := resp.GetResult()
	if len(wd.GetOutputFiles()) != 1 || wd.GetOutputFiles()[0].GetPath() != "o" {
		t.Errorf("output with working_directory wd: %v, want path o", wd.GetOutputFiles())
	}

	// Two identical subdirectories: with is_topologically_sorted, "All
	// directories with the same binary representation are stored exactly
	// once" and the Tree "MUST be encoded as a stream of records" tagged 0x0a
	// (root) then 0x12.
	res := run(&repb.Command{
		Arguments:             []string{"/bin/sh", "-c", "mkdir -p d/x/in d/y/in; echo s > d/x/in/f; echo s > d/y/in/f; : " + uuid.NewString()},
		OutputPaths:           []string{"d"},
		OutputDirectoryFormat: repb.Command_TREE_AND_DIRECTORY,
	})
	if len(res.GetOutputDirectories()) != 1 {
		t.Fatalf("output_directories %v, want d", res.GetOutputDirectories())
	}
	od := res.GetOutputDirectories()[0]
	data, err := c.byteStreamRead(ctx, od.GetTreeDigest())
	if err != nil {
		t.Fatalf("reading the Tree: %v", err)
	}
	tree := &repb.Tree{}
	if err := proto.Unmarshal(data, tree); err != nil {
		t.Fatalf("the Tree does not parse: %v", err)
	}
	if od.GetIsTopologicallySorted() {
		if n := len(tree.GetChildren()); n != 2 {
			t.Errorf("a topologically sorted Tree of d (x and y identical) has %d children, want 2", n)
		}
		if tags, err := treeRecordTags(data); err != nil {
			t.Errorf("the Tree is not a stream of records: %v", err)
		} else if len(tags) == 0 || tags[0] != 0x0a || bytes.Count(tags[1:], []byte{0x0a}) != 0 {
			t.Errorf("Tree record tags % x, want 0a then 12s", tags)
		}
	}
	// "If both tree_digest and root_directory_digest are set, this field MUST
	// match the digest of the root directory contained in the Tree message."
	if rd := od.GetRootDirectoryDigest(); rd != nil {
		if !proto.Equal(rd, marshalBlob(t, tree.GetRoot()).digest) {
			t.Errorf("root_directory_digest %v is not the Tree's root", rd)
		}
		pages, err := c.getTree(ctx, &repb.GetTreeRequest{RootDigest: rd})
		if err != nil || len(pages) == 0 || len(pages[0].GetDirectories()) != 3 {
			t.Errorf("GetTree(root_directory_digest): %v, %v; want d, x(=y) and in", pages, err)
		}
	}
}

// treeRecordTags splits data into the records of a topologically sorted Tree
// and returns their tag bytes.
func treeRecordTags(data []byte) ([]byte, error) {
	var tags []byte
	for i := 0; i < len(data); {
		tags = append(tags, data[i])
		i++
		var n uint64
		for shift := 0; ; shift += 7 {
			if i >= len(data) || shift > 63 {
				return tags, fmt.Errorf("truncated length at byte %d", i)
			}
			b := data[i]
			i++
			n |= uint64(b&0x7f) << shift
			if b < 0x80 {
				break
			}
		}
		if n > uint64(len(data)-i) {
			return tags, fmt.Errorf("record of %d bytes at byte %d overruns the Tree", n, i)
		}
		i += int(n)
	}
	return tags, nil
}

// buildWithCommand builds an action with an empty input root around cmd.
func buildWithCommand(t *testing.T, cmd *repb.Command) builtAction {
	cmdB := marshalBlob(t, cmd)
	root := newTestBlob(nil)
	act := marshalBlob(t, &repb.Action{CommandDigest: cmdB.digest, InputRootDigest: root.digest})
	return builtAction{action: act, blobs: []testBlob{cmdB, root, act}}
}

func (c *conformanceClient) checkOperations(t *testing.T) {
	ctx := t.Context()
	// WaitExecution: "NOT_FOUND: The operation no longer exists due to any
	// of a transient condition, an unknown operation name, ..."
	s, err := c.exec.WaitExecution(ctx, &repb.WaitExecutionRequest{Name: "operations/" + uuid.NewString()})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, "WaitExecution of an unknown operation", err, codes.NotFound)
	_, err = c.ops.GetOperation(ctx, &longrunningpb.GetOperationRequest{Name: "operations/" + uuid.NewString()})
	wantCode(t, "GetOperation of an unknown operation", err, codes.NotFound)

	// A finished operation can be queried by name.
	a := actionSpec{args: []string{"/bin/echo", uuid.NewString()}}.build(t)
	c.upload(t, a)
	opsDone, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: a.action.digest, SkipCacheLookup: true})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	checkOperationStream(t, opsDone, a.action.digest)
	name := opsDone[0].GetName()
	op, err := c.ops.GetOperation(ctx, &longrunningpb.GetOperationRequest{Name: name})
	if err != nil {
		t.Fatalf("GetOperation(%s): %v", name, err)
	}
	checkOperationStream(t, []*longrunningpb.Operation{op}, a.action.digest)
	// WaitExecution of a finished operation answers with it at once (or
	// NOT_FOUND if it is already forgotten).
	s, err = c.exec.WaitExecution(ctx, &repb.WaitExecutionRequest{Name: name})
	if err != nil {
		t.Fatalf("WaitExecution(%s): %v", name, err)
	}
	var waited []*longrunningpb.Operation
	for {
		op, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if codeOf(err) != codes.NotFound {
				t.Errorf("WaitExecution(%s): %v", name, err)
			}
			break
		}
		waited = append(waited, op)
	}
	if len(waited) > 0 {
		checkOperationStream(t, waited, a.action.digest)
	}

	// CancelOperation: "CANCELLED: The operation was cancelled by the client.
	// This status is only possible if the server implements the Operations
	// API CancelOperation method". The status travels in
	// ExecuteResponse.status: "The server MUST NOT set the error field".
	slow := actionSpec{args: []string{"/bin/sleep", "30"}, env: map[string]string{"X": uuid.NewString()}}.build(t)
	c.upload(t, slow)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := c.exec.Execute(cctx, &repb.ExecuteRequest{ActionDigest: slow.action.digest})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if _, err := c.ops.CancelOperation(ctx, &longrunningpb.CancelOperationRequest{Name: first.GetName()}); err != nil {
		t.Fatalf("CancelOperation(%s): %v", first.GetName(), err)
	}
	all := []*longrunningpb.Operation{first}
	for {
		op, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Execute stream after CancelOperation: %v", err)
		}
		all = append(all, op)
	}
	resp := checkOperationStream(t, all, slow.action.digest)
	if codes.Code(resp.GetStatus().GetCode()) != codes.Canceled {
		t.Errorf("cancelled execution: status %v, want CANCELLED", resp.GetStatus())
	}
	_, err = c.ops.CancelOperation(ctx, &longrunningpb.CancelOperationRequest{Name: "operations/" + uuid.NewString()})
	wantCode(t, "CancelOperation of an unknown operation", err, codes.NotFound)
	c.checkOperationsMore(t)
}

func (c *conformanceClient) checkBLAKE3(t *testing.T) {
	ctx := t.Context()
	caps, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	supported := false
	for _, f := range caps.GetCacheCapabilities().GetDigestFunctions() {
		supported = supported || f == repb.DigestFunction_BLAKE3
	}
	if !supported {
		t.Fatalf("BLAKE3 is not advertised; these checks need it")
	}
	b := blake3Blob([]byte("blake3 blob " + uuid.NewString()))
	resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: b.digest, Data: b.data}}})
	if err != nil || resp.GetResponses()[0].GetStatus().GetCode() != 0 {
		t.Fatalf("BatchUpdateBlobs BLAKE3: %v, %v", resp, err)
	}
	// The same data declared as SHA256 does not match its digest.
	resp, err = c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_SHA256,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: b.digest, Data: b.data}}})
	if err != nil || codes.Code(resp.GetResponses()[0].GetStatus().GetCode()) != codes.InvalidArgument {
		t.Errorf("BLAKE3 digest uploaded as SHA256: %v, %v; want INVALID_ARGUMENT", resp, err)
	}
	fm, err := c.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3, BlobDigests: []*repb.Digest{b.digest, blake3Blob(nil).digest}})
	if err != nil || len(fm.GetMissingBlobDigests()) != 0 {
		t.Errorf("FindMissingBlobs BLAKE3: %v, %v", fm, err)
	}
	// Resource names: "digest_function is a lowercase string form of a
	// DigestFunction.Value enum" and is present for BLAKE3.
	got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: "blobs/blake3/" + b.String()})
	if err != nil || !bytes.Equal(got, b.data) {
		t.Errorf("Read blobs/blake3/...: %v", err)
	}
	w := blake3Blob([]byte("blake3 write " + uuid.NewString()))
	if _, err := c.write(ctx, &bspb.WriteRequest{ResourceName: fmt.Sprintf("uploads/%s/blobs/blake3/%s", uuid.NewString(), w), Data: w.data, FinishWrite: true}); err != nil {
		t.Errorf("Write uploads/.../blobs/blake3/...: %v", err)
	}
	// The empty BLAKE3 blob is always available too.
	if got, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: "blobs/blake3/" + blake3Blob(nil).String()}); err != nil || len(got) != 0 {
		t.Errorf("Read of the empty BLAKE3 blob: %v", err)
	}

	// Execution with BLAKE3: "The CAS objects referenced by action results
	// generated by the remote execution system MUST use the same digest
	// function as the one used to construct the action."
	tag := uuid.NewString()
	cmd := blake3Proto(t, &repb.Command{Arguments: []string{"/bin/sh", "-c", `printf "$1"; printf "$1" > o`, "sh", tag}, OutputPaths: []string{"o"}})
	root := blake3Blob(nil)
	act := blake3Proto(t, &repb.Action{CommandDigest: cmd.digest, InputRootDigest: root.digest})
	resp, err = c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: cmd.digest, Data: cmd.data}, {Digest: act.digest, Data: act.data}}})
	if err != nil || len(resp.GetResponses()) != 2 || resp.GetResponses()[0].GetStatus().GetCode() != 0 || resp.GetResponses()[1].GetStatus().GetCode() != 0 {
		t.Fatalf("uploading the BLAKE3 action: %v, %v", resp, err)
	}
	ops, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: act.digest, DigestFunction: repb.DigestFunction_BLAKE3})
	if err != nil {
		t.Fatalf("Execute BLAKE3: %v", err)
	}
	er := checkOperationStream(t, ops, act.digest)
	if er.GetStatus().GetCode() != 0 || er.GetResult().GetExitCode() != 0 {
		t.Fatalf("Execute BLAKE3: %v", er)
	}
	want := blake3Blob([]byte(tag)).digest
	if !proto.Equal(er.GetResult().GetStdoutDigest(), want) {
		t.Errorf("stdout digest %v, want the BLAKE3 digest %v", er.GetResult().GetStdoutDigest(), want)
	}
	if of := er.GetResult().GetOutputFiles(); len(of) != 1 || !proto.Equal(of[0].GetDigest(), want) {
		t.Errorf("output files %v, want o with the BLAKE3 digest %v", of, want)
	}
	md := &repb.ExecuteOperationMetadata{}
	ops[len(ops)-1].GetMetadata().UnmarshalTo(md)
	if f := md.GetDigestFunction(); f != repb.DigestFunction_BLAKE3 && f != repb.DigestFunction_UNKNOWN {
		t.Errorf("ExecuteOperationMetadata.digest_function %v for a BLAKE3 action", f)
	}
	ar, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: act.digest, DigestFunction: repb.DigestFunction_BLAKE3})
	if err != nil || !proto.Equal(ar.GetStdoutDigest(), want) {
		t.Errorf("GetActionResult BLAKE3: %v, %v", ar, err)
	}
	// The same digest under SHA256 is another action.
	_, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: act.digest, DigestFunction: repb.DigestFunction_SHA256})
	wantCode(t, "GetActionResult of a BLAKE3 action asked as SHA256", err, codes.NotFound)
}

func blake3Proto(t *testing.T, m proto.Message) testBlob {
	t.Helper()
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return blake3Blob(data)
}
