package executor_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestExecuteRunsAndCaches(t *testing.T) {
	c := startCluster(t, time.Minute)
	input := []byte("hello input\n")
	root := &repb.Directory{
		Files: []*repb.FileNode{{Name: "in.txt", Digest: c.put(input)}},
	}
	cmd := &repb.Command{
		Arguments:            []string{"sh", "-c", `cat in.txt > out/copy.txt && mkdir -p dir/sub && echo x > dir/sub/f && ln -s in.txt link && echo to-stdout && echo to-stderr >&2`},
		EnvironmentVariables: env("PATH", "/usr/bin:/bin"),
		OutputPaths:          []string{"dir", "link", "out/copy.txt"},
	}
	ad := c.action(cmd, root)
	ops, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	got := stages(t, ops)
	want := []repb.ExecutionStage_Value{repb.ExecutionStage_CACHE_CHECK, repb.ExecutionStage_QUEUED, repb.ExecutionStage_EXECUTING, repb.ExecutionStage_COMPLETED}
	// QUEUED may be skipped by the time the stream reads it, never reordered.
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			t.Fatalf("stages out of order: %v", got)
		}
	}
	if got[0] != want[0] || got[len(got)-1] != want[3] {
		t.Fatalf("stages = %v", got)
	}
	if resp.GetStatus().GetCode() != 0 || resp.GetCachedResult() {
		t.Fatalf("status %v cached %v", resp.GetStatus(), resp.GetCachedResult())
	}
	r := resp.GetResult()
	if r.GetExitCode() != 0 || c.read(r.GetStdoutDigest()) != "to-stdout\n" || c.read(r.GetStderrDigest()) != "to-stderr\n" {
		t.Fatalf("exit %d stdout %q stderr %q", r.GetExitCode(), c.read(r.GetStdoutDigest()), c.read(r.GetStderrDigest()))
	}
	if len(r.GetOutputFiles()) != 1 || r.GetOutputFiles()[0].GetPath() != "out/copy.txt" || c.read(r.GetOutputFiles()[0].GetDigest()) != string(input) {
		t.Fatalf("output files %v", r.GetOutputFiles())
	}
	if len(r.GetOutputDirectories()) != 1 || r.GetOutputDirectories()[0].GetPath() != "dir" {
		t.Fatalf("output dirs %v", r.GetOutputDirectories())
	}
	if len(r.GetOutputSymlinks()) != 1 || r.GetOutputSymlinks()[0].GetTarget() != "in.txt" {
		t.Fatalf("output symlinks %v", r.GetOutputSymlinks())
	}
	md := r.GetExecutionMetadata()
	for name, ts := range map[string]interface{ AsTime() time.Time }{
		"queued": md.GetQueuedTimestamp(), "worker start": md.GetWorkerStartTimestamp(), "worker completed": md.GetWorkerCompletedTimestamp(),
		"input fetch start": md.GetInputFetchStartTimestamp(), "input fetch completed": md.GetInputFetchCompletedTimestamp(),
		"execution start": md.GetExecutionStartTimestamp(), "execution completed": md.GetExecutionCompletedTimestamp(),
		"upload start": md.GetOutputUploadStartTimestamp(), "upload completed": md.GetOutputUploadCompletedTimestamp(),
	} {
		if ts.AsTime().Unix() <= 0 {
			t.Errorf("%s timestamp not set", name)
		}
	}
	if md.GetWorker() != "test-executor" {
		t.Errorf("worker = %q", md.GetWorker())
	}
	if !md.GetExecutionStartTimestamp().AsTime().Before(md.GetExecutionCompletedTimestamp().AsTime()) {
		t.Error("execution timestamps not ordered")
	}

	ops, resp, err = c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetCachedResult() || resp.GetResult().GetOutputFiles()[0].GetPath() != "out/copy.txt" {
		t.Fatalf("second run not served from cache: %v", resp)
	}
	if s := stages(t, ops); s[len(s)-1] != repb.ExecutionStage_COMPLETED {
		t.Fatalf("stages %v", s)
	}
	// skip_cache_lookup runs it again.
	_, resp, _ = c.execute(&repb.ExecuteRequest{ActionDigest: ad, SkipCacheLookup: true})
	if resp.GetCachedResult() {
		t.Fatal("skip_cache_lookup served from cache")
	}
}

