// Package builder owns the life of one action on an executor: fetch the
// Command and the input tree, stage the inputs into a fresh directory, run the
// command, collect and upload the outputs, and account for every step in
// ExecutedActionMetadata. The executor (one builder per executor) and
// `hearth run` (one action) share it, so both behave identically.
package builder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/metadatapb"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/sandbox"
	"github.com/hearth-build/hearth/internal/workerpolicy"
)

// Builder runs actions. Its fields are set once; Build is safe for
// concurrent use.
type Builder struct {
	CAS   cas.Store
	Files *filecache.Cache
	// WorkDir holds one directory per running action, emptied after it (and
	// reused, see actionDirs) or removed.
	WorkDir string
	// WorkerName goes in ExecutedActionMetadata.worker.
	WorkerName string
	// MaxTimeout applies to actions that set no timeout (0: none).
	MaxTimeout time.Duration
	Logger     *slog.Logger
	// Workers, when set, serves actions that opt into persistent workers.
	Workers *workerpolicy.Workers
	// MaxUploadTimeout bounds collecting and uploading one action's outputs
	// (0: no bound).
	MaxUploadTimeout time.Duration
	// Bwrap, when set, is the bubblewrap binary one-shot actions run under
	// (see internal/sandbox): they can write only their own directory and
	// reach no network.
	Bwrap string
	// OneShot, when set, runs the actions no persistent worker serves (those
	// that do not opt in, those that fall back, and verification runs)
	// instead of this builder: the executor's external runner
	// (runner_command). Hooks do not apply to it.
	OneShot Runner

	dirs actionDirs // emptied one-shot action directories for reuse

	// trees remembers validated Directories across actions (made on first
	// use), so the subtrees consecutive actions share are not fetched,
	// hashed and decoded again for each.
	treesOnce sync.Once
	trees     *inputtree.DirCache

	// spareDirs are directories created ahead of need for the new
	// directories of warm requests (made on first use; nil when WorkDir is
	// not on the workspaces' file system).
	spareDirsOnce sync.Once
	spareDirs     *fsutil.SpareDirs
}

// dirCacheBytes bounds the encoded Directories the builder remembers: a
// toolchain of 100,000 files is about 10 MB of them.
const dirCacheBytes = 16 << 20

// cacheTrees turns the Directory cache on; off only in the benchmark that
// measures what it saves.
var cacheTrees = true

func (b *Builder) loadTree(ctx context.Context, fn digest.Function, root digest.Digest) (*inputtree.Tree, error) {
	if !cacheTrees {
		return inputtree.Load(ctx, b.CAS, fn, root)
	}
	b.treesOnce.Do(func() { b.trees = inputtree.NewDirCache(dirCacheBytes) })
	return b.trees.Load(ctx, b.CAS, fn, root)
}

// Close waits for the action directories being emptied in the background
// and removes the emptied ones kept for reuse: after it, WorkDir holds
// nothing the builder made (`hearth run --workspace-path` promises the
// caller an empty workspace). Build must not run meanwhile.
func (b *Builder) Close() error {
	if b.spareDirs != nil {
		b.spareDirs.Close()
	}
	return b.dirs.removeSpare()
}

// spareDirsFor returns the spare directories for staging into workspace,
// or nil if they cannot be renamed there (another file system).
func (b *Builder) spareDirsFor(workspace string) *fsutil.SpareDirs {
	b.spareDirsOnce.Do(func() {
		dir := filepath.Join(b.WorkDir, "spare-dirs")
		var ws, sd unix.Stat_t
		if err := os.MkdirAll(dir, 0o755); err != nil ||
			unix.Stat(workspace, &ws) != nil || unix.Stat(dir, &sd) != nil || ws.Dev != sd.Dev {
			return
		}
		b.spareDirs = fsutil.NewSpareDirs(dir, spareDirCount)
	})
	return b.spareDirs
}

// spareDirCount covers the new directories of a few warm requests (a
// library's package and output directories).
const spareDirCount = 8

// Runner runs one action to its response, as Builder does.
type Runner interface {
	Build(ctx context.Context, t Task) *repb.ExecuteResponse
}

// Task is one action to run.
type Task struct {
	Instance     string
	ActionDigest digest.Digest
	Action       *repb.Action
	// Command, when set, is the Action's Command already fetched (and
	// validated) by the server; otherwise the builder fetches it.
	Command  *repb.Command
	QueuedAt time.Time
	// Hooks let the executor shape the run from its configuration.
	Hooks Hooks
}

