package e2e

import (
	"bytes"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// putResult stores r for a fresh uploaded Action and returns the Action's
// digest and UpdateActionResult's answer.
func (c *conformanceClient) putResult(t *testing.T, r *repb.ActionResult) (*repb.Digest, *repb.ActionResult, error) {
	t.Helper()
	a := actionSpec{args: []string{"/bin/echo", uuid.NewString()}}.build(t)
	c.upload(t, a)
	ret, err := c.ac.UpdateActionResult(t.Context(), &repb.UpdateActionResultRequest{ActionDigest: a.action.digest, ActionResult: r})
	return a.action.digest, ret, err
}

func (c *conformanceClient) checkActionCacheResults(t *testing.T) {
	ctx := t.Context()
	out1, out2 := uniqueBlob("ac out 1"), uniqueBlob("ac out 2")
	stdout, stderr := uniqueBlob("ac results stdout"), uniqueBlob("ac results stderr")
	treeFile := uniqueBlob("ac tree file")
	tree := marshalBlob(t, &repb.Tree{Root: &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: treeFile.digest}}}})
	if err := c.batchUpload(ctx, []testBlob{out1, out2, stdout, stderr, treeFile, tree}); err != nil {
		t.Fatal(err)
	}
	result := &repb.ActionResult{
		ExitCode:          1,
		OutputFiles:       []*repb.OutputFile{{Path: "o/1", Digest: out1.digest}, {Path: "o/2", Digest: out2.digest}},
		OutputDirectories: []*repb.OutputDirectory{{Path: "dir", TreeDigest: tree.digest}},
		OutputSymlinks:    []*repb.OutputSymlink{{Path: "link", Target: "o/1"}},
		StdoutDigest:      stdout.digest,
		StderrDigest:      stderr.digest,
	}
	action, ret, err := c.putResult(t, result)
	if err != nil {
		t.Fatalf("UpdateActionResult: %v", err)
	}
	// "Server implementations MAY modify the action_result and return an
	// equivalent value": what was returned and what is served keep every
	// output the client stored.
	same := func(what string, got *repb.ActionResult) {
		t.Helper()
		if got.GetExitCode() != 1 || len(got.GetOutputFiles()) != 2 || len(got.GetOutputDirectories()) != 1 || len(got.GetOutputSymlinks()) != 1 ||
			!proto.Equal(got.GetOutputDirectories()[0].GetTreeDigest(), tree.digest) || got.GetOutputDirectories()[0].GetPath() != "dir" ||
			got.GetOutputSymlinks()[0].GetTarget() != "o/1" || !proto.Equal(got.GetStderrDigest(), stderr.digest) || !proto.Equal(got.GetStdoutDigest(), stdout.digest) {
			t.Errorf("%s: %v, not equivalent to the stored %v", what, got, result)
		}
	}
	same("UpdateActionResult's answer", ret)

	// inline_stderr is "A hint to the server to request inlining stderr",
	// and stdout "SHOULD NOT" be inlined unless requested (nor stderr).
	got, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action, InlineStderr: true})
	if err != nil {
		t.Fatalf("GetActionResult inline_stderr: %v", err)
	}
	same("GetActionResult", got)
	if !bytes.Equal(got.GetStderrRaw(), stderr.data) {
		t.Errorf("small stderr not inlined on request: %q", got.GetStderrRaw())
	}
	if len(got.GetStdoutRaw()) > 0 {
		t.Errorf("stdout inlined without being asked")
	}
	// inline_output_files: "the contents of the listed output files" and
	// only those; a listed path that is no output is nothing to inline.
	got, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action, InlineOutputFiles: []string{"o/2", "no/such/output", "dir"}})
	if err != nil {
		t.Fatalf("GetActionResult inline_output_files: %v", err)
	}
	for _, f := range got.GetOutputFiles() {
		switch f.GetPath() {
		case "o/1":
			if len(f.GetContents()) > 0 {
				t.Errorf("o/1 inlined without being listed")
			}
		case "o/2":
			if !bytes.Equal(f.GetContents(), out2.data) {
				t.Errorf("listed o/2 not inlined: %q", f.GetContents())
			}
		}
	}
	if len(got.GetStderrRaw()) > 0 || len(got.GetStdoutRaw()) > 0 {
		t.Errorf("stdout/stderr inlined when only output files were asked for")
	}

	// Inlining: "The server MAY omit inlining, even if requested, and MUST
	// do so if inlining would cause the response to exceed message size
	// limits" — here a client with gRPC's default 4 MiB limit asks for 6 MiB.
	big1, big2 := noiseBlob(3<<20), noiseBlob(3<<20)
	for _, b := range []testBlob{big1, big2} {
		if err := c.byteStreamWrite(ctx, b, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	bigAction, _, err := c.putResult(t, &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "big1", Digest: big1.digest}, {Path: "big2", Digest: big2.digest}}})
	if err != nil {
		t.Fatalf("UpdateActionResult with two 3 MiB outputs: %v", err)
	}
	smallAC := repb.NewActionCacheClient(c.dialDefaultLimits(t).conn)
	got, err = smallAC.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: bigAction, InlineOutputFiles: []string{"big1", "big2"}})
	if err != nil {
		t.Errorf("GetActionResult inlining 6 MiB for a client with default limits: %v", err)
	}
	for _, f := range got.GetOutputFiles() {
		if len(f.GetContents()) > 0 && !bytes.Equal(f.GetContents(), map[string][]byte{"big1": big1.data, "big2": big2.data}[f.GetPath()]) {
			t.Errorf("inlined %s differs from its blob", f.GetPath())
		}
	}

	// "INVALID_ARGUMENT: One or more arguments are invalid": a request
	// without the action digest names no action.
	_, err = c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{})
	wantCode(t, "GetActionResult without action_digest", err, codes.InvalidArgument)
	_, err = c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionResult: result})
	wantCode(t, "UpdateActionResult without action_digest", err, codes.InvalidArgument)
	// "the client MUST first upload the Action that produced the result,
	// along with its Command"; "FAILED_PRECONDITION: One or more errors
	// occurred in updating the action result, such as a missing command or
	// action."
	never := uniqueBlob("an action never uploaded")
	_, err = c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: never.digest, ActionResult: result})
	wantCode(t, "UpdateActionResult of an Action not in the CAS", err, codes.FailedPrecondition)
	cmd := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/echo", uuid.NewString()}})
	alone := marshalBlob(t, &repb.Action{CommandDigest: cmd.digest, InputRootDigest: newTestBlob(nil).digest})
	if err := c.batchUpload(ctx, []testBlob{alone}); err != nil {
		t.Fatal(err)
	}
	_, err = c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: alone.digest, ActionResult: result})
	wantCode(t, "UpdateActionResult of an Action whose Command is not in the CAS", err, codes.FailedPrecondition)
	if err := c.batchUpload(ctx, []testBlob{cmd}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: alone.digest, ActionResult: result}); err != nil {
		t.Errorf("UpdateActionResult once the Command is uploaded too: %v", err)
	}

	// "Implementations SHOULD ensure that any blobs referenced from the
	// ContentAddressableStorage are available at the time of returning the
	// ActionResult": a result is refused or not served when its stdout, an
	// output directory's Tree, or a file inside that Tree is missing.
	gone := func(what string) *repb.Digest { return uniqueBlob("never uploaded " + what).digest }
	lostFileTree := marshalBlob(t, &repb.Tree{Root: &repb.Directory{Files: []*repb.FileNode{{Name: "lost", Digest: gone("tree file")}}}})
	if err := c.batchUpload(ctx, []testBlob{lostFileTree}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		r    *repb.ActionResult
	}{
		{"stdout", &repb.ActionResult{StdoutDigest: gone("stdout")}},
		{"stderr", &repb.ActionResult{StderrDigest: gone("stderr")}},
		{"output directory tree", &repb.ActionResult{OutputDirectories: []*repb.OutputDirectory{{Path: "d", TreeDigest: gone("tree")}}}},
		{"file inside a tree", &repb.ActionResult{OutputDirectories: []*repb.OutputDirectory{{Path: "d", TreeDigest: lostFileTree.digest}}}},
	} {
		d, _, uerr := c.putResult(t, tc.r)
		if uerr != nil {
			if codeOf(uerr) != codes.FailedPrecondition && codeOf(uerr) != codes.InvalidArgument {
				t.Errorf("UpdateActionResult with a missing %s: %v", tc.name, uerr)
			}
			continue
		}
		_, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: d})
		wantCode(t, "GetActionResult whose "+tc.name+" blob is missing", err, codes.NotFound)
	}
}