func TestExecuteFailuresAreNotCached(t *testing.T) {
	c := startCluster(t, time.Minute)
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "exit 3"}}, nil)
	for range 2 {
		_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetResult().GetExitCode() != 3 || resp.GetStatus().GetCode() != 0 || resp.GetCachedResult() {
			t.Fatalf("resp = %v", resp)
		}
	}
}

func TestExecuteEnvironmentIsExactlyTheCommands(t *testing.T) {
	c := startCluster(t, time.Minute)
	t.Setenv("HEARTH_LEAK_CHECK", "leaked")
	ad := c.action(&repb.Command{Arguments: []string{"/usr/bin/env"}, EnvironmentVariables: env("A", "1", "B", "two words")}, nil)
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(c.read(resp.GetResult().GetStdoutDigest())), "\n")
	slices.Sort(lines)
	if !slices.Equal(lines, []string{"A=1", "B=two words"}) {
		t.Fatalf("environment = %q", lines)
	}
}

func TestExecuteTimeoutKeepsOutput(t *testing.T) {
	c := startCluster(t, time.Minute)
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "echo started; sleep 30"}}, nil,
		func(a *repb.Action) { a.Timeout = durationpb.New(300 * time.Millisecond) })
	start := time.Now()
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus().GetCode() != int32(code.Code_DEADLINE_EXCEEDED) {
		t.Fatalf("status = %v", resp.GetStatus())
	}
	if got := c.read(resp.GetResult().GetStdoutDigest()); got != "started\n" {
		t.Fatalf("stdout = %q", got)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("timeout not enforced promptly")
	}
	// A timeout above the executors' maximum is refused up front.
	long := c.action(&repb.Command{Arguments: []string{"true"}}, nil, func(a *repb.Action) { a.Timeout = durationpb.New(time.Hour) })
	if _, _, err := c.execute(&repb.ExecuteRequest{ActionDigest: long}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("over-long timeout: %v", err)
	}
}

func TestExecuteMissingBlobs(t *testing.T) {
	c := startCluster(t, time.Minute)
	absent := &repb.Digest{Hash: strings.Repeat("ab", 32), SizeBytes: 5}
	cases := map[string]*repb.Digest{
		"action": absent,
		"input file": c.action(&repb.Command{Arguments: []string{"true"}}, &repb.Directory{
			Files: []*repb.FileNode{{Name: "f", Digest: absent}}}),
		"command": c.putProto(&repb.Action{CommandDigest: absent, InputRootDigest: c.putProto(&repb.Directory{})}),
	}
	for name, ad := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
			st := status.Convert(err)
			if st.Code() != codes.FailedPrecondition {
				t.Fatalf("err = %v", err)
			}
			found := false
			for _, d := range st.Details() {
				if pf, ok := d.(*errdetails.PreconditionFailure); ok {
					for _, v := range pf.GetViolations() {
						if v.GetType() == "MISSING" && v.GetSubject() == "blobs/"+absent.GetHash()+"/5" {
							found = true
						}
					}
				}
			}
			if !found {
				t.Fatalf("no MISSING violation for the absent blob: %v", st.Details())
			}
		})
	}
}