// Hooks adapt a run to the executor's configuration (NativeLink-style
// entrypoint and additional environment). All are optional.
type Hooks struct {
	// Environment returns variables added to the Command's own, given the
	// action directory and the effective timeout.
	Environment func(actionDir string, timeout time.Duration) ([]string, error)
	// WorkerEnvironment returns the variables added to a persistent
	// worker's environment (and so to its pool key) for an action with
	// this timeout. A worker outlives any action directory, so sources
	// that need one cannot be given to workers (the executor rejects
	// such a configuration with persistent workers at start).
	WorkerEnvironment func(timeout time.Duration) ([]string, error)
	// Entrypoint is prepended to the Command's arguments, and to a
	// persistent worker's startup command.
	Entrypoint []string
	// SideChannelFile, when set, is a file inside the action directory the
	// entrypoint may write {"failure": "timeout"} into.
	SideChannelFile string
	// TimeoutHandledExternally leaves killing on timeout to the entrypoint.
	TimeoutHandledExternally bool
	// ExtraMetadata adds auxiliary metadata, e.g. persistent worker facts.
	ExtraMetadata []*anypb.Any
}

// Build runs t and returns the response for the client. It never returns an
// error: every failure becomes ExecuteResponse.status, with whatever result
// exists (a timed-out action keeps its stdout and stderr).
func (b *Builder) Build(ctx context.Context, t Task) *repb.ExecuteResponse {
	if b.OneShot != nil && !b.mayUseWorker(t) {
		return b.OneShot.Build(ctx, t)
	}
	md := &repb.ExecutedActionMetadata{
		Worker:               b.WorkerName,
		QueuedTimestamp:      timestamppb.New(t.QueuedAt),
		WorkerStartTimestamp: timestamppb.Now(),
	}
	result, err := b.build(ctx, t, md)
	if errors.Is(err, errOneShotElsewhere) {
		return b.runElsewhere(ctx, t, md)
	}
	md.WorkerCompletedTimestamp = timestamppb.Now()
	if result == nil {
		result = &repb.ActionResult{}
	}
	result.ExecutionMetadata = md
	return &repb.ExecuteResponse{Result: result, Status: StatusOf(err)}
}

// ErrTimedOut marks an action killed at its timeout. It comes wrapped with
// context.DeadlineExceeded, which gives it its status code.
var ErrTimedOut = errors.New("action timed out")

func timedOutError(timeout time.Duration) error {
	return fmt.Errorf("%w after %s: %w", ErrTimedOut, timeout, context.DeadlineExceeded)
}

func (b *Builder) build(ctx context.Context, t Task, md *repb.ExecutedActionMetadata) (*repb.ActionResult, error) {
	fn := t.ActionDigest.Function
	md.InputFetchStartTimestamp = timestamppb.Now()
	cmd := t.Command
	if cmd == nil {
		var err error
		if cmd, err = b.loadCommand(ctx, fn, t.Action); err != nil {
			return nil, err
		}
	}
	rootDigest, err := digest.FromProto(fn, t.Action.GetInputRootDigest())
	if err != nil {
		return nil, fmt.Errorf("input_root_digest: %w", err)
	}
	tree, err := b.loadTree(ctx, fn, rootDigest)
	if err != nil {
		return nil, err
	}
	plan, err := b.planWorker(t, cmd, tree)
	if err != nil {
		return nil, err
	}
	if plan != nil {
		result, err := b.runOnWorker(ctx, t, cmd, tree, plan, md)
		if !plan.Info.FellBack {
			return result, err
		}
		level := slog.LevelWarn
		if strings.HasPrefix(plan.Info.FallbackReason, "quarantined") {
			level = slog.LevelDebug // said once, when the key was quarantined
		}
		b.logger().Log(ctx, level, "persistent worker not used; running the action one-shot", "key", plan.Spec.Key, "reason", plan.Info.FallbackReason)
		b.attachWorkerInfo(md, plan)
		md.InputFetchStartTimestamp = timestamppb.Now()
	}
	if b.OneShot != nil {
		return nil, errOneShotElsewhere
	}
	return b.runOneShot(ctx, t, cmd, tree, md)
}

