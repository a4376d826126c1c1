package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

func (c *conformanceClient) checkActionCache(t *testing.T) {
	ctx := t.Context()
	a := actionSpec{args: []string{"/bin/true"}}.build(t)
	c.upload(t, a)
	// "NOT_FOUND: The requested ActionResult is not in the cache."
	_, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest})
	wantCode(t, "GetActionResult of an unknown action", err, codes.NotFound)

	out := uniqueBlob("ac output")
	stdout := uniqueBlob("ac stdout")
	if err := c.batchUpload(ctx, []testBlob{out, stdout}); err != nil {
		t.Fatal(err)
	}
	result := &repb.ActionResult{
		ExitCode:     3,
		OutputFiles:  []*repb.OutputFile{{Path: "out/file", Digest: out.digest, IsExecutable: true}},
		StdoutDigest: stdout.digest,
		ExecutionMetadata: &repb.ExecutedActionMetadata{
			Worker: "conformance",
		},
	}
	if _, err := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: a.action.digest, ActionResult: result}); err != nil {
		t.Fatalf("UpdateActionResult: %v", err)
	}
	got, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest})
	if err != nil {
		t.Fatalf("GetActionResult: %v", err)
	}
	if got.GetExitCode() != 3 || len(got.GetOutputFiles()) != 1 || !proto.Equal(got.GetOutputFiles()[0].GetDigest(), out.digest) ||
		got.GetOutputFiles()[0].GetPath() != "out/file" || !got.GetOutputFiles()[0].GetIsExecutable() || !proto.Equal(got.GetStdoutDigest(), stdout.digest) {
		t.Errorf("GetActionResult returned %v, want the stored %v", got, result)
	}
	// stdout_raw: "The server SHOULD NOT inline stdout unless requested by the
	// client"; contents likewise.
	if len(got.GetStdoutRaw()) > 0 || len(got.GetOutputFiles()[0].GetContents()) > 0 {
		t.Errorf("GetActionResult inlined without being asked")
	}
	// inline_stdout / inline_output_files are hints, and small blobs fit.
	got, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest, InlineStdout: true, InlineOutputFiles: []string{"out/file"}})
	if err != nil {
		t.Fatalf("GetActionResult with inlining: %v", err)
	}
	if !bytes.Equal(got.GetStdoutRaw(), stdout.data) || !bytes.Equal(got.GetOutputFiles()[0].GetContents(), out.data) {
		t.Errorf("GetActionResult did not inline small stdout/output: %q, %q", got.GetStdoutRaw(), got.GetOutputFiles()[0].GetContents())
	}
	if !proto.Equal(got.GetStdoutDigest(), stdout.digest) {
		t.Errorf("inlined stdout lost its digest")
	}

	// "INVALID_ARGUMENT: One or more arguments are invalid."
	_, err = c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: a.action.digest})
	wantCode(t, "UpdateActionResult without action_result", err, codes.InvalidArgument)
	_, err = c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: &repb.Digest{Hash: "nothex", SizeBytes: 3}, ActionResult: result})
	wantCode(t, "UpdateActionResult with a malformed action digest", err, codes.InvalidArgument)
	_, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: &repb.Digest{Hash: a.action.digest.Hash, SizeBytes: -4}})
	wantCode(t, "GetActionResult with a negative size", err, codes.InvalidArgument)
	// An output path that is absolute: OutputFile.path "MUST NOT begin with
	// a leading forward slash."
	bad := proto.Clone(result).(*repb.ActionResult)
	bad.OutputFiles[0].Path = "/etc/passwd"
	_, err = c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: a.action.digest, ActionResult: bad})
	wantCode(t, "UpdateActionResult with an absolute output path", err, codes.InvalidArgument)

	// Inline data a client sends anyway must match its digest, and the
	// server "MAY modify the action_result and return an equivalent value".
	b := actionSpec{args: []string{"/bin/echo", uuid.NewString()}}.build(t)
	c.upload(t, b)
	raw := []byte("inline stdout " + uuid.NewString())
	ret, err := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: b.action.digest, ActionResult: &repb.ActionResult{StdoutRaw: raw}})
	if err != nil {
		t.Fatalf("UpdateActionResult with stdout_raw: %v", err)
	}
	if len(ret.GetStdoutRaw()) == 0 && ret.GetStdoutDigest() == nil {
		t.Errorf("UpdateActionResult dropped stdout entirely: %v", ret)
	}
	got, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: b.action.digest, InlineStdout: true})
	if err != nil {
		t.Fatalf("GetActionResult: %v", err)
	}
	stdoutData := got.GetStdoutRaw()
	if len(stdoutData) == 0 && got.GetStdoutDigest() != nil {
		if stdoutData, err = c.byteStreamRead(ctx, got.GetStdoutDigest()); err != nil {
			t.Fatalf("reading stdout: %v", err)
		}
	}
	if !bytes.Equal(stdoutData, raw) {
		t.Errorf("stdout stored inline comes back as %q", stdoutData)
	}

	// Implementations "SHOULD ensure that any blobs referenced from the
	// ContentAddressableStorage are available at the time of returning the
	// ActionResult": a result whose output is not in the CAS is either
	// refused on update or not served.
	d := actionSpec{args: []string{"/bin/echo", uuid.NewString()}}.build(t)
	c.upload(t, d)
	gone := uniqueBlob("never uploaded output")
	_, uerr := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: d.action.digest, ActionResult: &repb.ActionResult{
		OutputFiles: []*repb.OutputFile{{Path: "o", Digest: gone.digest}},
	}})
	if uerr == nil {
		_, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: d.action.digest})
		wantCode(t, "GetActionResult whose output blob is missing", err, codes.NotFound)
	} else if codeOf(uerr) != codes.FailedPrecondition && codeOf(uerr) != codes.InvalidArgument {
		t.Errorf("UpdateActionResult with a missing output blob: %v", uerr)
	}
}

