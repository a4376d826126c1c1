package builder

import (
	"context"
	"errors"
	"fmt"
	"github.com/hearth-build/hearth/internal/platform"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/workeraction"
)

// errOneShotElsewhere tells Build that the action is to run one-shot through
// Builder.OneShot (it reaches no client).
var errOneShotElsewhere = errors.New("run one-shot through Builder.OneShot")

// mayUseWorker reports whether t could go to a persistent worker, from its
// hints alone: everything else goes straight to Builder.OneShot, without
// the input tree being loaded here too.
func (b *Builder) mayUseWorker(t Task) bool {
	if t.Command == nil && len(t.Action.GetPlatform().GetProperties()) == 0 {
		return b.Workers != nil // the Command, fetched by build, will tell
	}
	return b.optsIn(t, t.Command)
}

// optsIn reports whether the action asks for a persistent worker that this
// builder has (the policy decides the rest).
func (b *Builder) optsIn(t Task, cmd *repb.Command) bool {
	if b.Workers == nil {
		return false
	}
	hints, err := workeraction.ParseHints(platform.Properties(t.Action, cmd))
	return err == nil && hints.OptIn
}

// runElsewhere runs t through Builder.OneShot, keeping what md says of the
// persistent worker that did not serve it.
func (b *Builder) runElsewhere(ctx context.Context, t Task, md *repb.ExecutedActionMetadata) *repb.ExecuteResponse {
	resp := b.OneShot.Build(ctx, t)
	if resp.Result == nil {
		resp.Result = &repb.ActionResult{}
	}
	if resp.Result.ExecutionMetadata == nil {
		resp.Result.ExecutionMetadata = &repb.ExecutedActionMetadata{Worker: b.WorkerName, QueuedTimestamp: md.QueuedTimestamp}
	}
	emd := resp.Result.ExecutionMetadata
	emd.AuxiliaryMetadata = append(emd.AuxiliaryMetadata, md.AuxiliaryMetadata...)
	return resp
}

// referenceRun runs the action one-shot for verification, in-process or
// through Builder.OneShot.
func (b *Builder) referenceRun(ctx context.Context, t Task, cmd *repb.Command, tree *inputtree.Tree) (*repb.ActionResult, error) {
	if b.OneShot == nil {
		return b.runOneShot(ctx, t, cmd, tree, &repb.ExecutedActionMetadata{})
	}
	resp := b.OneShot.Build(ctx, t)
	if c := codes.Code(resp.GetStatus().GetCode()); c != codes.OK {
		return nil, fmt.Errorf("one-shot run: %s: %s", c, resp.GetStatus().GetMessage())
	}
	return resp.GetResult(), nil
}
