package builder

import (
	"context"
	"errors"
	"fmt"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerpolicy"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// planWorker asks the policy whether the action goes to a persistent worker
// (nil: one-shot). The worker gets the environment a one-shot run would
// have, additional environment included, and starts under the entrypoint.
func (b *Builder) planWorker(t Task, cmd *repb.Command, tree *inputtree.Tree) (*workerpolicy.Plan, error) {
	if !b.optsIn(t, cmd) {
		return nil, nil // spares the environment of most actions
	}
	env := envList(cmd)
	if t.Hooks.WorkerEnvironment != nil {
		extra, err := t.Hooks.WorkerEnvironment(b.timeout(t))
		if err != nil {
			return nil, err
		}
		env = mergeEnv(env, extra)
	}
	return b.Workers.Plan(workerpolicy.Action{
		Instance: t.Instance, Action: t.Action, Command: cmd, Tree: tree, Env: env, Entrypoint: t.Hooks.Entrypoint,
	}), nil
}

// asyncRelease ends a served worker's lease (cleaning, memory check) after
// the result is complete, in the background; off only in the benchmark that
// measures it.
var asyncRelease = true

// runOnWorker serves the action on a warm worker. When the worker cannot
// serve it (no capacity, a crash, garbage on the pipe), it marks the plan as
// fallen back and the caller runs the action one-shot, so the client still
// gets a correct result.
func (b *Builder) runOnWorker(ctx context.Context, t Task, cmd *repb.Command, tree *inputtree.Tree, plan *workerpolicy.Plan, md *repb.ExecutedActionMetadata) (*repb.ActionResult, error) {
	if plan.Info.FellBack {
		return nil, nil
	}
	w := b.Workers
	fn := t.ActionDigest.Function
	lease, err := w.Acquire(ctx, plan)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		w.FallBack(plan, workerpolicy.Reason(err), err)
		return nil, nil
	}
	released := false
	defer func() {
		if !released {
			lease.Discard()
		}
	}()
	// What the previous request left staged (keep.go); until this request
	// passes its tamper check, the workspace is described by no memo.
	kept, _ := lease.Memo().(keptInputs)
	lease.SetMemo(nil)
	// end returns the worker to the pool once its workspace holds nothing
	// of this action but the inputs in keep (the pool stops a worker that
	// failed or was killed anyway); a workspace that cannot be cleaned
	// costs the worker. release is end, now.
	end := func(keep keptInputs) {
		if lease.SandboxDir() == "" {
			paths := make(map[string]bool, len(keep))
			for p := range keep {
				paths[p] = true
			}
			if err := w.CleanWorkspaceKeeping(lease.Dir(), plan, paths); err != nil {
				b.logger().Warn("persistent worker discarded", "key", plan.Spec.Key, "err", err)
				lease.Discard()
				return
			}
			if len(keep) > 0 {
				lease.SetMemo(keep)
			}
		}
		lease.Release()
	}
	release := func(keep keptInputs) {
		released = true
		end(keep)
	}
	plan.Info.Warm, plan.Info.Invocation = lease.Warm(), int32(lease.Invocation())
	dir := lease.Dir()
	sandboxed := lease.SandboxDir() != ""
	reused, damaged, err := reconcile(dir, tree, kept, plan.IsTool)
	if len(damaged) > 0 {
		b.damagedByWorker(plan, damaged)
		return nil, nil
	}
	if err != nil {
		w.FallBack(plan, "staging", err)
		return nil, nil
	}
	skip := func(f *inputtree.File) bool { return !sandboxed && plan.IsTool(f.Path) }
	stageSkip := skip
	if len(reused) > 0 {
		stageSkip = func(f *inputtree.File) bool { return skip(f) || reused[f.Path] }
	}
	if err := inputtree.StageWith(ctx, tree, b.Files, dir, inputtree.StageOptions{Skip: stageSkip, Reuse: true, Dirs: b.spareDirsFor(dir)}); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		w.FallBack(plan, "staging", err)
		return nil, nil
	}
	if err := outputs.CreateParentsWith(dir, cmd, b.spareDirsFor(dir)); err != nil {
		return nil, err
	}
	snapshot := snapshotInputs(dir, tree, skip)
	args, err := workeraction.ExpandArgs(dir, plan.Request)
	if err != nil {
		release(nil)
		w.FallBack(plan, "flag_file", err)
		return nil, nil
	}
	req := &pb.WorkRequest{Arguments: args, Inputs: make([]*pb.Input, 0, len(tree.Files))}
	for _, f := range tree.Files {
		req.Inputs = append(req.Inputs, &pb.Input{Path: f.Path, Digest: []byte(f.Digest.Hash)})
	}
	md.InputFetchCompletedTimestamp = timestamppb.Now()

	timeout := b.timeout(t)
	runCtx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		runCtx, cancel = context.WithTimeout(ctx, timeout)
	}
	md.ExecutionStartTimestamp = timestamppb.Now()
	start := time.Now()
	resp, err := lease.Do(runCtx, req)
	timedOut := errors.Is(runCtx.Err(), context.DeadlineExceeded)
	cancel()
	md.ExecutionCompletedTimestamp = timestamppb.Now()
	elapsed := time.Since(start)
	if err != nil {
		switch {
		case ctx.Err() != nil:
			// The client cancelled. A worker that answered the cancel (or
			// finished at that moment) is healthy and stays in the pool
			// (DESIGN §3.6); one that did not was killed by the pool,
			// which then retires it.
			release(nil)
			return nil, ctx.Err()
		case timedOut:
			// The action's own timeout: a result, not a worker failure.
			// As for a one-shot action, what it wrote before the timeout
			// is collected, best effort, before its workspace is cleaned:
			// the worker answered the cancel (and may no longer write) or
			// was killed with its process group.
			collected, cerr := b.collect(ctx, fn, dir, cmd)
			if cerr != nil {
				b.logger().Debug("outputs of a timed-out worker action not collected", "action", t.ActionDigest, "err", cerr)
				collected = nil
			}
			release(nil)
			result, upErr := b.streamsResult(ctx, fn, collected, "")
			if upErr != nil {
				return nil, upErr
			}
			b.attachWorkerInfo(md, plan)
			return result, timedOutError(timeout)
		default:
			w.FallBack(plan, workerpolicy.Reason(err), err)
			return nil, nil
		}
	}
	damaged, keep := checkInputs(dir, tree, snapshot, lease.KeepsMemo() && diffStaging)
	if len(damaged) > 0 {
		b.damagedByWorker(plan, damaged)
		return nil, nil
	}
	md.OutputUploadStartTimestamp = timestamppb.Now()
	collected, err := b.collect(ctx, fn, dir, cmd)
	if err != nil {
		release(keep)
		return nil, err
	}
	result, err := b.streamsResult(ctx, fn, collected, resp.GetOutput())
	if err != nil {
		release(keep)
		return nil, err
	}
	result.ExitCode = resp.GetExitCode()
	md.OutputUploadCompletedTimestamp = timestamppb.Now()
	// The result is complete: the worker's workspace is cleaned (and its
	// memory checked) after it went back, off the client's path. The
	// pool's next Acquire of this key waits for that rather than start
	// another process.
	if asyncRelease {
		released = true
		w.ReleaseLater(lease, func() { end(keep) })
	} else {
		release(keep)
	}
	w.Served(plan, elapsed)

	if w.ShouldVerify() {
		if reference, ok := b.verify(ctx, t, cmd, tree, plan, result); ok {
			result = reference
		}
	}
	b.attachWorkerInfo(md, plan)
	return result, nil
}