// runOps runs an Execute call and returns every Operation it streamed, and
// the error that ended the stream (nil when it ended cleanly).
func (c *conformanceClient) runOps(ctx context.Context, req *repb.ExecuteRequest) ([]*longrunningpb.Operation, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := c.exec.Execute(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*longrunningpb.Operation
	for {
		op, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, op)
	}
}

// checkOperationStream applies the Execute stream rules and returns the
// final ExecuteResponse.
func checkOperationStream(t *testing.T, ops []*longrunningpb.Operation, action *repb.Digest) *repb.ExecuteResponse {
	t.Helper()
	if len(ops) == 0 {
		t.Fatalf("Execute streamed no operation")
	}
	var resp *repb.ExecuteResponse
	for i, op := range ops {
		// "The metadata on the operation is of type ExecuteOperationMetadata."
		md := &repb.ExecuteOperationMetadata{}
		if err := op.GetMetadata().UnmarshalTo(md); err != nil {
			t.Errorf("operation %d metadata is not ExecuteOperationMetadata: %v", i, err)
		}
		if op.GetName() == "" || op.GetName() != ops[0].GetName() {
			t.Errorf("operation %d name %q (first %q)", i, op.GetName(), ops[0].GetName())
		}
		if !proto.Equal(md.GetActionDigest(), action) {
			t.Errorf("operation %d metadata action_digest %v, want %v", i, md.GetActionDigest(), action)
		}
		// "If and only if the remote execution system reports that an
		// operation has reached the COMPLETED stage, it MUST set the done
		// field of the Operation and terminate the stream."
		if (md.GetStage() == repb.ExecutionStage_COMPLETED) != op.GetDone() {
			t.Errorf("operation %d: stage %v but done=%v", i, md.GetStage(), op.GetDone())
		}
		if md.GetStage() == repb.ExecutionStage_UNKNOWN {
			t.Errorf("operation %d has stage UNKNOWN (\"Invalid value\")", i)
		}
		if op.GetDone() && i != len(ops)-1 {
			t.Errorf("the stream went on after the done operation %d", i)
		}
		// "The server MUST NOT set the error field of the Operation proto."
		if op.GetError() != nil {
			t.Errorf("operation %d has error %v", i, op.GetError())
		}
		if op.GetDone() {
			resp = &repb.ExecuteResponse{}
			if err := op.GetResponse().UnmarshalTo(resp); err != nil {
				t.Fatalf("the done operation's response is not an ExecuteResponse: %v", err)
			}
		}
	}
	if resp == nil {
		t.Fatalf("the Execute stream ended without a done operation")
	}
	return resp
}

