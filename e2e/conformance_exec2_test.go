package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// checkExecuteMore holds the Execute checks on Command semantics, metadata
// and input/output trees that the first round did not cover.
func (c *conformanceClient) checkExecuteMore(t *testing.T) {
	t.Run("metadata", func(t *testing.T) { c.checkExecMetadata(t) })
	t.Run("command", func(t *testing.T) { c.checkCommandSemantics(t) })
	t.Run("output trees", func(t *testing.T) { c.checkOutputTrees(t) })
	t.Run("legacy output types", func(t *testing.T) { c.checkLegacyOutputTypes(t) })
	t.Run("input trees", func(t *testing.T) { c.checkInputTrees(t) })
	t.Run("absolute symlinks", func(t *testing.T) { c.checkAbsoluteSymlinks(t) })
	t.Run("timeout partial output", func(t *testing.T) { c.checkTimeoutOutput(t) })
	t.Run("cached result", func(t *testing.T) { c.checkCachedResult(t) })
	t.Run("bad actions", func(t *testing.T) { c.checkBadActions(t) })
	t.Run("requests", func(t *testing.T) { c.checkExecuteRequests(t) })
}

// runSpec uploads and executes the action of s (skipping the cache) and
// returns its response and outcome.
func (c *conformanceClient) runSpec(t *testing.T, s actionSpec) (*repb.ExecuteResponse, codes.Code) {
	t.Helper()
	a := s.build(t)
	c.upload(t, a)
	resp, err := c.execute(t.Context(), a.action.digest)
	st := outcome(resp, err)
	return resp, st.Code()
}

// stdoutOf reads the action's stdout, inline or from the CAS.
func (c *conformanceClient) stdoutOf(t *testing.T, res *repb.ActionResult) string {
	t.Helper()
	if len(res.GetStdoutRaw()) > 0 {
		return string(res.GetStdoutRaw())
	}
	if res.GetStdoutDigest() == nil {
		return ""
	}
	data, err := c.byteStreamRead(t.Context(), res.GetStdoutDigest())
	if err != nil {
		t.Fatalf("reading stdout %v: %v", res.GetStdoutDigest(), err)
	}
	return string(data)
}

func (c *conformanceClient) readTree(t *testing.T, d *repb.Digest) *repb.Tree {
	t.Helper()
	data, err := c.byteStreamRead(t.Context(), d)
	if err != nil {
		t.Fatalf("reading Tree %v: %v", d, err)
	}
	tree := &repb.Tree{}
	if err := proto.Unmarshal(data, tree); err != nil {
		t.Fatalf("Tree %v does not parse: %v", d, err)
	}
	return tree
}