// runOneShot runs the Command as a child process in a fresh directory.
func (b *Builder) runOneShot(ctx context.Context, t Task, cmd *repb.Command, tree *inputtree.Tree, md *repb.ExecutedActionMetadata) (*repb.ActionResult, error) {
	fn := t.ActionDigest.Function
	actionDir, inputRoot, err := b.dirs.get(b.WorkDir)
	if err != nil {
		return nil, fmt.Errorf("creating action directory: %w", err)
	}
	if len(tree.Files)+len(tree.Dirs)+len(tree.Symlinks) >= bigActionDir && asyncRecycle {
		// Emptied in the background: deferred calls run before Build
		// stamps worker_completed and returns the result.
		defer b.recycleLater(actionDir)
	} else {
		defer b.recycle(actionDir)
	}
	// An empty input root (common for tool-less actions) needs no staging.
	if len(tree.Files) > 0 || len(tree.Symlinks) > 0 || len(tree.Dirs) > 1 {
		if err := inputtree.Stage(ctx, tree, b.Files, inputRoot); err != nil {
			return nil, err
		}
	}
	snapshot := snapshotInputs(inputRoot, tree, func(*inputtree.File) bool { return false })
	// CreateParents validates the output paths and working directory too.
	if err := outputs.CreateParents(inputRoot, cmd); err != nil {
		return nil, err
	}
	workDir := filepath.Join(inputRoot, filepath.FromSlash(cmd.GetWorkingDirectory()))
	md.InputFetchCompletedTimestamp = timestamppb.Now()

	timeout := b.timeout(t)
	env := envList(cmd)
	if t.Hooks.Environment != nil {
		extra, err := t.Hooks.Environment(actionDir, timeout)
		if err != nil {
			return nil, err
		}
		env = mergeEnv(env, extra)
	}
	stdout := &streamCapture{path: filepath.Join(actionDir, "stdout")}
	defer stdout.close()
	stderr := &streamCapture{path: filepath.Join(actionDir, "stderr")}
	defer stderr.close()
	req := runner.Request{
		Args:    append(append([]string(nil), t.Hooks.Entrypoint...), cmd.GetArguments()...),
		Env:     env,
		Dir:     workDir,
		Timeout: timeout,
		Stdout:  stdout,
		Stderr:  stderr,
	}
	if t.Hooks.TimeoutHandledExternally {
		// The entrypoint enforces the action's timeout (it gets it through
		// timeout_millis); Hearth only stops a runaway at the maximum.
		req.Timeout = b.MaxTimeout
	}
	if b.Bwrap != "" {
		// Resolved here, with the Command's PATH, because inside the
		// sandbox argv[0] is bwrap's to run.
		exe, err := runner.ResolveExecutable(req.Args[0], env, workDir)
		if err != nil {
			return nil, err
		}
		req.Args = sandbox.ArgsIn(b.Bwrap, b.WorkDir, actionDir, workDir, exe, req.Args[1:])
	}
	md.ExecutionStartTimestamp = timestamppb.Now()
	res, runErr := runner.Run(ctx, req)
	md.ExecutionCompletedTimestamp = timestamppb.Now()
	// An action may write through its inputs, which are hardlinks of the
	// cache: its own result stands, but the damaged files must not be
	// served to anyone else.
	for _, f := range damagedInputs(inputRoot, tree, snapshot) {
		b.Files.Forget(f.Digest, "an action wrote through its read-only input "+f.Path)
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) && !errors.Is(runErr, context.DeadlineExceeded) {
		return nil, runErr
	}
	if stats, err := anypb.New(rusageProto(res.Usage)); err == nil {
		md.AuxiliaryMetadata = append(md.AuxiliaryMetadata, stats)
	}
	md.AuxiliaryMetadata = append(md.AuxiliaryMetadata, t.Hooks.ExtraMetadata...)
	timedOut := res.TimedOut || (t.Hooks.SideChannelFile != "" && sideChannelTimeout(filepath.Join(actionDir, t.Hooks.SideChannelFile)))

	md.OutputUploadStartTimestamp = timestamppb.Now()
	result := &repb.ActionResult{ExitCode: int32(res.ExitCode)}
	switch {
	case runErr == nil && !timedOut:
		collected, err := b.collect(ctx, fn, inputRoot, cmd)
		if err != nil {
			return nil, err
		}
		result = collected
		result.ExitCode = int32(res.ExitCode)
	case runErr == nil:
		// REAPI lets "the output-, stdout-, and stderr-related fields" of a
		// timed-out action be filled in: what it wrote before it was killed
		// shows where it hung. Its status keeps it out of the cache, and an
		// output it left half made (of the wrong type, say) must not turn
		// DEADLINE_EXCEEDED into another error, so collecting is best effort.
		if collected, err := b.collect(ctx, fn, inputRoot, cmd); err == nil {
			result = collected
			result.ExitCode = int32(res.ExitCode)
		} else {
			b.logger().Debug("outputs of a timed-out action not collected", "action", t.ActionDigest, "err", err)
		}
	}
	// stdout and stderr are kept even for a timed-out or cancelled action:
	// they are often the only clue to what went wrong.
	upCtx := outputContext(context.WithoutCancel(ctx))
	for _, s := range []struct {
		capture *streamCapture
		dst     **repb.Digest
	}{{stdout, &result.StdoutDigest}, {stderr, &result.StderrDigest}} {
		d, err := s.capture.upload(upCtx, b.CAS, fn)
		if err != nil {
			return nil, fmt.Errorf("uploading output stream: %w", err)
		}
		*s.dst = d.Proto()
	}
	md.OutputUploadCompletedTimestamp = timestamppb.Now()
	if runErr != nil {
		return result, runErr
	}
	if timedOut {
		return result, timedOutError(timeout)
	}
	return result, nil
}