func (c *conformanceClient) checkExecute(t *testing.T) {
	ctx := t.Context()

	t.Run("run then cache hit", func(t *testing.T) {
		tag := uuid.NewString()
		a := actionSpec{
			args:        []string{"/bin/sh", "-c", `mkdir -p d/sub && printf "$1" > f && printf x > d/sub/g && ln -s f link && printf out; printf err >&2; exit 0`, "sh", tag},
			outputPaths: []string{"d", "f", "link", "missing"},
		}.build(t)
		c.upload(t, a)
		// An unset digest_function: the server "SHOULD infer the digest
		// function using the length of the action digest hash".
		ops, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: a.action.digest})
		if err != nil {
			t.Fatalf("Execute: %v", err)
		}
		resp := checkOperationStream(t, ops, a.action.digest)
		if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("Execute: %v", resp)
		}
		// "True if the result was served from cache, false if it was executed."
		if resp.GetCachedResult() {
			t.Errorf("a fresh execution has cached_result true")
		}
		res := resp.GetResult()
		// output_paths: a file in output_files, a directory in
		// output_directories, a symlink in output_symlinks; "If the action
		// does not produce a requested output, then that output will be
		// omitted".
		if len(res.GetOutputFiles()) != 1 || res.GetOutputFiles()[0].GetPath() != "f" {
			t.Errorf("output_files %v, want just f", res.GetOutputFiles())
		} else if data, err := c.byteStreamRead(ctx, res.GetOutputFiles()[0].GetDigest()); err != nil || string(data) != tag {
			t.Errorf("output f reads %q, %v", data, err)
		}
		if len(res.GetOutputSymlinks()) != 1 || res.GetOutputSymlinks()[0].GetPath() != "link" || res.GetOutputSymlinks()[0].GetTarget() != "f" {
			t.Errorf("output_symlinks %v, want link -> f", res.GetOutputSymlinks())
		}
		if len(res.GetOutputDirectories()) != 1 || res.GetOutputDirectories()[0].GetPath() != "d" {
			t.Errorf("output_directories %v, want d", res.GetOutputDirectories())
		} else {
			od := res.GetOutputDirectories()[0]
			data, err := c.byteStreamRead(ctx, od.GetTreeDigest())
			tree := &repb.Tree{}
			if err != nil || proto.Unmarshal(data, tree) != nil {
				t.Fatalf("tree %v unreadable: %v", od.GetTreeDigest(), err)
			}
			if len(tree.GetRoot().GetDirectories()) != 1 || tree.GetRoot().GetDirectories()[0].GetName() != "sub" || len(tree.GetChildren()) != 1 {
				t.Errorf("tree of d: %v", tree)
			}
			// "If both tree_digest and root_directory_digest are set, this
			// field MUST match the digest of the root directory contained in
			// the Tree message."
			if od.GetRootDirectoryDigest() != nil && !proto.Equal(od.GetRootDirectoryDigest(), marshalBlob(t, tree.GetRoot()).digest) {
				t.Errorf("root_directory_digest %v does not match the Tree's root", od.GetRootDirectoryDigest())
			}
		}
		if out, err := c.byteStreamRead(ctx, res.GetStdoutDigest()); err != nil || string(out) != "out" {
			t.Errorf("stdout %q, %v", out, err)
		}
		if out, err := c.byteStreamRead(ctx, res.GetStderrDigest()); err != nil || string(out) != "err" {
			t.Errorf("stderr %q, %v", out, err)
		}

		// The second Execute may be served from the cache, and says so.
		ops, err = c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: a.action.digest, DigestFunction: repb.DigestFunction_SHA256})
		if err != nil {
			t.Fatalf("second Execute: %v", err)
		}
		resp2 := checkOperationStream(t, ops, a.action.digest)
		if !resp2.GetCachedResult() {
			t.Errorf("second Execute was not served from the cache")
		}
		if !proto.Equal(resp2.GetResult().GetOutputFiles()[0], res.GetOutputFiles()[0]) {
			t.Errorf("the cached result differs: %v vs %v", resp2.GetResult(), res)
		}
		// The result is in the action cache too.
		if _, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest}); err != nil {
			t.Errorf("GetActionResult after Execute: %v", err)
		}
		// skip_cache_lookup: "the action will be executed even if its result
		// is already present in the ActionCache".
		ops, err = c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: a.action.digest, SkipCacheLookup: true})
		if err != nil {
			t.Fatalf("Execute with skip_cache_lookup: %v", err)
		}
		if checkOperationStream(t, ops, a.action.digest).GetCachedResult() {
			t.Errorf("skip_cache_lookup was served from the cache")
		}
	})

	t.Run("missing blobs", func(t *testing.T) {
		// "In the case of a missing input or command, the server SHOULD
		// additionally send a PreconditionFailure error detail where, for
		// each requested blob not present in the CAS, there is a Violation
		// with a type of MISSING and a subject of
		// "blobs/{digest_function/}{hash}/{size}"."
		a := actionSpec{args: []string{"/bin/cat", "in"}, files: map[string]string{"in": "missing input " + uuid.NewString()}}.build(t)
		cmd := a.blobs[0]
		in := a.files["in"]
		c.upload(t, a, cmd, in)
		st := outcome(c.execute(ctx, a.action.digest))
		// "FAILED_PRECONDITION: One or more errors occurred in setting up the
		// action requested, such as a missing input or command".
		if st.Code() != codes.FailedPrecondition {
			t.Fatalf("Execute with a missing command and input: %v", st)
		}
		subjects := missingSubjects(st)
		for _, want := range []string{"blobs/" + cmd.String(), "blobs/" + in.String()} {
			if !strings.Contains(strings.Join(subjects, " "), want) {
				t.Errorf("no MISSING violation %s in %v", want, subjects)
			}
		}
		// A missing Action.
		ghost := uniqueBlob("ghost action")
		st = outcome(c.execute(ctx, ghost.digest))
		if st.Code() != codes.FailedPrecondition || len(missingSubjects(st)) != 1 || missingSubjects(st)[0] != "blobs/"+ghost.String() {
			t.Errorf("Execute of a missing Action: %v, subjects %v", st, missingSubjects(st))
		}
	})

	t.Run("empty input root never uploaded", func(t *testing.T) {
		// "Servers MUST behave as though empty blobs are always available":
		// the empty Directory (an empty blob) and an empty input file.
		a := actionSpec{args: []string{"/bin/sh", "-c", "exit 0"}}.build(t)
		empty := newTestBlob(nil)
		c.upload(t, a, empty)
		resp, err := c.execute(ctx, a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK {
			t.Errorf("Execute with the empty input root not uploaded: %v", st)
		}
		b := actionSpec{args: []string{"/bin/sh", "-c", "test -f e && test ! -s e"}, files: map[string]string{"e": ""}}.build(t)
		c.upload(t, b, empty)
		resp, err = c.execute(ctx, b.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
			t.Errorf("Execute with an empty input file not uploaded: %v, exit %d", st, resp.GetResult().GetExitCode())
		}
	})

	t.Run("non-zero exit", func(t *testing.T) {
		// A command that fails still completed execution: status OK,
		// exit_code set ("If the status has a code other than OK, it
		// indicates that the action did not finish execution").
		a := actionSpec{args: []string{"/bin/sh", "-c", "exit 7", uuid.NewString()}}.build(t)
		c.upload(t, a)
		resp, err := c.execute(ctx, a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 7 {
			t.Errorf("exit 7: %v, exit code %d", st, resp.GetResult().GetExitCode())
		}
	})

	t.Run("timeout", func(t *testing.T) {
		// "if the operation times out during execution, the status will have
		// a DEADLINE_EXCEEDED code." "If the status code is other than OK,
		// then the result MUST NOT be cached."
		a := actionSpec{args: []string{"/bin/sleep", "30"}, timeout: time.Second, env: map[string]string{"X": uuid.NewString()}}.build(t)
		c.upload(t, a)
		ops, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: a.action.digest})
		if err != nil {
			t.Fatalf("Execute: %v", err)
		}
		resp := checkOperationStream(t, ops, a.action.digest)
		if codes.Code(resp.GetStatus().GetCode()) != codes.DeadlineExceeded {
			t.Errorf("timed-out action: status %v, want DEADLINE_EXCEEDED", resp.GetStatus())
		}
		_, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest})
		wantCode(t, "GetActionResult of a timed-out action", err, codes.NotFound)

		// "if the client does specify a timeout that is longer than the
		// server's maximum timeout, the server MUST reject the request."
		long := actionSpec{args: []string{"/bin/true"}, timeout: 10 * 365 * 24 * time.Hour}.build(t)
		c.upload(t, long)
		st := outcome(c.execute(ctx, long.action.digest))
		if st.Code() != codes.InvalidArgument && st.Code() != codes.FailedPrecondition {
			t.Errorf("a ten-year timeout: %v, want it rejected", st)
		}
	})

	t.Run("do_not_cache", func(t *testing.T) {
		// "If true, then the Action's result cannot be cached".
		a := actionSpec{args: []string{"/bin/echo", uuid.NewString()}}.build(t)
		action := &repb.Action{}
		proto.Unmarshal(a.action.data, action)
		action.DoNotCache = true
		a.action = marshalBlob(t, action)
		a.blobs = append(a.blobs, a.action)
		c.upload(t, a)
		resp, err := c.execute(ctx, a.action.digest)
		if st := outcome(resp, err); st.Code() != codes.OK {
			t.Fatalf("Execute: %v", st)
		}
		_, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest})
		wantCode(t, "GetActionResult of a do_not_cache action", err, codes.NotFound)
	})

	t.Run("output file that is a directory", func(t *testing.T) {
		// "If an output listed in output_files was found, but was a directory
		// rather than a regular file, the server will return a
		// FAILED_PRECONDITION."
		//lint:ignore SA1019 the legacy output fields are what this check covers.
		cmd := &repb.Command{Arguments: []string{"/bin/mkdir", "-p", "o/" + uuid.NewString()[:8]}, OutputFiles: []string{"o"}}
		a := buildWithCommand(t, cmd)
		c.upload(t, a)
		st := outcome(c.execute(ctx, a.action.digest))
		if st.Code() != codes.FailedPrecondition {
			t.Errorf("output file o is a directory: %v, want FAILED_PRECONDITION", st)
		}
	})

	t.Run("output layouts", func(t *testing.T) { c.checkOutputLayouts(t) })
	c.checkExecuteMore(t)

	t.Run("instance name", func(t *testing.T) {
		// A result computed under an instance is that instance's: ActionCache
		// entries are addressed by instance and action digest.
		a := actionSpec{args: []string{"/bin/echo", uuid.NewString()}}.build(t)
		c.upload(t, a)
		ops, err := c.runOps(ctx, &repb.ExecuteRequest{InstanceName: "conformance/inst", ActionDigest: a.action.digest})
		if err != nil {
			t.Fatalf("Execute under an instance: %v", err)
		}
		checkOperationStream(t, ops, a.action.digest)
		if _, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "conformance/inst", ActionDigest: a.action.digest}); err != nil {
			t.Errorf("GetActionResult under the instance: %v", err)
		}
	})

	t.Run("bad requests", func(t *testing.T) {
		// "INVALID_ARGUMENT: One or more arguments are invalid."
		_, err := c.runOps(ctx, &repb.ExecuteRequest{})
		wantCode(t, "Execute without action_digest", err, codes.InvalidArgument)
		_, err = c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: &repb.Digest{Hash: "12", SizeBytes: 1}})
		wantCode(t, "Execute with a malformed action_digest", err, codes.InvalidArgument)
		// An Action blob that is not an Action.
		junk := uniqueBlob("\xff\xff\xff not a proto")
		if err := c.batchUpload(ctx, []testBlob{junk}); err != nil {
			t.Fatal(err)
		}
		_, err = c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: junk.digest, SkipCacheLookup: true})
		wantCode(t, "Execute of a blob that is not an Action", err, codes.InvalidArgument)
		// "If an unknown name is provided in the requirements for an Action,
		// the server SHOULD reject the execution request."
		cmd := &repb.Command{Arguments: []string{"/bin/true"}}
		cmdB := marshalBlob(t, cmd)
		root := newTestBlob(nil)
		action := &repb.Action{CommandDigest: cmdB.digest, InputRootDigest: root.digest,
			Platform: &repb.Platform{Properties: []*repb.Platform_Property{{Name: "no-such-property-" + uuid.NewString(), Value: "1"}}}}
		actB := marshalBlob(t, action)
		if err := c.batchUpload(ctx, []testBlob{cmdB, actB}); err != nil {
			t.Fatal(err)
		}
		st := outcome(c.execute(ctx, actB.digest))
		if st.Code() == codes.OK {
			t.Errorf("an unknown platform property was accepted")
		}
		// output_node_properties: "If a property is not recognized by the
		// server, the server will return an INVALID_ARGUMENT."
		a := buildWithCommand(t, &repb.Command{Arguments: []string{"/bin/true"}, OutputNodeProperties: []string{"no_such_property"}})
		c.upload(t, a)
		if st := outcome(c.execute(ctx, a.action.digest)); st.Code() != codes.InvalidArgument {
			t.Errorf("unknown output_node_properties: %v, want INVALID_ARGUMENT", st)
		}
		// output paths: "The path MUST NOT include a trailing slash, nor a
		// leading slash"; an output file cannot "have the same path as any of
		// the listed output directories"; output_paths "MUST be deduplicated".
		for _, cmd := range []*repb.Command{
			{Arguments: []string{"/bin/true"}, OutputPaths: []string{"o/"}},
			{Arguments: []string{"/bin/true"}, OutputPaths: []string{"/o"}},
			{Arguments: []string{"/bin/true"}, OutputPaths: []string{"a", "a"}},
			{Arguments: []string{"/bin/true"}, OutputFiles: []string{"a"}, OutputDirectories: []string{"a"}},
		} {
			a := buildWithCommand(t, cmd)
			c.upload(t, a)
			if st := outcome(c.execute(ctx, a.action.digest)); st.Code() != codes.InvalidArgument {
				t.Errorf("Command %v: %v, want INVALID_ARGUMENT", cmd, st)
			}
		}
		// A Directory in canonical form: "The files, directories and
		// symlinks in the directory must each be sorted in lexicographical
		// order by path"; "The NodeProperties of files, directories, and
		// symlinks must be sorted in lexicographical order by property name."
		empty := newTestBlob(nil)
		for what, root := range map[string]*repb.Directory{
			"unsorted files": {Files: []*repb.FileNode{{Name: "b", Digest: empty.digest}, {Name: "a", Digest: empty.digest}}},
			"unsorted node properties": {Files: []*repb.FileNode{{Name: "f", Digest: empty.digest, NodeProperties: &repb.NodeProperties{
				Properties: []*repb.NodeProperty{{Name: "z"}, {Name: "a"}}}}}},
			"a name with a slash": {Files: []*repb.FileNode{{Name: "a/b", Digest: empty.digest}}},
		} {
			rootB := c.putDirectory(t, root)
			cmdB := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/true", uuid.NewString()}})
			actB := marshalBlob(t, &repb.Action{CommandDigest: cmdB.digest, InputRootDigest: rootB.digest})
			if err := c.batchUpload(ctx, []testBlob{cmdB, actB}); err != nil {
				t.Fatal(err)
			}
			if st := outcome(c.execute(ctx, actB.digest)); st.Code() != codes.InvalidArgument {
				t.Errorf("input root with %s: %v, want INVALID_ARGUMENT", what, st)
			}
		}
	})
}
