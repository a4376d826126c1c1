package e2e

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func (c *conformanceClient) checkTimeoutOutput(t *testing.T) {
	// ExecuteResponse.status: "For an error status, the result field is
	// optional; the server may populate the output-, stdout-, and
	// stderr-related fields if it has any information available, such as the
	// stdout and stderr of a timed-out action." Hearth does, so a user sees
	// how far a hung action got.
	tag := uuid.NewString()
	a := actionSpec{
		args:        []string{"/bin/sh", "-c", `printf 'before %s' "$1"; printf e >&2; echo partial > o; exec sleep 30`, "sh", tag},
		timeout:     time.Second,
		outputPaths: []string{"o"},
	}.build(t)
	c.upload(t, a)
	ops, err := c.runOps(t.Context(), &repb.ExecuteRequest{ActionDigest: a.action.digest})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	resp := checkOperationStream(t, ops, a.action.digest)
	if codes.Code(resp.GetStatus().GetCode()) != codes.DeadlineExceeded {
		t.Fatalf("timed-out action: status %v, want DEADLINE_EXCEEDED", resp.GetStatus())
	}
	if resp.GetCachedResult() {
		t.Errorf("a timed-out execution claims cached_result")
	}
	if got := c.stdoutOf(t, resp.GetResult()); got != "before "+tag {
		t.Errorf("timed-out action: stdout %q, want the partial %q", got, "before "+tag)
	}
	if of := resp.GetResult().GetOutputFiles(); len(of) != 1 || of[0].GetPath() != "o" {
		t.Errorf("timed-out action: output files %v, want the partial o", of)
	}
}

func (c *conformanceClient) checkCachedResult(t *testing.T) {
	ctx := t.Context()
	// ExecuteResponse.cached_result: "True if the result was served from
	// cache": an ActionResult a client put in the ActionCache is what Execute
	// returns.
	a := actionSpec{args: []string{"/bin/echo", uuid.NewString()}}.build(t)
	c.upload(t, a)
	stdout := uniqueBlob("uploaded stdout")
	if err := c.batchUpload(ctx, []testBlob{stdout}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: a.action.digest, ActionResult: &repb.ActionResult{StdoutDigest: stdout.digest}}); err != nil {
		t.Fatalf("UpdateActionResult: %v", err)
	}
	ops, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: a.action.digest})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	resp := checkOperationStream(t, ops, a.action.digest)
	if !resp.GetCachedResult() || !proto.Equal(resp.GetResult().GetStdoutDigest(), stdout.digest) {
		t.Errorf("Execute of an action in the cache: cached_result %v, stdout %v; want true, %v", resp.GetCachedResult(), resp.GetResult().GetStdoutDigest(), stdout.digest)
	}

	// A failed execution: nothing says a non-zero exit may not be cached,
	// but a result served from the cache must say so and must be the result
	// that ran; an uncached one must run again.
	f := actionSpec{args: []string{"/bin/sh", "-c", "exit 3", uuid.NewString()}}.build(t)
	c.upload(t, f)
	ops, err = c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: f.action.digest})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if r := checkOperationStream(t, ops, f.action.digest); r.GetResult().GetExitCode() != 3 || r.GetCachedResult() {
		t.Fatalf("exit 3: %v", r)
	}
	ops, err = c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: f.action.digest})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	if r := checkOperationStream(t, ops, f.action.digest); r.GetResult().GetExitCode() != 3 {
		t.Errorf("exit 3 again: exit code %d (cached %v)", r.GetResult().GetExitCode(), r.GetCachedResult())
	}

	// do_not_cache: "in-flight requests for the same Action may not be
	// merged": two concurrent Executes are two operations.
	d := actionSpec{args: []string{"/bin/sleep", "1"}, env: map[string]string{"X": uuid.NewString()},
		editAction: func(a *repb.Action) { a.DoNotCache = true }}.build(t)
	c.upload(t, d)
	names := make(chan string, 2)
	for range 2 {
		go func() {
			ops, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: d.action.digest})
			if err != nil || len(ops) == 0 {
				names <- "error: " + errString(err)
				return
			}
			names <- ops[0].GetName()
		}()
	}
	n1, n2 := <-names, <-names
	if n1 == n2 || strings.HasPrefix(n1, "error") || strings.HasPrefix(n2, "error") {
		t.Errorf("two concurrent do_not_cache Executes: operations %q and %q, want two", n1, n2)
	}
}

