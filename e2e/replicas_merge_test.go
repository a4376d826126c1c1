package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// TestReplicasMergeInFlightActions: the same action submitted to two
// replicas while it runs is executed once (REAPI lets identical in-flight
// executions merge, skip_cache_lookup or not): the client at B joins the
// operation A queued, and both get the one result; a third client waits on
// A's running operation by name at B (WaitExecution) and gets it too.
func TestReplicasMergeInFlightActions(t *testing.T) {
	a, b, _ := startReplicaPair(t)
	startWorkerOn(t, []*hearthProcess{a, b}, "wm", 2)

	// Each run of the action appends a line to runs, outside its
	// directory, so that the test can count the executions.
	runs := filepath.Join(t.TempDir(), "runs")
	act := actionSpec{
		args:        []string{"/bin/sh", "-c", fmt.Sprintf("echo run >> %s; sleep 2; cat in.txt > out.txt", runs)},
		files:       map[string]string{"in.txt": "merged\n"},
		outputPaths: []string{"out.txt"},
	}.build(t)
	ca, cb := dial(t, a.GRPCAddr), dial(t, b.GRPCAddr)
	ca.upload(t, act)

	type outcomeOf struct {
		resp *repb.ExecuteResponse
		err  error
	}
	stream, err := ca.exec.Execute(t.Context(), &repb.ExecuteRequest{ActionDigest: act.action.digest, SkipCacheLookup: true, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv() // the operation's name comes first
	if err != nil {
		t.Fatal(err)
	}
	atA := make(chan outcomeOf, 1)
	go func() {
		if first.GetDone() {
			resp := &repb.ExecuteResponse{}
			atA <- outcomeOf{resp, first.GetResponse().UnmarshalTo(resp)}
			return
		}
		_, resp, err := firstDone(stream)
		atA <- outcomeOf{resp, err}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if data, _ := os.ReadFile(runs); len(data) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the action did not start in 30 s\nA:\n%s", a.log.tail(30))
		}
	}
	waited := make(chan outcomeOf, 1)
	go func() {
		wait, err := cb.exec.WaitExecution(t.Context(), &repb.WaitExecutionRequest{Name: first.GetName()})
		if err != nil {
			waited <- outcomeOf{nil, err}
			return
		}
		_, resp, err := firstDone(wait)
		waited <- outcomeOf{resp, err}
	}()
	respB, errB := cb.execute(t.Context(), act.action.digest)
	oA, oWait := <-atA, <-waited
	for name, o := range map[string]outcomeOf{"A": oA, "B": {respB, errB}, "WaitExecution at B": oWait} {
		if st := outcome(o.resp, o.err); st.Code() != codes.OK || o.resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("Execute at %s: %v (exit code %d)", name, st, o.resp.GetResult().GetExitCode())
		}
	}
	if data, _ := os.ReadFile(runs); strings.Count(string(data), "run\n") != 1 {
		t.Errorf("the action ran %d times for the two submissions, want once (merged)", strings.Count(string(data), "run\n"))
	}
	for name, resp := range map[string]*repb.ExecuteResponse{"B": respB, "WaitExecution at B": oWait.resp} {
		if !proto.Equal(oA.resp.GetResult(), resp.GetResult()) {
			t.Errorf("%s got another result than A:\nA: %v\n%s: %v", name, oA.resp.GetResult(), name, resp.GetResult())
		}
	}
}