func TestExecuteRejectsBadInput(t *testing.T) {
	c := startCluster(t, time.Minute)
	f := c.put([]byte("x"))
	cases := map[string]*repb.Digest{
		"output escapes":      c.action(&repb.Command{Arguments: []string{"true"}, OutputPaths: []string{"../x"}}, nil),
		"absolute output":     c.action(&repb.Command{Arguments: []string{"true"}, OutputFiles: []string{"/etc/passwd"}}, nil),
		"working dir escapes": c.action(&repb.Command{Arguments: []string{"true"}, WorkingDirectory: "../.."}, nil),
		"no arguments":        c.action(&repb.Command{}, nil),
		"input name dotdot":   c.action(&repb.Command{Arguments: []string{"true"}}, &repb.Directory{Files: []*repb.FileNode{{Name: "..", Digest: f}}}),
		"input name slash":    c.action(&repb.Command{Arguments: []string{"true"}}, &repb.Directory{Files: []*repb.FileNode{{Name: "a/b", Digest: f}}}),
		"duplicate names":     c.action(&repb.Command{Arguments: []string{"true"}}, &repb.Directory{Files: []*repb.FileNode{{Name: "a", Digest: f}, {Name: "a", Digest: f}}}),
		"absolute symlink":    c.action(&repb.Command{Arguments: []string{"true"}}, &repb.Directory{Symlinks: []*repb.SymlinkNode{{Name: "s", Target: "/etc"}}}),
		"escaping symlink":    c.action(&repb.Command{Arguments: []string{"true"}}, &repb.Directory{Symlinks: []*repb.SymlinkNode{{Name: "s", Target: "../x"}}}),
		"malformed action":    c.put([]byte("\xff\xff\xff")),
		"malformed digest":    {Hash: "xyz", SizeBytes: 1},
		"bad command digest":  c.putProto(&repb.Action{CommandDigest: &repb.Digest{Hash: "nothex", SizeBytes: 1}, InputRootDigest: c.putProto(&repb.Directory{})}),
	}
	for name, ad := range cases {
		t.Run(name, func(t *testing.T) {
			if _, _, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad}); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("err = %v, want INVALID_ARGUMENT", err)
			}
		})
	}
}

func TestExecuteUnmatchablePlatform(t *testing.T) {
	c := startCluster(t, time.Minute)
	ad := c.action(&repb.Command{Arguments: []string{"true"}, Platform: &repb.Platform{Properties: []*repb.Platform_Property{
		{Name: "OSFamily", Value: "Windows"}, {Name: "persistentWorkerKey", Value: "k"}}}}, nil)
	_, _, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "OSFamily=Windows") || strings.Contains(err.Error(), "persistentWorkerKey") {
		t.Fatalf("err = %v", err)
	}
	ok := c.action(&repb.Command{Arguments: []string{"true"}, Platform: &repb.Platform{Properties: []*repb.Platform_Property{
		{Name: "OSFamily", Value: "Linux"}, {Name: "cpu_count", Value: "1"}, {Name: "persistentWorkerKey", Value: "k"}}}}, nil)
	if _, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ok}); err != nil || resp.GetStatus().GetCode() != 0 {
		t.Fatalf("matching action: %v %v", err, resp.GetStatus())
	}
}

func TestWaitExecutionReattaches(t *testing.T) {
	c := startCluster(t, time.Minute)
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "sleep 0.5; echo done"}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	cancel() // the client drops its stream...
	// ...and reattaches within the grace period.
	w, err := c.exec.WaitExecution(context.Background(), &repb.WaitExecutionRequest{Name: first.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	ops, resp, err := drain(t, w)
	if err != nil {
		t.Fatal(err)
	}
	if ops[0].GetName() != first.GetName() || c.read(resp.GetResult().GetStdoutDigest()) != "done\n" {
		t.Fatalf("reattached result %v", resp)
	}
	w, err = c.exec.WaitExecution(context.Background(), &repb.WaitExecutionRequest{Name: "no-such-operation"})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("unknown operation: %v", err)
	}
}

