package reapi

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// executeInlining is what an ExecuteRequest asks to be inlined in the
// ActionResult of its done operation: inline_stdout, inline_stderr and
// inline_output_files, "a hint to the server".
type executeInlining struct {
	stdout, stderr bool
	paths          map[string]bool
}

func inliningOf(req *repb.ExecuteRequest) *executeInlining {
	if !req.GetInlineStdout() && !req.GetInlineStderr() && len(req.GetInlineOutputFiles()) == 0 {
		return nil
	}
	in := &executeInlining{stdout: req.GetInlineStdout(), stderr: req.GetInlineStderr(), paths: map[string]bool{}}
	for _, p := range req.GetInlineOutputFiles() {
		in.paths[p] = true
	}
	return in
}

// apply returns resp with the requested blobs inlined into a copy of its
// result, within the batch size limit so that the Operation stays under
// the clients' message limits. Inlining is only a hint: a blob that cannot
// be read is left to the client to fetch by digest, and resp, shared by
// every waiter of a merged operation, is never changed.
func (x *executeInlining) apply(ctx context.Context, store cas.Store, fn digest.Function, action digest.Digest, budget int64, resp *repb.ExecuteResponse) *repb.ExecuteResponse {
	if x == nil || resp.GetResult() == nil {
		return resp
	}
	out := proto.Clone(resp).(*repb.ExecuteResponse)
	res := out.GetResult()
	in := inliner{ctx: ctx, store: store, fn: fn, action: action, budget: budget - int64(proto.Size(out))}
	fill := func(dst *[]byte, d *repb.Digest, what string) {
		if len(*dst) > 0 {
			return
		}
		if data, err := in.inline(d, what); err == nil {
			*dst = data
		}
	}
	if x.stdout {
		fill(&res.StdoutRaw, res.GetStdoutDigest(), "stdout")
	}
	if x.stderr {
		fill(&res.StderrRaw, res.GetStderrDigest(), "stderr")
	}
	for _, f := range res.GetOutputFiles() {
		if x.paths[f.GetPath()] {
			fill(&f.Contents, f.GetDigest(), "output file "+f.GetPath())
		}
	}
	return out
}
