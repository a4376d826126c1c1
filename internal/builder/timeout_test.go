package builder_test

import (
	"context"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// oneShotTask is an action that runs script with an empty input root and a
// one-second timeout.
func (r *rig) oneShotTask(script string, outputs ...string) builder.Task {
	r.t.Helper()
	cmd := &repb.Command{Arguments: []string{"/bin/sh", "-c", script}, OutputPaths: outputs}
	action := &repb.Action{CommandDigest: r.putProto(cmd), InputRootDigest: r.putProto(&repb.Directory{}), Timeout: durationpb.New(time.Second)}
	ad, _ := digest.FromProto(digest.SHA256, r.putProto(action))
	return builder.Task{ActionDigest: ad, Action: action, Command: cmd, QueuedAt: time.Now()}
}

// A timed-out action reports DEADLINE_EXCEEDED with the outputs it wrote
// before it was killed; outputs that cannot be collected leave the status
// alone.
func TestTimedOutActionKeepsPartialOutputs(t *testing.T) {
	r := newRig(t, workerpool.Options{})
	resp := r.b.Build(context.Background(), r.oneShotTask("printf partial > o; printf err >&2; exec sleep 30", "o"))
	if codes.Code(resp.GetStatus().GetCode()) != codes.DeadlineExceeded {
		t.Fatalf("status %v, want DEADLINE_EXCEEDED", resp.GetStatus())
	}
	of := resp.GetResult().GetOutputFiles()
	if len(of) != 1 || of[0].GetPath() != "o" || of[0].GetDigest().GetSizeBytes() != int64(len("partial")) {
		t.Errorf("output files %v, want the partial o", of)
	}
	if got := r.stderr(resp); got != "err" {
		t.Errorf("stderr %q, want err", got)
	}

	// An absolute symlink is refused as an output (FAILED_PRECONDITION when
	// the action completes); for a timed-out action it is just left out.
	resp = r.b.Build(context.Background(), r.oneShotTask("ln -s /etc o; exec sleep 30", "o"))
	if codes.Code(resp.GetStatus().GetCode()) != codes.DeadlineExceeded {
		t.Fatalf("status %v, want DEADLINE_EXCEEDED", resp.GetStatus())
	}
	if n := len(resp.GetResult().GetOutputSymlinks()) + len(resp.GetResult().GetOutputFiles()); n != 0 {
		t.Errorf("an uncollectable output was returned: %v", resp.GetResult())
	}
}

// A worker action that reaches its timeout reports DEADLINE_EXCEEDED with
// the outputs it wrote before, like a one-shot action, whether the worker
// answers the cancel or is killed; the next action of the key still runs.
func TestTimedOutWorkerActionKeepsPartialOutputs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		startup []string
		props   []string
	}{
		{"answers the cancel", []string{"--honor-cancel"}, []string{"supports-worker-cancellation", "1"}},
		{"killed", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, workerpool.Options{CancelGrace: 300 * time.Millisecond})
			task := r.workerTask(tc.startup, []string{"--out=o", "--content=partial", "--sleep=30s"}, tc.props...)
			task.Command.OutputPaths = []string{"o"}
			task.Action.CommandDigest = r.putProto(task.Command)
			task.Action.Timeout = durationpb.New(time.Second)
			task.ActionDigest, _ = digest.FromProto(digest.SHA256, r.putProto(task.Action))
			resp := r.b.Build(context.Background(), task)
			if codes.Code(resp.GetStatus().GetCode()) != codes.DeadlineExceeded {
				t.Fatalf("status %v, want DEADLINE_EXCEEDED", resp.GetStatus())
			}
			of := resp.GetResult().GetOutputFiles()
			if len(of) != 1 || of[0].GetPath() != "o" || of[0].GetDigest().GetSizeBytes() != int64(len("partial")) {
				t.Errorf("output files %v, want the partial o", of)
			}
			next := r.b.Build(context.Background(), r.workerTask(tc.startup, []string{"--counter"}, tc.props...))
			if next.GetStatus().GetCode() != 0 || next.GetResult().GetExitCode() != 0 {
				t.Fatalf("the next action: %v, exit %d", next.GetStatus(), next.GetResult().GetExitCode())
			}
		})
	}
}