func (c *conformanceClient) checkExecMetadata(t *testing.T) {
	ctx := t.Context()
	a := actionSpec{args: []string{"/bin/sh", "-c", "echo hi > o; : " + uuid.NewString()}, outputPaths: []string{"o"}}.build(t)
	c.upload(t, a)
	ops, err := c.runOps(ctx, &repb.ExecuteRequest{ActionDigest: a.action.digest})
	if err != nil {
		t.Fatalf("Execute: %v", err)
	}
	resp := checkOperationStream(t, ops, a.action.digest)
	// ExecutionStage: "there is no requirement that the remote execution
	// system reports events along this order. For example, an operation MAY
	// transition from the EXECUTING stage back to QUEUED": the only step back
	// the spec names is EXECUTING → QUEUED; nothing follows COMPLETED.
	prev := repb.ExecutionStage_UNKNOWN
	for i, op := range ops {
		md := &repb.ExecuteOperationMetadata{}
		_ = op.GetMetadata().UnmarshalTo(md)
		s := md.GetStage()
		if s < prev && !(prev == repb.ExecutionStage_EXECUTING && s == repb.ExecutionStage_QUEUED) {
			t.Errorf("operation %d goes from stage %v back to %v", i, prev, s)
		}
		prev = s
		// stdout_stream_name: "If set, the client can use this resource
		// name with ByteStream.Read to stream the standard output".
		for _, name := range []string{md.GetStdoutStreamName(), md.GetStderrStreamName()} {
			if name == "" {
				continue
			}
			if _, err := c.readAll(ctx, &bspb.ReadRequest{ResourceName: name}); err != nil && codeOf(err) != codes.NotFound {
				t.Errorf("ByteStream.Read(%s) of a stream name from the metadata: %v", name, err)
			}
		}
	}
	em := resp.GetResult().GetExecutionMetadata()
	// ExecutedActionMetadata.worker: "The name of the worker which ran the
	// execution."
	if em.GetWorker() == "" {
		t.Errorf("execution_metadata.worker is empty for an executed action")
	}
	// The timestamps describe one pass through the stages in this order:
	// "When was the action added to the queue", "When the worker received the
	// action", fetching inputs, executing, uploading outputs, "When the worker
	// completed the action, including all stages".
	stamps := []struct {
		name string
		ts   *timestamppb.Timestamp
	}{
		{"queued", em.GetQueuedTimestamp()},
		{"worker_start", em.GetWorkerStartTimestamp()},
		{"input_fetch_start", em.GetInputFetchStartTimestamp()},
		{"input_fetch_completed", em.GetInputFetchCompletedTimestamp()},
		{"execution_start", em.GetExecutionStartTimestamp()},
		{"execution_completed", em.GetExecutionCompletedTimestamp()},
		{"output_upload_start", em.GetOutputUploadStartTimestamp()},
		{"output_upload_completed", em.GetOutputUploadCompletedTimestamp()},
		{"worker_completed", em.GetWorkerCompletedTimestamp()},
	}
	var last *timestamppb.Timestamp
	lastName := ""
	for _, s := range stamps {
		if s.ts == nil {
			t.Errorf("execution_metadata.%s_timestamp is not set", s.name)
			continue
		}
		if last != nil && s.ts.AsTime().Before(last.AsTime()) {
			t.Errorf("%s_timestamp %v is before %s_timestamp %v", s.name, s.ts.AsTime(), lastName, last.AsTime())
		}
		last, lastName = s.ts, s.name
	}
	if em.GetExecutionStartTimestamp() != nil && time.Since(em.GetExecutionStartTimestamp().AsTime()) > time.Hour {
		t.Errorf("execution_start_timestamp %v is not this execution's", em.GetExecutionStartTimestamp().AsTime())
	}
	// server_logs: a LogFile's digest is "The digest of the log contents",
	// so it can be read from the CAS.
	for key, lf := range resp.GetServerLogs() {
		if _, err := c.byteStreamRead(ctx, lf.GetDigest()); err != nil {
			t.Errorf("server_logs[%q] %v unreadable: %v", key, lf.GetDigest(), err)
		}
	}
}