func TestAbandonedActionIsCancelled(t *testing.T) {
	c := startCluster(t, time.Minute)
	marker := t.TempDir() + "/survived"
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "sleep 2; touch " + marker}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	stream, _ := c.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: ad})
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	time.Sleep(3 * time.Second)
	op, err := c.sched.Get(first.GetName())
	if err != nil {
		t.Fatal(err)
	}
	st, _ := op.Watch()
	if !st.Done() || st.Response.GetStatus().GetCode() != int32(code.Code_CANCELLED) {
		t.Fatalf("abandoned operation: %v", st)
	}
	if fileExists(marker) {
		t.Fatal("the abandoned action's process kept running")
	}
}

func TestIdenticalActionsMerge(t *testing.T) {
	c := startCluster(t, time.Minute)
	marker := t.TempDir() + "/runs"
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "echo run >> " + marker + "; sleep 0.5"}}, nil)
	type res struct {
		name string
		err  error
	}
	out := make(chan res, 2)
	for range 2 {
		go func() {
			ops, _, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
			if err != nil {
				out <- res{err: err}
				return
			}
			out <- res{name: ops[0].GetName()}
		}()
	}
	a, b := <-out, <-out
	if a.err != nil || b.err != nil || a.name != b.name {
		t.Fatalf("not merged: %+v %+v", a, b)
	}
	if data := readFile(t, marker); data != "run\n" {
		t.Fatalf("action ran %q", data)
	}
}

func TestOperationsService(t *testing.T) {
	c := startCluster(t, time.Minute)
	ops := longrunningpb.NewOperationsClient(c.conn)
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "sleep 30"}}, nil)
	stream, err := c.exec.Execute(context.Background(), &repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ops.GetOperation(context.Background(), &longrunningpb.GetOperationRequest{Name: first.GetName()})
	if err != nil || got.GetName() != first.GetName() || got.GetDone() {
		t.Fatalf("GetOperation = %v, %v", got, err)
	}
	start := time.Now()
	if _, err := ops.CancelOperation(context.Background(), &longrunningpb.CancelOperationRequest{Name: first.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, resp, err := drain(t, stream)
	if err != nil || resp.GetStatus().GetCode() != int32(code.Code_CANCELLED) || time.Since(start) > 10*time.Second {
		t.Fatalf("after cancel: %v %v", resp.GetStatus(), err)
	}
	got, err = ops.GetOperation(context.Background(), &longrunningpb.GetOperationRequest{Name: first.GetName()})
	if err != nil || !got.GetDone() || got.GetError() != nil {
		t.Fatalf("GetOperation after cancel = %v, %v", got, err)
	}
	for _, name := range []string{"", "no-such-operation"} {
		want := codes.NotFound
		if name == "" {
			want = codes.InvalidArgument
		}
		if _, err := ops.GetOperation(context.Background(), &longrunningpb.GetOperationRequest{Name: name}); status.Code(err) != want {
			t.Errorf("GetOperation(%q) = %v, want %v", name, err, want)
		}
		if _, err := ops.CancelOperation(context.Background(), &longrunningpb.CancelOperationRequest{Name: name}); status.Code(err) != want {
			t.Errorf("CancelOperation(%q) = %v, want %v", name, err, want)
		}
	}
	if _, _, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad, ExecutionPolicy: &repb.ExecutionPolicy{Priority: 5000}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("out-of-range priority: %v", err)
	}
}

// Output streams are kept in memory while small and spill to a file beyond
// that; both must come back whole.
func TestExecuteLargeAndSmallStreams(t *testing.T) {
	c := startCluster(t, time.Minute)
	ad := c.action(&repb.Command{Arguments: []string{"/bin/sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo small >&2"}}, nil)
	_, resp, err := c.execute(&repb.ExecuteRequest{ActionDigest: ad})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.read(resp.GetResult().GetStdoutDigest()); len(got) != 3000000 || strings.Trim(got, "x") != "" {
		t.Fatalf("stdout: %d bytes", len(got))
	}
	if got := c.read(resp.GetResult().GetStderrDigest()); got != "small\n" {
		t.Fatalf("stderr = %q", got)
	}
}