func errString(err error) string {
	if err == nil {
		return "no operation"
	}
	return err.Error()
}

func (c *conformanceClient) checkBadActions(t *testing.T) {
	ctx := t.Context()
	root := newTestBlob(nil)
	// "INVALID_ARGUMENT: One or more arguments are invalid."
	for what, tc := range map[string]struct {
		cmd    *repb.Command
		action func(*repb.Action)
	}{
		"no arguments":       {cmd: &repb.Command{}},
		"a negative timeout": {cmd: &repb.Command{Arguments: []string{"/bin/true"}}, action: func(a *repb.Action) { a.Timeout = durationpb.New(-time.Second) }},
		"no command digest":  {cmd: &repb.Command{Arguments: []string{"/bin/true"}}, action: func(a *repb.Action) { a.CommandDigest = nil }},
		"a malformed input root digest": {cmd: &repb.Command{Arguments: []string{"/bin/true"}}, action: func(a *repb.Action) {
			a.InputRootDigest = &repb.Digest{Hash: "nothex", SizeBytes: 2}
		}},
		"an output path with ..":        {cmd: &repb.Command{Arguments: []string{"/bin/true"}, OutputPaths: []string{"../escape"}}},
		"a working directory with ..":   {cmd: &repb.Command{Arguments: []string{"/bin/true"}, WorkingDirectory: "../x"}},
		"an absolute working directory": {cmd: &repb.Command{Arguments: []string{"/bin/true"}, WorkingDirectory: "/tmp"}},
		// "An output file cannot be duplicated, be a parent of another
		// output file".
		//lint:ignore SA1019 the legacy output fields are what this check covers.
		"an output file parent of another": {cmd: &repb.Command{Arguments: []string{"/bin/true"}, OutputFiles: []string{"a", "a/b"}}},
		// Canonical Commands: "the environment variables MUST be
		// lexicographically sorted by name"; output paths "MUST be sorted".
		// These are the client's MUSTs; Hearth rejects a Command that breaks
		// them rather than hash-split equivalent actions silently.
		"unsorted environment variables": {cmd: &repb.Command{Arguments: []string{"/bin/true"}, EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "B"}, {Name: "A"}}}},
		"a variable set twice":           {cmd: &repb.Command{Arguments: []string{"/bin/true"}, EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "A", Value: "1"}, {Name: "A", Value: "2"}}}},
		"unsorted output_paths":          {cmd: &repb.Command{Arguments: []string{"/bin/true"}, OutputPaths: []string{"b", "a"}}},
		// Platform: "the properties MUST be lexicographically sorted by
		// name, and then by value".
		"unsorted platform properties": {cmd: &repb.Command{Arguments: []string{"/bin/true"}}, action: func(a *repb.Action) {
			a.Platform = &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}, {Name: "Arch", Value: "amd64"}}}
		}},
		//lint:ignore SA1019 the legacy output fields are what this check covers.
		"a duplicated output directory": {cmd: &repb.Command{Arguments: []string{"/bin/true"}, OutputDirectories: []string{"d", "d"}}},
	} {
		tc.cmd.Arguments = append(tc.cmd.Arguments, uuid.NewString())
		if len(tc.cmd.Arguments) == 1 {
			tc.cmd.Arguments = nil
			tc.cmd.EnvironmentVariables = []*repb.Command_EnvironmentVariable{{Name: "U", Value: uuid.NewString()}}
		}
		cmdB := marshalBlob(t, tc.cmd)
		action := &repb.Action{CommandDigest: cmdB.digest, InputRootDigest: root.digest}
		if tc.action != nil {
			tc.action(action)
		}
		actB := marshalBlob(t, action)
		if err := c.batchUpload(ctx, []testBlob{cmdB, actB}); err != nil {
			t.Fatal(err)
		}
		if st := outcome(c.execute(ctx, actB.digest)); st.Code() != codes.InvalidArgument {
			t.Errorf("Action with %s: %v, want INVALID_ARGUMENT", what, st)
		}
	}
}