func (c *conformanceClient) checkCommandSemantics(t *testing.T) {
	tag := uuid.NewString()
	// arguments: "an unqualified path (without path separators) which will be
	// resolved using the operating system's equivalent of the PATH
	// environment variable. ... If the environment_variables list contains
	// an entry for the PATH environment variable, it SHOULD be respected."
	// environment_variables: "these defaults can be overridden using this
	// field. Additional variables can also be specified."
	resp, code := c.runSpec(t, actionSpec{
		args: []string{"sh", "-c", `printf '%s|%s|%s' "$HEARTH_CONF_A" "$HEARTH_CONF_B" "$1"`, "sh", "an argument with spaces"},
		env:  map[string]string{"HEARTH_CONF_A": "a=b c", "HEARTH_CONF_B": tag, "PATH": "/usr/bin:/bin"},
	})
	if code != codes.OK || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("sh found through PATH: %v, exit %d", code, resp.GetResult().GetExitCode())
	}
	if got, want := c.stdoutOf(t, resp.GetResult()), "a=b c|"+tag+"|an argument with spaces"; got != want {
		t.Errorf("environment and arguments: stdout %q, want %q", got, want)
	}

	// "a path relative to the working directory": ./tool in working
	// directory wd runs wd/tool of the input root.
	tool := newTestBlob([]byte("#!/bin/sh\necho tool ran in $(basename $(pwd)) " + tag + "\n"))
	wd := c.putDirectory(t, &repb.Directory{Files: []*repb.FileNode{{Name: "tool", Digest: tool.digest, IsExecutable: true}}})
	root := c.putDirectory(t, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "wd", Digest: wd.digest}}})
	cmd := marshalBlob(t, &repb.Command{Arguments: []string{"./tool"}, WorkingDirectory: "wd"})
	act := marshalBlob(t, &repb.Action{CommandDigest: cmd.digest, InputRootDigest: root.digest})
	if err := c.batchUpload(t.Context(), []testBlob{tool, cmd, act}); err != nil {
		t.Fatal(err)
	}
	r, err := c.execute(t.Context(), act.digest)
	if st := outcome(r, err); st.Code() != codes.OK || r.GetResult().GetExitCode() != 0 {
		t.Fatalf("./tool in working_directory wd: %v, exit %d", st, r.GetResult().GetExitCode())
	}
	if got, want := c.stdoutOf(t, r.GetResult()), "tool ran in wd "+tag+"\n"; got != want {
		t.Errorf("./tool: stdout %q, want %q", got, want)
	}

	// Exit codes come back as the command returned them.
	for _, code := range []int32{1, 42, 255} {
		resp, st := c.runSpec(t, actionSpec{args: []string{"/bin/sh", "-c", "exit $1", "sh", strconv.Itoa(int(code))}})
		if st != codes.OK || resp.GetResult().GetExitCode() != code {
			t.Errorf("exit %d: status %v, exit_code %d", code, st, resp.GetResult().GetExitCode())
		}
	}

	// "Directories leading up to the output paths are created by the worker
	// prior to execution, even if they are not explicitly part of the input
	// root." For output_directories: "Directories leading up to the output
	// directories (but not the output directories themselves) are created".
	resp, code = c.runSpec(t, actionSpec{
		args:        []string{"/bin/sh", "-c", "echo x > a/b/f; : " + tag},
		outputPaths: []string{"a/b/f"},
	})
	if code != codes.OK || resp.GetResult().GetExitCode() != 0 || len(resp.GetResult().GetOutputFiles()) != 1 {
		t.Errorf("writing output a/b/f without creating a/b: %v, exit %d, outputs %v", code, resp.GetResult().GetExitCode(), resp.GetResult().GetOutputFiles())
	}
	resp, code = c.runSpec(t, actionSpec{
		args: []string{"/bin/sh", "-c", "test -d p && test ! -e p/q && test -d r && mkdir p/q && touch p/q/x r/s; : " + tag},
		editCommand: func(cmd *repb.Command) {
			//lint:ignore SA1019 the legacy output fields are what this check covers.
			cmd.OutputDirectories = []string{"p/q"}
			//lint:ignore SA1019 the legacy output fields are what this check covers.
			cmd.OutputFiles = []string{"r/s"}
		},
	})
	if code != codes.OK || resp.GetResult().GetExitCode() != 0 || len(resp.GetResult().GetOutputDirectories()) != 1 || len(resp.GetResult().GetOutputFiles()) != 1 {
		t.Errorf("legacy outputs p/q (dir) and r/s (file): %v, exit %d (want p and r made, p/q not), result %v", code, resp.GetResult().GetExitCode(), resp.GetResult())
	}

	// output_paths: "If output_paths is used, output_files and
	// output_directories will be ignored!"
	resp, code = c.runSpec(t, actionSpec{
		args:        []string{"/bin/sh", "-c", "echo > a; echo > b; mkdir d; : " + tag},
		outputPaths: []string{"a"},
		editCommand: func(cmd *repb.Command) {
			//lint:ignore SA1019 the legacy output fields are what this check covers.
			cmd.OutputFiles = []string{"b"}
			//lint:ignore SA1019 the legacy output fields are what this check covers.
			cmd.OutputDirectories = []string{"d"}
		},
	})
	if code != codes.OK {
		t.Errorf("output_paths with legacy fields too: %v", code)
	} else if res := resp.GetResult(); len(res.GetOutputFiles()) != 1 || res.GetOutputFiles()[0].GetPath() != "a" || len(res.GetOutputDirectories()) != 0 {
		t.Errorf("output_paths [a] with legacy [b] and [d]: files %v, dirs %v; want only a", res.GetOutputFiles(), res.GetOutputDirectories())
	}

	// OutputFile.is_executable: "True if file is executable, false otherwise."
	resp, code = c.runSpec(t, actionSpec{
		args:        []string{"/bin/sh", "-c", "echo x > x; chmod 755 x; echo y > y; chmod 644 y; : " + tag},
		outputPaths: []string{"x", "y"},
	})
	if code != codes.OK {
		t.Fatalf("is_executable action: %v", code)
	}
	for _, f := range resp.GetResult().GetOutputFiles() {
		if want := f.GetPath() == "x"; f.GetIsExecutable() != want {
			t.Errorf("output %s: is_executable %v, want %v", f.GetPath(), f.GetIsExecutable(), want)
		}
	}
	if n := len(resp.GetResult().GetOutputFiles()); n != 2 {
		t.Errorf("%d output files, want x and y", n)
	}
}

