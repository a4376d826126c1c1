package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/metadatapb"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/workeraction"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// workerPlan is how one action will be sent to a persistent worker.
type workerPlan struct {
	spec      *workerpool.Spec
	request   []string // flag-file arguments, before expansion
	toolPaths map[string]bool
	info      *metadatapb.PersistentWorkerInfo
}

// planWorker decides whether the action goes to a persistent worker. The
// properties are hints: whenever something does not fit (no flag file, a
// protocol this executor does not speak, a working directory, an entrypoint
// wrapping every action, a quarantined key), the action simply runs one-shot.
func (b *Builder) planWorker(t Task, cmd *repb.Command, tree *inputtree.Tree) *workerPlan {
	w := b.Workers
	if w == nil || len(t.Hooks.Entrypoint) > 0 || t.Hooks.Environment != nil || cmd.GetWorkingDirectory() != "" {
		return nil
	}
	props := t.Action.GetPlatform().GetProperties()
	if len(props) == 0 {
		props = cmd.GetPlatform().GetProperties()
	}
	hints, err := workeraction.ParseHints(props)
	if err != nil || !hints.OptIn {
		return nil
	}
	startup, request := workeraction.SplitArgs(cmd.GetArguments())
	if len(request) == 0 || len(startup) == 0 {
		return nil
	}
	protocol, err := workerproto.ParseProtocol(hints.Protocol)
	if err != nil || !w.supports(protocol) {
		return nil
	}
	env := envList(cmd)
	tools := workeraction.ToolFiles(tree, startup, "")
	key := workeraction.PoolKey(workeraction.KeyInput{
		Instance: t.Instance, ClientKey: hints.ClientKey, Startup: startup, Env: env, Protocol: hints.Protocol,
		Multiplex: hints.Multiplex, Sandboxing: hints.Sandboxing, Cancellable: hints.Cancellable, Tools: tools,
	})
	plan := &workerPlan{
		spec: &workerpool.Spec{
			Key: key, Family: family(t.Instance, hints.ClientKey, startup),
			Argv: startup, Env: env, Protocol: protocol,
			Multiplex: hints.Multiplex, Sandboxing: hints.Sandboxing, Cancellable: hints.Cancellable,
			Tools: tools,
		},
		request:   request,
		toolPaths: map[string]bool{},
		info:      &metadatapb.PersistentWorkerInfo{PoolKey: key, ClientKey: hints.ClientKey},
	}
	for _, f := range tools {
		plan.toolPaths[f.Path] = true
	}
	w.mu.Lock()
	r := w.record(key)
	r.clientKey = hints.ClientKey
	quarantined := r.quarantined
	w.mu.Unlock()
	if quarantined != "" {
		plan.info.FellBack, plan.info.FallbackReason = true, "quarantined: "+quarantined
		w.countFallback(key, "quarantined")
		return plan
	}
	return plan
}

// family names what stays the same when a tool changes, so the pool can stop
// workers of the outdated tool early.
func family(instance, clientKey string, startup []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %q", instance, clientKey, startup)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (w *Workers) countFallback(key, reason string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.record(key).fallbacks[reason]++
}

// fallBack marks the plan as falling back to one-shot and returns no result;
// the caller then runs the action one-shot.
func (b *Builder) fallBack(plan *workerPlan, reason string, err error) (*repb.ActionResult, error) {
	plan.info.FellBack = true
	plan.info.FallbackReason = reason
	if err != nil {
		plan.info.FallbackReason += ": " + err.Error()
	}
	b.Workers.countFallback(plan.spec.Key, reason)
	return nil, nil
}

