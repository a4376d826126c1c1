package e2e

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
)

// TestConformanceEvictedInput: the Execution service remembers the input
// subtrees it found complete, so it does not probe them again for a while.
// When a blob of such a subtree is evicted from the (bounded) CAS meanwhile,
// the action must still end with FAILED_PRECONDITION and a MISSING violation
// naming the blob, "FAILED_PRECONDITION: One or more errors occurred in
// setting up the action requested, such as a missing input", wherever the
// server reports it (the Execute call or ExecuteResponse.status), and run
// once the client uploads the blob again.
func TestConformanceEvictedInput(t *testing.T) {
	const bound = 256 << 10
	p := startServe(t, t.TempDir(), "--cas-max-bytes", "262144")
	c := dial(t, p.GRPCAddr)
	ctx := t.Context()
	cc := &conformanceClient{reapiClient: c}

	tool := uniqueBlob("the input that will be evicted")
	tools := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: tool.digest}}}
	toolsB := cc.putDirectory(t, tools)
	if err := c.batchUpload(ctx, []testBlob{tool}); err != nil {
		t.Fatal(err)
	}

	// Action A is valid and complete but cannot be scheduled: the server
	// checks (and remembers) its input root, then refuses it.
	rootA := cc.putDirectory(t, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "tools", Digest: toolsB.digest}}})
	cmdA := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/cat", "tools/f"}})
	actA := marshalBlob(t, &repb.Action{CommandDigest: cmdA.digest, InputRootDigest: rootA.digest,
		Platform: &repb.Platform{Properties: []*repb.Platform_Property{{Name: "hearth-e2e-no-such-property", Value: uuid.NewString()}}}})
	if err := c.batchUpload(ctx, []testBlob{cmdA, actA}); err != nil {
		t.Fatal(err)
	}
	if st := outcome(c.execute(ctx, actA.digest)); st.Code() != codes.FailedPrecondition || len(missingSubjects(st)) > 0 {
		t.Fatalf("Execute of the unschedulable action: %v (missing %v), want FAILED_PRECONDITION without missing blobs", st, missingSubjects(st))
	}

	// Newer blobs push the tool out of the store.
	for i := range 3 {
		filler := uniqueBlob(strings.Repeat("filler ", bound/2/7) + string(rune('a'+i)))
		if err := c.batchUpload(ctx, []testBlob{filler}); err != nil {
			t.Fatal(err)
		}
	}
	// Action B shares the tools subtree; everything but the tool is
	// uploaded (again).
	main := uniqueBlob("main input")
	rootB := marshalBlob(t, &repb.Directory{
		Files:       []*repb.FileNode{{Name: "main", Digest: main.digest}},
		Directories: []*repb.DirectoryNode{{Name: "tools", Digest: toolsB.digest}},
	})
	cmdB := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/cat", "tools/f", "main"}})
	actB := marshalBlob(t, &repb.Action{CommandDigest: cmdB.digest, InputRootDigest: rootB.digest})
	if err := c.batchUpload(ctx, []testBlob{toolsB, main, rootB, cmdB, actB}); err != nil {
		t.Fatal(err)
	}
	if m, err := c.findMissing(ctx, []*repb.Digest{tool.digest, toolsB.digest, actB.digest}); err != nil || !m[tool.digest.Hash] || len(m) != 1 {
		t.Fatalf("FindMissingBlobs after the fillers: %v, %v; want just the tool evicted", m, err)
	}

	resp, err := c.execute(ctx, actB.digest)
	t.Logf("the evicted tool was reported by the Execute call: %v; in ExecuteResponse.status: %v", err != nil, resp.GetStatus() != nil)
	st := outcome(resp, err)
	if st.Code() != codes.FailedPrecondition || !slices.Contains(missingSubjects(st), "blobs/"+tool.String()) {
		t.Fatalf("Execute with an evicted input: %v (missing %v), want FAILED_PRECONDITION with MISSING blobs/%s", st, missingSubjects(st), tool)
	}

	if err := c.batchUpload(ctx, []testBlob{tool}); err != nil {
		t.Fatal(err)
	}
	resp, err = c.execute(ctx, actB.digest)
	if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("Execute after uploading the tool again: %v, exit code %d", st, resp.GetResult().GetExitCode())
	}
	out, err := c.byteStreamRead(ctx, resp.GetResult().GetStdoutDigest())
	if want := append(append([]byte(nil), tool.data...), main.data...); err != nil || !bytes.Equal(out, want) {
		t.Errorf("stdout %q, %v; want %q", out, err, want)
	}
}
