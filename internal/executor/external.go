package executor

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/code"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/runner"
)

// ExternalRunner runs each action by spawning a buildbox-style runner
// program (`hearth run`, or buildbox-run-*) with the contract of DESIGN.md
// §5, for isolation: a crash of the runner costs one action, never the
// executor.
type ExternalRunner struct {
	// Command is the runner's argv prefix, e.g. ["hearth", "run"].
	Command []string
	// Remote gives the CAS the runner uses (--remote), asked when the
	// runner starts.
	Remote     func() string
	WorkDir    string
	WorkerName string
	// MaxTimeout bounds an action that sets no timeout.
	MaxTimeout time.Duration
	Logger     *slog.Logger
}

// Build implements Runner.
func (r *ExternalRunner) Build(ctx context.Context, t builder.Task) *repb.ExecuteResponse {
	started := timestamppb.Now()
	remote := r.Remote()
	result, st := r.build(ctx, t, remote)
	if st.GetCode() == int32(code.Code_UNAVAILABLE) && ctx.Err() == nil {
		// The runner lost its server. When the executor has moved to
		// another server since (a worker listing several replicas), the
		// action runs again there, once: what the client's own retry
		// would do, minus a round trip through the scheduler.
		if next := r.Remote(); next != remote {
			logger := r.Logger
			if logger == nil {
				logger = slog.Default()
			}
			logger.Warn("runner lost its server; running the action again at the executor's new one",
				"action", t.ActionDigest.String(), "server", remote, "next", next, "err", st.GetMessage())
			result, st = r.build(ctx, t, next)
		}
	}
	if result == nil {
		result = &repb.ActionResult{}
	}
	md := result.GetExecutionMetadata()
	if md == nil {
		md = &repb.ExecutedActionMetadata{WorkerStartTimestamp: started, WorkerCompletedTimestamp: timestamppb.Now()}
		result.ExecutionMetadata = md
	}
	md.Worker = r.WorkerName
	md.QueuedTimestamp = timestamppb.New(t.QueuedAt)
	return &repb.ExecuteResponse{Result: result, Status: st}
}

func (r *ExternalRunner) build(ctx context.Context, t builder.Task, remote string) (*repb.ActionResult, *spb.Status) {
	// The runner's own failures are the executor's, never the client's:
	// INTERNAL, whatever the error wraps.
	internal := func(err error) (*repb.ActionResult, *spb.Status) {
		return nil, &spb.Status{Code: int32(code.Code_INTERNAL), Message: err.Error()}
	}
	dir := filepath.Join(r.WorkDir, uuid.NewString())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return internal(err)
	}
	defer fsutil.RemoveAll(dir)
	data, err := proto.Marshal(t.Action)
	if err != nil {
		return internal(err)
	}
	actionFile, resultFile := filepath.Join(dir, "action.bin"), filepath.Join(dir, "action-result.bin")
	if err := os.WriteFile(actionFile, data, 0o644); err != nil {
		return internal(err)
	}
	workspace := filepath.Join(dir, "workspace")
	if err := os.Mkdir(workspace, 0o755); err != nil {
		return internal(err)
	}
	args := append(append([]string(nil), r.Command...),
		"--action="+actionFile, "--action-result="+resultFile, "--remote="+remote,
		"--workspace-path="+workspace, "--digest-function="+digest.Lower(t.ActionDigest.Function))
	if t.Instance != "" {
		args = append(args, "--instance="+t.Instance)
	}
	log, err := os.Create(filepath.Join(dir, "runner.log"))
	if err != nil {
		return internal(err)
	}
	defer log.Close()
	// The runner enforces the action's own timeout; this bound only stops a
	// runner that hangs beyond it.
	limit := t.Action.GetTimeout().AsDuration()
	if limit <= 0 {
		limit = r.MaxTimeout
	}
	if limit > 0 {
		limit += time.Minute
	}
	res, err := runner.Run(ctx, runner.Request{Args: args, Env: os.Environ(), Dir: dir, Timeout: limit, Stdout: log, Stderr: log})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, errcode.Proto(fmt.Errorf("runner stopped: %w", ctxErr))
		}
		return internal(fmt.Errorf("starting runner %q: %w", r.Command[0], err))
	}
	var result *repb.ActionResult
	if data, err := os.ReadFile(resultFile); err == nil {
		result = &repb.ActionResult{}
		if err := proto.Unmarshal(data, result); err != nil {
			return internal(fmt.Errorf("runner wrote an unreadable ActionResult: %w", err))
		}
	}
	if data, err := os.ReadFile(resultFile + ".error-status"); err == nil {
		st := &spb.Status{}
		if err := proto.Unmarshal(data, st); err != nil {
			return internal(fmt.Errorf("runner wrote an unreadable error status: %w", err))
		}
		return result, st
	}
	if result == nil || res.ExitCode != 0 {
		logTail, _ := os.ReadFile(log.Name())
		if len(logTail) > 4096 {
			logTail = logTail[len(logTail)-4096:]
		}
		return internal(fmt.Errorf("runner exited with code %d without a result: %s", res.ExitCode, logTail))
	}
	return result, &spb.Status{Code: int32(code.Code_OK)}
}