// runOnWorker serves the action on a warm worker. When the worker cannot
// serve it (no capacity, a crash, garbage on the pipe), it marks the plan as
// fallen back and the caller runs the action one-shot, so the client still
// gets a correct result.
func (b *Builder) runOnWorker(ctx context.Context, t Task, cmd *repb.Command, tree *inputtree.Tree, plan *workerPlan, md *repb.ExecutedActionMetadata) (*repb.ActionResult, error) {
	if plan.info.FellBack {
		return nil, nil
	}
	fn := t.ActionDigest.Function
	lease, err := b.Workers.Pool.Acquire(ctx, plan.spec)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return b.fallBack(plan, reasonOf(err), err)
	}
	released := false
	defer func() {
		if !released {
			lease.Discard()
		}
	}()
	plan.info.Warm, plan.info.Invocation = lease.Warm(), int32(lease.Invocation())
	dir := lease.Dir()
	sandboxed := lease.SandboxDir() != ""
	skip := func(f *inputtree.File) bool { return !sandboxed && plan.toolPaths[f.Path] }
	if err := inputtree.StageWith(ctx, tree, b.Files, dir, inputtree.StageOptions{Skip: skip, Reuse: true}); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return b.fallBack(plan, "staging", err)
	}
	if err := outputs.CreateParents(dir, cmd); err != nil {
		return nil, err
	}
	snapshot := snapshotInputs(dir, tree, skip)
	args, err := workeraction.ExpandArgs(dir, plan.request)
	if err != nil {
		b.cleanWorkspace(dir, plan, sandboxed)
		released = true
		lease.Release()
		return b.fallBack(plan, "flag_file", err)
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
			return nil, ctx.Err()
		case timedOut:
			// The action's own timeout: a result, not a worker failure.
			b.cleanWorkspace(dir, plan, sandboxed)
			result, upErr := b.streamsResult(ctx, fn, nil, "")
			if upErr != nil {
				return nil, upErr
			}
			b.attachWorkerInfo(md, plan)
			return result, timedOutError(timeout)
		default:
			return b.fallBack(plan, reasonOf(err), err)
		}
	}
	if damaged := damagedInputs(dir, tree, snapshot); len(damaged) > 0 {
		return b.damagedByWorker(plan, damaged)
	}
	md.OutputUploadStartTimestamp = timestamppb.Now()
	collected, err := b.collect(ctx, fn, dir, cmd)
	b.cleanWorkspace(dir, plan, sandboxed)
	if err != nil {
		return nil, err
	}
	result, err := b.streamsResult(ctx, fn, collected, resp.GetOutput())
	if err != nil {
		return nil, err
	}
	result.ExitCode = resp.GetExitCode()
	md.OutputUploadCompletedTimestamp = timestamppb.Now()
	released = true
	lease.Release()

	b.Workers.served(plan.spec, plan.info.ClientKey)
	b.Workers.mu.Lock()
	r := b.Workers.record(plan.spec.Key)
	if plan.info.Warm {
		r.warmDurations.add(elapsed)
	} else {
		r.coldDurations.add(elapsed)
	}
	b.Workers.mu.Unlock()

	if b.Workers.verifyFraction > 0 && b.Workers.random() < b.Workers.verifyFraction {
		if reference, ok := b.verify(ctx, t, cmd, tree, plan, result); ok {
			result = reference
		}
	}
	b.attachWorkerInfo(md, plan)
	return result, nil
}

// damagedByWorker handles a worker that wrote through its read-only inputs:
// the damaged files leave the cache (and the CAS they are linked from), the
// key is quarantined and its processes stopped, and the action runs again
// one-shot (which fetches the inputs afresh, or reports them missing so the
// client uploads them again).
func (b *Builder) damagedByWorker(plan *workerPlan, damaged []inputtree.File) (*repb.ActionResult, error) {
	var paths []string
	for _, f := range damaged {
		paths = append(paths, f.Path)
		b.Files.Forget(f.Digest, fmt.Sprintf("persistent worker %s wrote through its read-only input %s", plan.spec.Key, f.Path))
	}
	why := "wrote to its read-only inputs: " + strings.Join(paths, ", ")
	b.Workers.mu.Lock()
	b.Workers.record(plan.spec.Key).quarantined = why
	b.Workers.mu.Unlock()
	b.Workers.Pool.Quarantine(plan.spec.Key)
	b.logger().Error("persistent worker damaged its inputs; key quarantined", "key", plan.spec.Key, "inputs", paths)
	return b.fallBack(plan, "damaged_inputs", errors.New(why))
}

func (b *Builder) attachWorkerInfo(md *repb.ExecutedActionMetadata, plan *workerPlan) {
	if a, err := anypb.New(plan.info); err == nil {
		md.AuxiliaryMetadata = append(md.AuxiliaryMetadata, a)
	}
}