// damagedByWorker handles a worker that wrote through its read-only inputs:
// the damaged files leave the cache (and the CAS they are linked from), the
// policy quarantines the key and stops its processes, and the action runs
// again one-shot (which fetches the inputs afresh, or reports them missing
// so the client uploads them again).
func (b *Builder) damagedByWorker(plan *workerpolicy.Plan, damaged []inputtree.File) {
	var paths []string
	for _, f := range damaged {
		paths = append(paths, f.Path)
		b.Files.Forget(f.Digest, fmt.Sprintf("persistent worker %s wrote through its read-only input %s", plan.Spec.Key, f.Path))
	}
	b.Workers.Damaged(plan, paths)
}

func (b *Builder) attachWorkerInfo(md *repb.ExecutedActionMetadata, plan *workerpolicy.Plan) {
	if a, err := anypb.New(plan.Info); err == nil {
		md.AuxiliaryMetadata = append(md.AuxiliaryMetadata, a)
	}
}

// streamsResult uploads a worker action's stdout (always empty: a worker's
// stdout is the protocol) and stderr (WorkResponse.output).
func (b *Builder) streamsResult(ctx context.Context, fn digest.Function, result *repb.ActionResult, stderr string) (*repb.ActionResult, error) {
	if result == nil {
		result = &repb.ActionResult{}
	}
	ctx = outputContext(context.WithoutCancel(ctx))
	out, err := outputs.UploadBytes(ctx, b.CAS, fn, nil)
	if err != nil {
		return nil, err
	}
	errd, err := outputs.UploadBytes(ctx, b.CAS, fn, []byte(stderr))
	if err != nil {
		return nil, err
	}
	result.StdoutDigest, result.StderrDigest = out.Proto(), errd.Proto()
	return result, nil
}

// verify runs the action one-shot in a clean directory and compares its
// outputs with the worker's. A difference quarantines the key: from then on
// its actions run one-shot, and the one-shot result is the one returned.
func (b *Builder) verify(ctx context.Context, t Task, cmd *repb.Command, tree *inputtree.Tree, plan *workerpolicy.Plan, got *repb.ActionResult) (*repb.ActionResult, bool) {
	want, err := b.referenceRun(ctx, t, cmd, tree)
	if err != nil {
		b.logger().Warn("verification run failed; keeping the worker's result", "key", plan.Spec.Key, "err", err)
		return nil, false
	}
	if !b.Workers.Verified(plan, workerpolicy.DiffResults(got, want)) {
		return nil, false
	}
	want.ExecutionMetadata = nil
	return want, true
}
