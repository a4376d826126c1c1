package reapi

import (
	"bytes"
	"context"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
)

// Execute honours inline_stdout, inline_stderr and inline_output_files for
// a result served from the cache, inlines nothing unasked, and leaves the
// stored result as it was.
func TestExecuteInlinesWhatTheRequestAsks(t *testing.T) {
	e := startExecution(t)
	blobs := putBlobs(t, e.cfg.CAS, digest.SHA256, []byte("out"), []byte("err"), []byte("file a"), []byte("file b"))
	stored := &repb.ActionResult{
		StdoutDigest: blobs[0].Proto(),
		StderrDigest: blobs[1].Proto(),
		OutputFiles:  []*repb.OutputFile{{Path: "a", Digest: blobs[2].Proto()}, {Path: "b", Digest: blobs[3].Proto()}},
	}
	action := e.store(t, validSpec())
	if err := e.cfg.ActionCache.Put(context.Background(), "", action, stored); err != nil {
		t.Fatal(err)
	}
	run := func(req *repb.ExecuteRequest) *repb.ActionResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req.ActionDigest = action.Proto()
		s, err := e.exec.Execute(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for {
			op, err := s.Recv()
			if err != nil {
				t.Fatalf("Execute: %v", err)
			}
			if op.GetDone() {
				resp := &repb.ExecuteResponse{}
				if err := op.GetResponse().UnmarshalTo(resp); err != nil || !resp.GetCachedResult() {
					t.Fatalf("response %v, %v; want a cached result", resp, err)
				}
				return resp.GetResult()
			}
		}
	}
	got := run(&repb.ExecuteRequest{InlineStdout: true, InlineOutputFiles: []string{"b"}})
	if !bytes.Equal(got.GetStdoutRaw(), []byte("out")) || len(got.GetStderrRaw()) != 0 {
		t.Errorf("stdout_raw %q, stderr_raw %q; want out and nothing", got.GetStdoutRaw(), got.GetStderrRaw())
	}
	if len(got.GetOutputFiles()[0].GetContents()) != 0 || !bytes.Equal(got.GetOutputFiles()[1].GetContents(), []byte("file b")) {
		t.Errorf("output files %v; want only b inlined", got.GetOutputFiles())
	}
	if !proto.Equal(got.GetStdoutDigest(), stored.StdoutDigest) {
		t.Errorf("inlined stdout lost its digest")
	}
	got = run(&repb.ExecuteRequest{InlineStderr: true})
	if len(got.GetStdoutRaw()) != 0 || !bytes.Equal(got.GetStderrRaw(), []byte("err")) || len(got.GetOutputFiles()[1].GetContents()) != 0 {
		t.Errorf("second request: %v; want only stderr inlined", got)
	}
	got = run(&repb.ExecuteRequest{})
	if len(got.GetStdoutRaw())+len(got.GetStderrRaw())+len(got.GetOutputFiles()[1].GetContents()) != 0 {
		t.Errorf("a request without inlining got %v", got)
	}
}