// collect gathers and uploads the outputs within MaxUploadTimeout; running
// past it fails the action with DEADLINE_EXCEEDED.
func (b *Builder) collect(ctx context.Context, fn digest.Function, inputRoot string, cmd *repb.Command) (*repb.ActionResult, error) {
	if b.MaxUploadTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.MaxUploadTimeout)
		defer cancel()
	}
	result, err := outputs.Collect(outputContext(ctx), b.CAS, fn, inputRoot, cmd)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("uploading outputs took longer than max_upload_timeout (%s): %w", b.MaxUploadTimeout, context.DeadlineExceeded)
	}
	return result, err
}

// outputContext marks the uploads of an action's outputs as relaxed: a disk
// CAS on this machine (hearth serve's) makes them visible at once and
// durable a moment later, off the reply path (internal/cas/relaxed.go). An
// output lost to a power loss reads as absent, like an evicted one, and the
// action cache entry naming it as a miss; outputs are reproducible, a
// client's uploads are not, and those stay durable before their ack.
func outputContext(ctx context.Context) context.Context {
	return cas.WithRelaxedDurability(ctx)
}

func (b *Builder) logger() *slog.Logger {
	if b.Logger == nil {
		return slog.Default()
	}
	return b.Logger
}

// timeout is the action's own timeout, or MaxTimeout when it sets none or
// asks for more.
func (b *Builder) timeout(t Task) time.Duration {
	timeout := t.Action.GetTimeout().AsDuration()
	if timeout <= 0 || (b.MaxTimeout > 0 && timeout > b.MaxTimeout) {
		timeout = b.MaxTimeout
	}
	return timeout
}

func (b *Builder) loadCommand(ctx context.Context, fn digest.Function, action *repb.Action) (*repb.Command, error) {
	d, err := digest.FromProto(fn, action.GetCommandDigest())
	if err != nil {
		return nil, fmt.Errorf("command_digest: %w", err)
	}
	cmd := &repb.Command{}
	if err := cas.GetProto(ctx, b.CAS, d, cmd, "Command"); err != nil {
		return nil, err
	}
	if len(cmd.GetArguments()) == 0 {
		return nil, fmt.Errorf("%w: Command %s has no arguments", inputtree.ErrInvalid, d)
	}
	return cmd, nil
}

// recycle empties a one-shot action directory for the next action (or
// removes it).
func (b *Builder) recycle(dir string) {
	if err := b.dirs.put(dir); err != nil {
		b.logger().Warn("removing action directory", "dir", dir, "err", err)
	}
}

// asyncRecycle lets big action directories be emptied in the background;
// off only in the benchmark that measures it.
var asyncRecycle = true

// recycleLater is recycle in the background (Close waits for it).
func (b *Builder) recycleLater(dir string) {
	b.dirs.putLater(dir, func(err error) {
		b.logger().Warn("removing action directory", "dir", dir, "err", err)
	})
}

func envList(cmd *repb.Command) []string {
	env := make([]string, 0, len(cmd.GetEnvironmentVariables()))
	for _, v := range cmd.GetEnvironmentVariables() {
		env = append(env, v.GetName()+"="+v.GetValue())
	}
	return env
}

// mergeEnv adds extra to env; a variable in extra replaces the Command's.
func mergeEnv(env, extra []string) []string {
	names := map[string]bool{}
	for _, kv := range extra {
		name, _, _ := strings.Cut(kv, "=")
		names[name] = true
	}
	out := make([]string, 0, len(env)+len(extra))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !names[name] {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

func rusageProto(u runner.Rusage) *metadatapb.ExecutionStatistics {
	return &metadatapb.ExecutionStatistics{ProcessResourceUsage: &metadatapb.ProcessResourceUsage{
		UtimeUsec: u.UserTime.Microseconds(), StimeUsec: u.SystemTime.Microseconds(), Maxrss: u.MaxRSSKiB,
		Minflt: u.MinorFaults, Majflt: u.MajorFaults, Inblock: u.InBlocks, Oublock: u.OutBlocks,
		Nvcsw: u.VoluntaryCtxSwitches, Nivcsw: u.InvoluntaryCtxSwitches,
	}}
}

// StatusOf maps a build error to the ExecuteResponse.status a client sees,
// with the same table the REAPI services use (see internal/errcode).
func StatusOf(err error) *status.Status { return errcode.Proto(err) }