func (c *conformanceClient) checkOutputTrees(t *testing.T) {
	tag := uuid.NewString()
	// An output directory holds everything below it: an empty directory
	// ("Each child in the directory"), an executable file, and a symlink,
	// which stays a symlink (Directory.symlinks) rather than being followed.
	resp, code := c.runSpec(t, actionSpec{
		args:        []string{"/bin/sh", "-c", "mkdir -p out/empty out/sub; printf e > out/sub/run; chmod +x out/sub/run; ln -s sub/run out/link; printf n > out/plain; : " + tag},
		outputPaths: []string{"out"},
	})
	if code != codes.OK || len(resp.GetResult().GetOutputDirectories()) != 1 {
		t.Fatalf("output directory: %v, %v", code, resp.GetResult())
	}
	od := resp.GetResult().GetOutputDirectories()[0]
	tree := c.readTree(t, od.GetTreeDigest())
	root := tree.GetRoot()
	var names []string
	for _, d := range root.GetDirectories() {
		names = append(names, d.GetName())
	}
	if strings.Join(names, ",") != "empty,sub" {
		t.Errorf("root directories %v, want empty,sub", names)
	}
	if len(root.GetSymlinks()) != 1 || root.GetSymlinks()[0].GetName() != "link" || root.GetSymlinks()[0].GetTarget() != "sub/run" {
		t.Errorf("root symlinks %v, want link -> sub/run", root.GetSymlinks())
	}
	if len(root.GetFiles()) != 1 || root.GetFiles()[0].GetName() != "plain" || root.GetFiles()[0].GetIsExecutable() {
		t.Errorf("root files %v, want plain (not executable)", root.GetFiles())
	}
	// Tree.children: "All the child directories: the directories referred to
	// by the root and, recursively, all its children."
	byDigest := map[string]*repb.Directory{}
	for _, ch := range tree.GetChildren() {
		byDigest[marshalBlob(t, ch).String()] = ch
	}
	for _, dn := range root.GetDirectories() {
		ch, ok := byDigest[fmt.Sprintf("%s/%d", dn.GetDigest().GetHash(), dn.GetDigest().GetSizeBytes())]
		if !ok {
			t.Errorf("directory %s (%v) is not among the Tree's children", dn.GetName(), dn.GetDigest())
			continue
		}
		switch dn.GetName() {
		case "empty":
			if len(ch.GetFiles())+len(ch.GetDirectories())+len(ch.GetSymlinks()) != 0 {
				t.Errorf("empty directory holds %v", ch)
			}
		case "sub":
			if len(ch.GetFiles()) != 1 || ch.GetFiles()[0].GetName() != "run" || !ch.GetFiles()[0].GetIsExecutable() {
				t.Errorf("sub holds %v, want executable run", ch.GetFiles())
			}
		}
	}
	// "An output directory is allowed to be a parent of another output
	// directory."
	resp, code = c.runSpec(t, actionSpec{
		args: []string{"/bin/sh", "-c", "mkdir -p p/c; echo > p/c/f; : " + tag},
		editCommand: func(cmd *repb.Command) {
			//lint:ignore SA1019 the legacy output fields are what this check covers.
			cmd.OutputDirectories = []string{"p", "p/c"}
		},
	})
	if code != codes.OK || len(resp.GetResult().GetOutputDirectories()) != 2 {
		t.Errorf("nested output directories p and p/c: %v, %v", code, resp.GetResult().GetOutputDirectories())
	}
	// output_directories: "The special value of empty string is allowed ...
	// and can be used to capture the entire working directory tree,
	// including inputs."
	resp, code = c.runSpec(t, actionSpec{
		args:  []string{"/bin/sh", "-c", "echo > made; : " + tag},
		files: map[string]string{"in": "input"},
		editCommand: func(cmd *repb.Command) {
			//lint:ignore SA1019 the legacy output fields are what this check covers.
			cmd.OutputDirectories = []string{""}
		},
	})
	if code != codes.OK || len(resp.GetResult().GetOutputDirectories()) != 1 {
		t.Errorf("output directory \"\": %v, %v", code, resp.GetResult().GetOutputDirectories())
	} else {
		var got []string
		for _, f := range c.readTree(t, resp.GetResult().GetOutputDirectories()[0].GetTreeDigest()).GetRoot().GetFiles() {
			got = append(got, f.GetName())
		}
		if strings.Join(got, ",") != "in,made" {
			t.Errorf("output directory \"\" holds files %v, want in,made", got)
		}
	}
}

