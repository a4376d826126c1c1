package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/localcas/localcaspb"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/runner"
)

// localCASSocket returns the socket path of a --remote=unix:PATH (or
// unix:///PATH), which means a LocalCAS server unless --disable-localcas.
func localCASSocket(remote string) (string, bool) {
	p, ok := strings.CutPrefix(remote, "unix:")
	if !ok {
		return "", false
	}
	if rest, ok := strings.CutPrefix(p, "//"); ok {
		p = rest
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return p, true
}

// runLocalCAS runs the action as a buildbox runner does against
// buildbox-casd: the LocalCAS server stages the input root (StageTree),
// the command runs in it, and CaptureFiles/CaptureTree capture and upload
// the outputs. The Command and the output streams go through the REAPI CAS
// the same socket serves.
func runLocalCAS(ctx context.Context, f *runFlags, setup runSetup, sock string, action *repb.Action) (*repb.ActionResult, *spb.Status) {
	fail := func(err error) (*repb.ActionResult, *spb.Status) { return nil, errcode.Proto(err) }
	fn := setup.fn
	// The connection flags (retries, deadlines, keepalive) apply to the
	// socket as to any --remote.
	conn, err := casclient.DialWith(ctx, "unix://"+sock, setup.dial)
	if err != nil {
		return nil, &spb.Status{Code: int32(code.Code_INVALID_ARGUMENT), Message: fmt.Sprintf("--remote: %v", err)}
	}
	defer conn.Close()
	store := casclient.NewStore(conn, f.instance, casclient.WithRetry(setup.retry))
	lc := localcaspb.NewLocalContentAddressableStorageClient(conn)

	cmdDigest, err := digest.FromProto(fn, action.GetCommandDigest())
	if err != nil {
		return fail(fmt.Errorf("command_digest: %w", err))
	}
	cmd := &repb.Command{}
	if err := cas.GetProto(ctx, store, cmdDigest, cmd, "Command"); err != nil {
		return fail(err)
	}
	if err := outputs.Validate(cmd); err != nil {
		return fail(err)
	}
	workspace := f.workspacePath
	if workspace == "" {
		if workspace, err = os.MkdirTemp("", "hearth-run-"); err != nil {
			return fail(err)
		}
		defer os.RemoveAll(workspace)
	}
	md := &repb.ExecutedActionMetadata{Worker: hostname() + "/hearth-run", InputFetchStartTimestamp: timestamppb.Now()}
	stage, err := lc.StageTree(ctx)
	if err != nil {
		return fail(err)
	}
	if err := stage.Send(&localcaspb.StageTreeRequest{InstanceName: f.instance, RootDigest: action.GetInputRootDigest()}); err != nil {
		return fail(err)
	}
	staged, err := stage.Recv()
	if err != nil {
		return fail(fmt.Errorf("StageTree: %w", err))
	}
	defer func() {
		// The second request unstages; wait for the server to be done.
		if stage.Send(&localcaspb.StageTreeRequest{}) == nil {
			_, _ = stage.Recv()
		}
		_ = stage.CloseSend()
	}()
	root := staged.GetPath()
	if err := outputs.CreateParents(root, cmd); err != nil {
		return fail(err)
	}
	md.InputFetchCompletedTimestamp = timestamppb.Now()

	streams, err := os.MkdirTemp(workspace, ".hearth-streams-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(streams)
	stdout, err := os.Create(filepath.Join(streams, "stdout"))
	if err != nil {
		return fail(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(filepath.Join(streams, "stderr"))
	if err != nil {
		return fail(err)
	}
	defer stderr.Close()
	env := make([]string, 0, len(cmd.GetEnvironmentVariables()))
	for _, v := range cmd.GetEnvironmentVariables() {
		env = append(env, v.GetName()+"="+v.GetValue())
	}
	md.ExecutionStartTimestamp = timestamppb.Now()
	res, err := runner.Run(ctx, runner.Request{
		Args: cmd.GetArguments(), Env: env, Dir: filepath.Join(root, filepath.FromSlash(cmd.GetWorkingDirectory())),
		Timeout: action.GetTimeout().AsDuration(), Stdout: stdout, Stderr: stderr,
	})
	md.ExecutionCompletedTimestamp = timestamppb.Now()
	if err != nil {
		return fail(err)
	}
	md.OutputUploadStartTimestamp = timestamppb.Now()
	result := &repb.ActionResult{ExitCode: int32(res.ExitCode), ExecutionMetadata: md}
	if !res.TimedOut {
		if err := captureOutputs(ctx, lc, f.instance, root, cmd, result); err != nil {
			return fail(err)
		}
	}
	files, err := lc.CaptureFiles(ctx, &localcaspb.CaptureFilesRequest{InstanceName: f.instance, Root: streams, Path: []string{"stdout", "stderr"}})
	if err != nil {
		return fail(err)
	}
	for i, r := range files.GetResponses() {
		if r.GetStatus().GetCode() != 0 {
			return nil, r.GetStatus()
		}
		if i == 0 {
			result.StdoutDigest = r.GetDigest()
		} else {
			result.StderrDigest = r.GetDigest()
		}
	}
	md.OutputUploadCompletedTimestamp = timestamppb.Now()
	if res.TimedOut {
		return result, &spb.Status{Code: int32(code.Code_DEADLINE_EXCEEDED), Message: fmt.Sprintf("the action timed out after %s", action.GetTimeout().AsDuration())}
	}
	return result, &spb.Status{}
}

// captureOutputs fills result's outputs from the Command's output paths
// (or the legacy output_files and output_directories), asking the LocalCAS
// server to capture each one by its kind. Outputs that do not exist are
// absent from the result, as REAPI says.
func captureOutputs(ctx context.Context, lc localcaspb.LocalContentAddressableStorageClient, instance, root string, cmd *repb.Command, result *repb.ActionResult) error {
	paths := cmd.GetOutputPaths()
	if len(paths) == 0 {
		paths = append(append(paths, cmd.GetOutputFiles()...), cmd.GetOutputDirectories()...)
	}
	wd := cmd.GetWorkingDirectory()
	var files, dirs []string
	for _, p := range paths {
		rel := filepath.ToSlash(filepath.Join(wd, p))
		st, err := os.Lstat(filepath.Join(root, rel))
		switch {
		case os.IsNotExist(err):
			continue
		case err != nil:
			return err
		case st.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(filepath.Join(root, rel))
			if err != nil {
				return err
			}
			result.OutputSymlinks = append(result.OutputSymlinks, &repb.OutputSymlink{Path: p, Target: target})
		case st.IsDir():
			dirs = append(dirs, p)
		default:
			files = append(files, p)
		}
	}
	join := func(ps []string) []string {
		out := make([]string, len(ps))
		for i, p := range ps {
			out[i] = filepath.ToSlash(filepath.Join(wd, p))
		}
		return out
	}
	if len(files) > 0 {
		resp, err := lc.CaptureFiles(ctx, &localcaspb.CaptureFilesRequest{InstanceName: instance, Root: root, Path: join(files), NodeProperties: cmd.GetOutputNodeProperties()})
		if err != nil {
			return err
		}
		for i, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				return errcode.Error(fmt.Errorf("capturing %q: %s", files[i], r.GetStatus().GetMessage()))
			}
			result.OutputFiles = append(result.OutputFiles, &repb.OutputFile{Path: files[i], Digest: r.GetDigest(), IsExecutable: r.GetIsExecutable(), NodeProperties: r.GetNodeProperties()})
		}
	}
	if len(dirs) > 0 {
		resp, err := lc.CaptureTree(ctx, &localcaspb.CaptureTreeRequest{InstanceName: instance, Root: root, Path: join(dirs), NodeProperties: cmd.GetOutputNodeProperties(), OutputDirectoryFormat: cmd.GetOutputDirectoryFormat()})
		if err != nil {
			return err
		}
		for i, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				return fmt.Errorf("capturing %q: %s", dirs[i], r.GetStatus().GetMessage())
			}
			result.OutputDirectories = append(result.OutputDirectories, &repb.OutputDirectory{Path: dirs[i], TreeDigest: r.GetTreeDigest(), IsTopologicallySorted: true, RootDirectoryDigest: r.GetRootDirectoryDigest()})
		}
	}
	return nil
}
