package reapi

import (
	"context"
	"errors"
	"fmt"
	actionplatform "github.com/hearth-build/hearth/internal/platform"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// executionServer implements Execute and WaitExecution. It validates an
// action completely before it creates an operation, so that every problem a
// client can fix (missing blobs, malformed protos, bad paths, unschedulable
// platforms) is a gRPC error of the Execute call, as REAPI asks; failures of
// the execution itself arrive later in ExecuteResponse.status.
type executionServer struct {
	repb.UnimplementedExecutionServer
	cfg Config
	// inputs remembers the input subtrees found valid and complete, so the
	// check of an uncached action fetches only what earlier actions did not
	// share with it (the executor fetches the whole tree anyway to stage it).
	inputs *inputtree.Checker
}

// Bounds of the remembered input subtrees: an entry costs about 150 bytes,
// and one older than checkedInputsMaxAge is probed again, so that a blob
// evicted from a bounded store meanwhile is reported at Execute time again
// (until then the executor reports it, in ExecuteResponse.status).
const (
	checkedInputsMaxEntries = 1 << 16
	checkedInputsMaxAge     = 2 * time.Minute
)

func newExecutionServer(cfg Config) *executionServer {
	return &executionServer{cfg: cfg, inputs: inputtree.NewChecker(checkedInputsMaxEntries, checkedInputsMaxAge)}
}

func (s *executionServer) Execute(req *repb.ExecuteRequest, stream grpc.ServerStreamingServer[longrunningpb.Operation]) error {
	ctx := stream.Context()
	actionDigest, err := requestAction(req.GetInstanceName(), req.GetDigestFunction(), req.GetActionDigest())
	if err != nil {
		return err
	}
	if p := req.GetExecutionPolicy().GetPriority(); p < MinExecutionPriority || p > MaxExecutionPriority {
		return invalidf("execution_policy.priority %d is outside the supported range %d..%d", p, MinExecutionPriority, MaxExecutionPriority)
	}
	if !req.GetSkipCacheLookup() {
		res, err := s.cfg.ActionCache.Get(ctx, req.GetInstanceName(), actionDigest)
		switch {
		case err == nil:
			op := s.cfg.Scheduler.Completed(req.GetInstanceName(), actionDigest, &repb.ExecuteResponse{Result: res, CachedResult: true})
			return follow(ctx, op, stream, true, s.finisher(ctx, req, actionDigest))
		case !isNotFound(err):
			return toStatus(fmt.Errorf("action cache lookup: %w", err))
		}
	}
	action, cmd, platform, err := s.loadAction(ctx, req.GetInstanceName(), actionDigest)
	if err != nil {
		return toStatus(err)
	}
	op, err := s.cfg.Scheduler.Submit(scheduler.Request{
		Instance:     req.GetInstanceName(),
		ActionDigest: actionDigest,
		Action:       action,
		Platform:     platform,
		Priority:     req.GetExecutionPolicy().GetPriority(),
		DoNotCache:   action.GetDoNotCache(),
		Command:      cmd,
	})
	if err != nil {
		return toStatus(err)
	}
	return follow(ctx, op, stream, !req.GetSkipCacheLookup(), s.finisher(ctx, req, actionDigest))
}

// finisher returns what follow applies to the response of the done
// operation for this request: the inlining it asks for, or nil.
func (s *executionServer) finisher(ctx context.Context, req *repb.ExecuteRequest, action digest.Digest) func(*repb.ExecuteResponse) *repb.ExecuteResponse {
	x := inliningOf(req)
	if x == nil {
		return nil
	}
	return func(resp *repb.ExecuteResponse) *repb.ExecuteResponse {
		return x.apply(ctx, s.cfg.CAS, action.Function, action, s.cfg.maxBatch(), resp)
	}
}

func isNotFound(err error) bool {
	return err != nil && (errors.Is(err, actioncache.ErrNotFound) || errors.Is(err, cas.ErrNotFound))
}

// loadAction fetches and checks everything the action needs: the Action, the
// Command and the input tree (the parts not already known complete), with
// every missing blob reported at once.
func (s *executionServer) loadAction(ctx context.Context, instance string, d digest.Digest) (*repb.Action, *repb.Command, *repb.Platform, error) {
	action := &repb.Action{}
	if err := s.loadProto(ctx, d, action, "Action"); err != nil {
		return nil, nil, nil, err
	}
	fn := d.Function
	cmdDigest, err := digest.FromProto(fn, action.GetCommandDigest())
	if err != nil {
		return nil, nil, nil, invalidf("Action %s: command_digest: %v", d, err)
	}
	rootDigest, err := digest.FromProto(fn, action.GetInputRootDigest())
	if err != nil {
		return nil, nil, nil, invalidf("Action %s: input_root_digest: %v", d, err)
	}
	if t := action.GetTimeout(); t != nil {
		// A zero timeout is the server's default, like an absent one.
		if err := t.CheckValid(); err != nil {
			return nil, nil, nil, invalidf("Action %s: timeout (seconds %d, nanos %d) is not a valid google.protobuf.Duration: %v", d, t.GetSeconds(), t.GetNanos(), err)
		}
		if t.AsDuration() < 0 {
			return nil, nil, nil, invalidf("Action %s: timeout %s is negative; leave it unset for the server's default or give a positive duration", d, t.AsDuration())
		}
	}
	if err := validatePlatform(action.GetPlatform()); err != nil {
		return nil, nil, nil, invalidf("Action %s: platform: %v", d, err)
	}
	// Look for every missing blob before failing, so that one round trip
	// tells the client all it must upload.
	var missing []digest.Digest
	cmd := &repb.Command{}
	cmdErr := s.loadProto(ctx, cmdDigest, cmd, "Command")
	workingDir := ""
	switch me := asMissing(cmdErr); {
	case me != nil:
		missing = append(missing, me.Digests...)
	case cmdErr != nil:
		return nil, nil, nil, cmdErr
	default:
		if err := validateCommand(cmd); err != nil {
			return nil, nil, nil, invalidf("Command %s: %v", cmdDigest, err)
		}
		// REAPI: "It must be a directory which exists in the input tree."
		workingDir = cmd.GetWorkingDirectory()
	}
	treeErr := s.inputs.Check(ctx, s.cfg.CAS, fn, rootDigest, workingDir)
	if me := asMissing(treeErr); me != nil {
		missing = append(missing, me.Digests...)
	} else if treeErr != nil {
		return nil, nil, nil, fmt.Errorf("input root %s: %w", rootDigest, treeErr)
	}
	if len(missing) > 0 {
		return nil, nil, nil, &cas.MissingError{Digests: missing}
	}
	return action, cmd, actionplatform.Of(action, cmd), nil
}

// maxMessageBytes bounds the Action and Command blobs read into memory, as
// inputtree.MaxDirectoryBytes bounds a Directory: a digest naming a huge blob
// must not make the server allocate it.
const maxMessageBytes = inputtree.MaxDirectoryBytes

func (s *executionServer) loadProto(ctx context.Context, d digest.Digest, m proto.Message, what string) error {
	if d.Size > maxMessageBytes {
		return invalidf("%s %s is %d bytes, more than the %d bytes this server reads for one %s", what, d, d.Size, maxMessageBytes, what)
	}
	return cas.GetProto(ctx, s.cfg.CAS, d, m, what)
}

func (s *executionServer) WaitExecution(req *repb.WaitExecutionRequest, stream grpc.ServerStreamingServer[longrunningpb.Operation]) error {
	if req.GetName() == "" {
		return invalidf("name is empty")
	}
	op, err := s.cfg.Scheduler.Get(req.GetName())
	if err != nil {
		return toStatus(err)
	}
	return follow(stream.Context(), op, stream, false, nil)
}

// follow streams an operation's stages until it is done. It counts as a
// waiter, so the operation is cancelled when every follower has gone.
// finish, if not nil, changes the done operation's response for this
// follower.
func follow(ctx context.Context, op *scheduler.Operation, stream grpc.ServerStreamingServer[longrunningpb.Operation], cacheChecked bool, finish func(*repb.ExecuteResponse) *repb.ExecuteResponse) error {
	op.AddWaiter()
	defer op.RemoveWaiter()
	st, changed := op.Watch()
	if cacheChecked {
		// The cache was looked up before the operation existed; the client
		// still sees the stage, under the operation's name.
		pre := st
		pre.Stage, pre.Response = repb.ExecutionStage_CACHE_CHECK, nil
		if err := sendState(stream, pre); err != nil {
			return err
		}
	}
	last := repb.ExecutionStage_UNKNOWN
	for {
		if st.Stage != last || st.Done() {
			if st.Done() && finish != nil {
				st.Response = finish(st.Response)
			}
			if err := sendState(stream, st); err != nil {
				return err
			}
			last = st.Stage
		}
		if st.Done() {
			return nil
		}
		select {
		case <-changed:
			st, changed = op.Watch()
		case <-ctx.Done():
			return toStatus(ctx.Err())
		}
	}
}

func sendState(stream grpc.ServerStreamingServer[longrunningpb.Operation], st scheduler.State) error {
	op, err := operationProto(st)
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(op)
}

// operationProto renders a state as a longrunning Operation. Execution
// failures travel in ExecuteResponse.status; Operation.error is never set.
func operationProto(st scheduler.State) (*longrunningpb.Operation, error) {
	md, err := anypb.New(&repb.ExecuteOperationMetadata{
		Stage:          st.Stage,
		ActionDigest:   st.ActionDigest.Proto(),
		DigestFunction: st.ActionDigest.Function,
	})
	if err != nil {
		return nil, err
	}
	op := &longrunningpb.Operation{Name: st.Name, Metadata: md, Done: st.Done()}
	if st.Done() {
		resp, err := anypb.New(st.Response)
		if err != nil {
			return nil, err
		}
		op.Result = &longrunningpb.Operation_Response{Response: resp}
	}
	return op, nil
}