func (c *conformanceClient) checkLegacyOutputTypes(t *testing.T) {
	tag := uuid.NewString()
	for _, tc := range []struct {
		what, script string
		files, dirs  []string
	}{
		// "If an output of the same name as listed in output_files of the
		// Command was found in output_directories, but was not a directory,
		// the server will return a FAILED_PRECONDITION."
		{"output directory that is a file", "echo > d", nil, []string{"d"}},
		// "If an output symbolic link of the same name as listed in
		// output_files of the Command was found, but its target type was not
		// a regular file, the server will return a FAILED_PRECONDITION."
		{"output file symlink to a directory", "mkdir t; ln -s t f", []string{"f"}, nil},
		// output_directory_symlinks: "If an output of the same name was
		// found, but was a symbolic link to a file instead of a directory,
		// the server will return a FAILED_PRECONDITION."
		{"output directory symlink to a file", "echo > t; ln -s t d", nil, []string{"d"}},
	} {
		_, code := c.runSpec(t, actionSpec{
			args: []string{"/bin/sh", "-c", tc.script + "; : " + tag},
			editCommand: func(cmd *repb.Command) {
				//lint:ignore SA1019 the legacy output fields are what this check covers.
				cmd.OutputFiles, cmd.OutputDirectories = tc.files, tc.dirs
			},
		})
		if code != codes.FailedPrecondition {
			t.Errorf("%s: %v, want FAILED_PRECONDITION", tc.what, code)
		}
	}
}

func (c *conformanceClient) checkInputTrees(t *testing.T) {
	ctx := t.Context()
	tag := uuid.NewString()
	// "The files in the directory tree are available in the correct location
	// on the build machine before the command is executed": contents, the
	// executable bit ("True if file is executable, false otherwise"), empty
	// directories, and symlinks with their targets.
	data := newTestBlob([]byte("data " + tag))
	exe := newTestBlob([]byte("#!/bin/sh\necho exe\n"))
	empty := c.putDirectory(t, &repb.Directory{})
	sub := c.putDirectory(t, &repb.Directory{
		Files:    []*repb.FileNode{{Name: "data", Digest: data.digest}},
		Symlinks: []*repb.SymlinkNode{{Name: "up", Target: "../exe"}},
	})
	root := c.putDirectory(t, &repb.Directory{
		Files:       []*repb.FileNode{{Name: "exe", Digest: exe.digest, IsExecutable: true}},
		Directories: []*repb.DirectoryNode{{Name: "e", Digest: empty.digest}, {Name: "sub", Digest: sub.digest}},
		Symlinks:    []*repb.SymlinkNode{{Name: "link", Target: "sub/data"}},
	})
	script := `test -d e && test -z "$(ls -A e)" && test -x exe && test ! -x sub/data && test -L link && ` +
		`printf '%s|%s|%s|' "$(readlink link)" "$(readlink sub/up)" "$(cat link)" && ./sub/up`
	cmd := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/sh", "-c", script}})
	act := marshalBlob(t, &repb.Action{CommandDigest: cmd.digest, InputRootDigest: root.digest})
	if err := c.batchUpload(ctx, []testBlob{data, exe, cmd, act}); err != nil {
		t.Fatal(err)
	}
	resp, err := c.execute(ctx, act.digest)
	if st := outcome(resp, err); st.Code() != codes.OK || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("input tree with symlinks: %v, exit %d, stderr %v", st, resp.GetResult().GetExitCode(), resp.GetResult().GetStderrDigest())
	}
	if got, want := c.stdoutOf(t, resp.GetResult()), "sub/data|../exe|data "+tag+"|exe\n"; got != want {
		t.Errorf("input tree: stdout %q, want %q", got, want)
	}

	// Canonical form: "Each child in the directory must have a unique path
	// segment (file name)"; "Every child in the directory must have a path of
	// exactly one segment"; "The files, directories and symlinks in the
	// directory must each be sorted".
	e := newTestBlob(nil)
	for what, dir := range map[string]*repb.Directory{
		"duplicate file names":           {Files: []*repb.FileNode{{Name: "a", Digest: e.digest}, {Name: "a", Digest: e.digest}}},
		"a file and a dir of a name":     {Files: []*repb.FileNode{{Name: "a", Digest: e.digest}}, Directories: []*repb.DirectoryNode{{Name: "a", Digest: e.digest}}},
		"a file and a symlink of a name": {Files: []*repb.FileNode{{Name: "a", Digest: e.digest}}, Symlinks: []*repb.SymlinkNode{{Name: "a", Target: "b"}}},
		"unsorted directories":           {Directories: []*repb.DirectoryNode{{Name: "b", Digest: e.digest}, {Name: "a", Digest: e.digest}}},
		"unsorted symlinks":              {Symlinks: []*repb.SymlinkNode{{Name: "b", Target: "x"}, {Name: "a", Target: "x"}}},
		"an empty name":                  {Files: []*repb.FileNode{{Name: "", Digest: e.digest}}},
		"the name ..":                    {Directories: []*repb.DirectoryNode{{Name: "..", Digest: e.digest}}},
		"the name .":                     {Files: []*repb.FileNode{{Name: ".", Digest: e.digest}}},
		"a file without a digest":        {Files: []*repb.FileNode{{Name: "f"}}},
		"a malformed file digest":        {Files: []*repb.FileNode{{Name: "f", Digest: &repb.Digest{Hash: "xyz", SizeBytes: 1}}}},
		"a symlink without target":       {Symlinks: []*repb.SymlinkNode{{Name: "l"}}},
	} {
		dirB := c.putDirectory(t, dir)
		// One level down too: the rule holds for every Directory of the tree.
		rootB := c.putDirectory(t, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "d", Digest: dirB.digest}}})
		cmdB := marshalBlob(t, &repb.Command{Arguments: []string{"/bin/true", tag}})
		actB := marshalBlob(t, &repb.Action{CommandDigest: cmdB.digest, InputRootDigest: rootB.digest})
		if err := c.batchUpload(ctx, []testBlob{cmdB, actB}); err != nil {
			t.Fatal(err)
		}
		if st := outcome(c.execute(ctx, actB.digest)); st.Code() != codes.InvalidArgument {
			t.Errorf("input subdirectory with %s: %v, want INVALID_ARGUMENT", what, st)
		}
	}
}