// checkOperationsMore covers the rest of google.longrunning.Operations and
// WaitExecution of a running operation.
func (c *conformanceClient) checkOperationsMore(t *testing.T) {
	ctx := t.Context()
	unknown := "operations/" + uuid.NewString()
	// google.longrunning: GetOperation/DeleteOperation/WaitOperation of a
	// name the server never issued: NOT_FOUND, or UNIMPLEMENTED for a
	// method the server does not support ("If the server doesn't support
	// this method, it returns google.rpc.Code.UNIMPLEMENTED").
	_, err := c.ops.DeleteOperation(ctx, &longrunningpb.DeleteOperationRequest{Name: unknown})
	deleteSupported := codeOf(err) != codes.Unimplemented
	if deleteSupported {
		wantCode(t, "DeleteOperation of an unknown operation", err, codes.NotFound)
	}
	_, err = c.ops.WaitOperation(ctx, &longrunningpb.WaitOperationRequest{Name: unknown})
	waitSupported := codeOf(err) != codes.Unimplemented
	if waitSupported {
		wantCode(t, "WaitOperation of an unknown operation", err, codes.NotFound)
	}
	if _, err := c.ops.ListOperations(ctx, &longrunningpb.ListOperationsRequest{Name: "operations"}); err != nil && codeOf(err) != codes.Unimplemented {
		t.Errorf("ListOperations: %v, want a list or UNIMPLEMENTED", err)
	}

	// Execute: "If the client remains connected after the first response
	// ... updates are streamed as if the client had called WaitExecution".
	// WaitExecution of a running operation: "the server immediately responds
	// with the current status of the execution. The server will leave the
	// request stream open until the operation completes, and then respond
	// with the completed operation."
	slow := actionSpec{args: []string{"/bin/sh", "-c", "sleep 2; echo done"}, env: map[string]string{"X": uuid.NewString()}}.build(t)
	c.upload(t, slow)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := c.exec.Execute(cctx, &repb.ExecuteRequest{ActionDigest: slow.action.digest})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	cancel() // the client goes away; the operation goes on
	if first.GetDone() {
		t.Fatalf("a two-second action was done at once")
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	w, err := c.exec.WaitExecution(wctx, &repb.WaitExecutionRequest{Name: first.GetName()})
	if err != nil {
		t.Fatalf("WaitExecution(%s): %v", first.GetName(), err)
	}
	var waited []*longrunningpb.Operation
	for {
		op, err := w.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("WaitExecution(%s) of a running operation: %v", first.GetName(), err)
		}
		waited = append(waited, op)
	}
	resp := checkOperationStream(t, waited, slow.action.digest)
	if resp.GetStatus().GetCode() != 0 || c.stdoutOf(t, resp.GetResult()) != "done\n" {
		t.Errorf("WaitExecution after the Execute client left: %v", resp)
	}
	name := first.GetName()
	if waitSupported {
		// WaitOperation: "Waits until the specified long-running operation is
		// done or reaches at most a specified timeout, returning the latest
		// state."
		op, err := c.ops.WaitOperation(ctx, &longrunningpb.WaitOperationRequest{Name: name, Timeout: durationpb.New(10 * time.Second)})
		if err != nil {
			t.Errorf("WaitOperation(%s) of a done operation: %v", name, err)
		} else if !op.GetDone() {
			t.Errorf("WaitOperation(%s) of a done operation: not done", name)
		}
	}
	if deleteSupported {
		// DeleteOperation: "This method indicates that the client is no
		// longer interested in the operation result." Afterwards the name
		// is forgotten: WaitExecution "NOT_FOUND: ... if the server
		// implements the Operations API DeleteOperation method and it was
		// called for the current execution."
		if _, err := c.ops.DeleteOperation(ctx, &longrunningpb.DeleteOperationRequest{Name: name}); err != nil {
			t.Errorf("DeleteOperation(%s): %v", name, err)
		}
		_, err := c.ops.GetOperation(ctx, &longrunningpb.GetOperationRequest{Name: name})
		wantCode(t, "GetOperation after DeleteOperation", err, codes.NotFound)
	}
}