// streamsResult uploads a worker action's stdout (always empty: a worker's
// stdout is the protocol) and stderr (WorkResponse.output).
func (b *Builder) streamsResult(ctx context.Context, fn digest.Function, result *repb.ActionResult, stderr string) (*repb.ActionResult, error) {
	if result == nil {
		result = &repb.ActionResult{}
	}
	ctx = context.WithoutCancel(ctx)
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
func (b *Builder) verify(ctx context.Context, t Task, cmd *repb.Command, tree *inputtree.Tree, plan *workerPlan, got *repb.ActionResult) (*repb.ActionResult, bool) {
	scratch := &repb.ExecutedActionMetadata{}
	want, err := b.runOneShot(ctx, t, cmd, tree, scratch)
	if err != nil {
		b.logger().Warn("verification run failed; keeping the worker's result", "key", plan.spec.Key, "err", err)
		return nil, false
	}
	plan.info.Verified = true
	diff := diffResults(got, want)
	b.Workers.mu.Lock()
	r := b.Workers.record(plan.spec.Key)
	r.verified++
	if len(diff) > 0 {
		r.mismatches++
		r.quarantined = "outputs differ from a one-shot run: " + strings.Join(diff, ", ")
		r.lastMismatches = diff
	}
	b.Workers.mu.Unlock()
	if len(diff) == 0 {
		return nil, false
	}
	plan.info.Mismatch = diff
	b.logger().Error("persistent worker gave different outputs than a one-shot run; key quarantined",
		"key", plan.spec.Key, "client_key", plan.info.ClientKey, "differing", diff)
	// Stop this key's processes: their state is what differs.
	b.Workers.Pool.Quarantine(plan.spec.Key)
	want.ExecutionMetadata = nil
	return want, true
}

// diffResults lists the outputs (and exit code) that differ.
func diffResults(a, b *repb.ActionResult) []string {
	var diff []string
	if a.GetExitCode() != b.GetExitCode() {
		diff = append(diff, "exit_code")
	}
	index := func(r *repb.ActionResult) map[string]string {
		m := map[string]string{}
		for _, f := range r.GetOutputFiles() {
			m[f.GetPath()] = fmt.Sprintf("file %s %v", f.GetDigest().GetHash(), f.GetIsExecutable())
		}
		for _, d := range r.GetOutputDirectories() {
			m[d.GetPath()] = "dir " + d.GetTreeDigest().GetHash()
		}
		for _, s := range r.GetOutputSymlinks() {
			m[s.GetPath()] = "symlink " + s.GetTarget()
		}
		return m
	}
	ia, ib := index(a), index(b)
	for p, v := range ia {
		if ib[p] != v {
			diff = append(diff, p)
		}
	}
	for p := range ib {
		if _, ok := ia[p]; !ok {
			diff = append(diff, p)
		}
	}
	sort.Strings(diff)
	return diff
}

// cleanWorkspace removes everything but the tool files from a worker's
// workspace (or the request's sandbox directory, which the pool removes), so
// nothing of one action is visible to the next.
func (b *Builder) cleanWorkspace(dir string, plan *workerPlan, sandboxed bool) {
	if sandboxed {
		return
	}
	keepDirs := map[string]bool{}
	for p := range plan.toolPaths {
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			keepDirs[d] = true
		}
	}
	var remove []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == workerpool.SandboxRoot {
			return filepath.SkipDir
		}
		if d.IsDir() {
			if keepDirs[rel] {
				os.Chmod(p, 0o755)
				return nil
			}
			remove = append(remove, p)
			return filepath.SkipDir
		}
		if !plan.toolPaths[rel] {
			remove = append(remove, p)
		}
		return nil
	})
	for _, p := range remove {
		b.removeAll(p)
	}
}

func reasonOf(err error) string {
	switch {
	case errors.Is(err, workerpool.ErrNoCapacity):
		return "no_capacity"
	case errors.Is(err, workerpool.ErrStartFailed):
		return "start_failed"
	case errors.Is(err, workerpool.ErrWorkerFailed):
		return "worker_failed"
	default:
		return "error"
	}
}