func (c *conformanceClient) checkAbsoluteSymlinks(t *testing.T) {
	ctx := t.Context()
	caps, err := c.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	strategy := caps.GetCacheCapabilities().GetSymlinkAbsolutePathStrategy()
	tag := uuid.NewString()
	in := actionSpec{args: []string{"/bin/sh", "-c", "readlink abs; : " + tag}, symlinks: map[string]string{"abs": "/etc/hostname"}}
	inResp, inCode := c.runSpec(t, in)
	out := actionSpec{args: []string{"/bin/sh", "-c", "ln -s /etc/hostname abs; mkdir d; ln -s /etc d/abs; : " + tag}, outputPaths: []string{"abs"}}
	outResp, outCode := c.runSpec(t, out)
	inDir := actionSpec{args: []string{"/bin/sh", "-c", "mkdir d; ln -s /etc d/abs; : " + tag}, outputPaths: []string{"d"}}
	_, inDirCode := c.runSpec(t, inDir)
	switch strategy {
	case repb.SymlinkAbsolutePathStrategy_DISALLOWED:
		// "Server will return an INVALID_ARGUMENT on input symlinks with
		// absolute targets. If an action tries to create an output symlink
		// with an absolute target, a FAILED_PRECONDITION will be returned."
		if inCode != codes.InvalidArgument {
			t.Errorf("DISALLOWED: input symlink to /etc/hostname: %v, want INVALID_ARGUMENT", inCode)
		}
		if outCode != codes.FailedPrecondition {
			t.Errorf("DISALLOWED: output symlink to /etc/hostname: %v, want FAILED_PRECONDITION", outCode)
		}
		if inDirCode != codes.FailedPrecondition {
			t.Errorf("DISALLOWED: symlink to /etc inside output directory d: %v, want FAILED_PRECONDITION", inDirCode)
		}
	case repb.SymlinkAbsolutePathStrategy_ALLOWED:
		if inCode != codes.OK || c.stdoutOf(t, inResp.GetResult()) != "/etc/hostname\n" {
			t.Errorf("ALLOWED: input symlink to /etc/hostname: %v, %v", inCode, inResp)
		}
		if outCode != codes.OK || len(outResp.GetResult().GetOutputSymlinks()) != 1 || outResp.GetResult().GetOutputSymlinks()[0].GetTarget() != "/etc/hostname" {
			t.Errorf("ALLOWED: output symlink to /etc/hostname: %v, %v", outCode, outResp)
		}
	}
}