// checkExecuteRequests covers ExecuteRequest fields, missing blobs deeper in
// the tree, and platforms.
func (c *conformanceClient) checkExecuteRequests(t *testing.T) {
	ctx := t.Context()
	tag := uuid.NewString()

	// Missing blobs below the root: "for each requested blob not present in
	// the CAS, there is a Violation with a type of MISSING" — a Directory
	// and a file one level down are requested blobs too.
	gone := uniqueBlob("missing nested file")
	goneDir := marshalBlob(t, &repb.Directory{Files: []*repb.FileNode{{Name: "x", Digest: uniqueBlob("x").digest}}})
	sub := c.putDirectory(t, &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: gone.digest}}})
	root := c.putDirectory(t, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "a", Digest: sub.digest}, {Name: "b", Digest: goneDir.digest}}})
	cmd := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/true", tag}})
	act := marshalBlob(t, &repb.Action{CommandDigest: cmd.digest, InputRootDigest: root.digest})
	if err := c.batchUpload(ctx, []testBlob{cmd, act}); err != nil {
		t.Fatal(err)
	}
	st := outcome(c.execute(ctx, act.digest))
	subjects := strings.Join(missingSubjects(st), " ")
	if st.Code() != codes.FailedPrecondition || !strings.Contains(subjects, "blobs/"+gone.String()) || !strings.Contains(subjects, "blobs/"+goneDir.String()) {
		t.Errorf("nested missing file and Directory: %v, MISSING %v; want blobs/%s and blobs/%s", st, subjects, gone, goneDir)
	}
	// A missing input root.
	ghostRoot := marshalBlob(t, &repb.Directory{Files: []*repb.FileNode{{Name: tag, Digest: newTestBlob(nil).digest}}})
	act2 := marshalBlob(t, &repb.Action{CommandDigest: cmd.digest, InputRootDigest: ghostRoot.digest})
	if err := c.batchUpload(ctx, []testBlob{act2}); err != nil {
		t.Fatal(err)
	}
	st = outcome(c.execute(ctx, act2.digest))
	if st.Code() != codes.FailedPrecondition || !strings.Contains(strings.Join(missingSubjects(st), " "), "blobs/"+ghostRoot.String()) {
		t.Errorf("missing input root: %v, MISSING %v", st, missingSubjects(st))
	}
	// "`digest_function` MUST thus be omitted if its value is one of MD5,
	// MURMUR3, SHA1, SHA256, SHA384, SHA512, or VSO" — and so present for
	// BLAKE3: "blobs/{digest_function/}{hash}/{size}".
	bcmd := blake3Blob([]byte("missing blake3 command " + tag))
	bact := blake3Proto(t, &repb.Action{CommandDigest: bcmd.digest, InputRootDigest: blake3Blob(nil).digest})
	resp, err := c.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_BLAKE3,
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: bact.digest, Data: bact.data}}})
	if err != nil || resp.GetResponses()[0].GetStatus().GetCode() != 0 {
		t.Fatalf("uploading a BLAKE3 Action: %v, %v", resp, err)
	}
	s, err := c.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: bact.digest, DigestFunction: repb.DigestFunction_BLAKE3})
	var bresp *repb.ExecuteResponse
	if err == nil {
		var op *longrunningpb.Operation
		for err == nil && !op.GetDone() {
			op, err = s.Recv()
		}
		if err == nil {
			bresp = &repb.ExecuteResponse{}
			_ = op.GetResponse().UnmarshalTo(bresp)
		}
	}
	st = outcome(bresp, err)
	if want := "blobs/blake3/" + bcmd.String(); st.Code() != codes.FailedPrecondition || !slices.Contains(missingSubjects(st), want) {
		t.Errorf("BLAKE3 action with a missing Command: %v, MISSING %v; want %s", st, missingSubjects(st), want)
	}

	// Digest functions: a hash whose length fits no function, or a function
	// the server does not announce.
	for what, req := range map[string]*repb.ExecuteRequest{
		"a SHA256 request with a 40-digit hash": {ActionDigest: &repb.Digest{Hash: strings.Repeat("a", 40), SizeBytes: 3}, DigestFunction: repb.DigestFunction_SHA256},
		"digest_function MD5":                   {ActionDigest: act.digest, DigestFunction: repb.DigestFunction_MD5},
	} {
		_, err := c.runOps(ctx, req)
		wantCode(t, "Execute with "+what, err, codes.InvalidArgument)
	}

	// skip_cache_lookup: "services SHOULD overwrite any existing entries that
	// may exist. This allows skip_cache_lookup requests to be used as a
	// mechanism for replacing action cache entries".
	a := actionSpec{args: []string{"/bin/echo", "fresh " + tag}}.build(t)
	c.upload(t, a)
	stale := uniqueBlob("stale stdout")
	if err := c.batchUpload(ctx, []testBlob{stale}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: a.action.digest, ActionResult: &repb.ActionResult{StdoutDigest: stale.digest}}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.execute(ctx, a.action.digest); outcome(r, err).Code() != codes.OK {
		t.Fatalf("Execute with skip_cache_lookup: %v", outcome(r, err))
	}
	ar, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.action.digest})
	if err != nil || proto.Equal(ar.GetStdoutDigest(), stale.digest) {
		t.Errorf("after skip_cache_lookup the action cache still holds the old result: %v, %v", ar, err)
	}

	// inline_stdout, inline_stderr, inline_output_files: "A hint to the
	// server to request inlining"; as for GetActionResult, small blobs fit
	// and come back inline, with their digests kept.
	b := actionSpec{args: []string{"/bin/sh", "-c", "printf o; printf e >&2; printf f > f; printf g > g; : " + tag}, outputPaths: []string{"f", "g"}}.build(t)
	c.upload(t, b)
	for _, skip := range []bool{true, false} { // executed, then from the cache
		ops, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: b.action.digest, SkipCacheLookup: skip, InlineStdout: true, InlineStderr: true, InlineOutputFiles: []string{"f"}})
		if err != nil {
			t.Fatalf("Execute with inlining: %v", err)
		}
		resp := checkOperationStream(t, ops, b.action.digest)
		res := resp.GetResult()
		if string(res.GetStdoutRaw()) != "o" || string(res.GetStderrRaw()) != "e" || res.GetStdoutDigest() == nil {
			t.Errorf("cached %v: stdout_raw %q, stderr_raw %q (digest %v); want o, e", resp.GetCachedResult(), res.GetStdoutRaw(), res.GetStderrRaw(), res.GetStdoutDigest())
		}
		for _, f := range res.GetOutputFiles() {
			if want := map[string]string{"f": "f", "g": ""}[f.GetPath()]; string(f.GetContents()) != want {
				t.Errorf("cached %v: contents of %s %q, want %q", resp.GetCachedResult(), f.GetPath(), f.GetContents(), want)
			}
		}
	}
	// The action cache keeps digests only: inlining was for that response.
	if ar, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: b.action.digest}); err != nil || len(ar.GetStdoutRaw()) > 0 {
		t.Errorf("GetActionResult after an inlining Execute: %v, %v", ar, err)
	}

	// Action.platform: "New in version 2.2: clients SHOULD set these
	// platform properties as well as those in the Command. Servers SHOULD
	// prefer those set here." A pre-2.2 client sets only Command.platform,
	// which then is the action's platform.
	unknown := &repb.Platform{Properties: []*repb.Platform_Property{{Name: "no-such-property-" + tag, Value: "1"}}}
	linux := &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "linux"}}}
	for what, tc := range map[string]struct {
		action, command *repb.Platform
		runs            bool
	}{
		"an unknown property in Command.platform only":    {nil, unknown, false},
		"Action.platform known, Command.platform unknown": {linux, unknown, true},
		"Action.platform unknown, Command.platform known": {unknown, linux, false},
	} {
		//lint:ignore SA1019 Command.platform is what pre-2.2 clients send.
		cmdB := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/true", what}, Platform: tc.command})
		actB := marshalBlob(t, &repb.Action{CommandDigest: cmdB.digest, InputRootDigest: newTestBlob(nil).digest, Platform: tc.action})
		if err := c.batchUpload(ctx, []testBlob{cmdB, actB}); err != nil {
			t.Fatal(err)
		}
		if st := outcome(c.execute(ctx, actB.digest)); (st.Code() == codes.OK) != tc.runs {
			t.Errorf("%s: %v, want it run: %v", what, st, tc.runs)
		}
	}
}
