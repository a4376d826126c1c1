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

	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/s3test"
)

// TestReplicasMergeInFlightActions: the same action submitted to two
// replicas while it runs is executed once (REAPI lets identical in-flight
// executions merge, skip_cache_lookup or not): the client at B joins the
// operation A queued, and both get the one result.
func TestReplicasMergeInFlightActions(t *testing.T) {
	s3 := s3test.Start(t)
	rds := redistest.Start(t)
	cfg, env := writeStoresConfig(t, s3, rds.URL(0),
		fmt.Sprintf(`action_cache: {redis: {url: %q}}`, rds.URL(0)),
		fmt.Sprintf(`scheduler: {redis: {url: %q, lease: "3s", poll: "200ms"}}`, rds.URL(0)))
	a := startServer(t, "server", t.TempDir(), env, "--config-server", cfg)
	b := startServer(t, "server", t.TempDir(), env, "--config-server", cfg)
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
	atA := make(chan outcomeOf, 1)
	go func() {
		resp, err := ca.execute(t.Context(), act.action.digest)
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
	respB, errB := cb.execute(t.Context(), act.action.digest)
	oA := <-atA
	for name, o := range map[string]outcomeOf{"A": oA, "B": {respB, errB}} {
		if st := outcome(o.resp, o.err); st.Code() != codes.OK || o.resp.GetResult().GetExitCode() != 0 {
			t.Fatalf("Execute at %s: %v (exit code %d)", name, st, o.resp.GetResult().GetExitCode())
		}
	}
	if data, _ := os.ReadFile(runs); strings.Count(string(data), "run\n") != 1 {
		t.Errorf("the action ran %d times for the two submissions, want once (merged)", strings.Count(string(data), "run\n"))
	}
	if !proto.Equal(oA.resp.GetResult(), respB.GetResult()) {
		t.Errorf("the two clients got different results:\nA: %v\nB: %v", oA.resp.GetResult(), respB.GetResult())
	}
}
