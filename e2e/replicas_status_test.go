package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// replicaStatus is the part of a replica's /status this test reads.
type replicaStatus struct {
	Replica   string `json:"replica"`
	Executors []struct {
		Name string `json:"name"`
	} `json:"executors"`
	Shared *struct {
		Queued int `json:"queued"`
		Leased int `json:"leased"`
		Queues []struct {
			Platform string `json:"platform"`
			Queued   int    `json:"queued"`
		} `json:"queues"`
		Error string `json:"error"`
	} `json:"shared"`
}

func getReplicaStatus(t *testing.T, httpAddr string) replicaStatus {
	t.Helper()
	resp, err := http.Get("http://" + httpAddr + "/status")
	if err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	var s replicaStatus
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decoding /status: %v", err)
	}
	return s
}

// firstDone reads an Execute or WaitExecution stream to its done operation.
func firstDone(stream interface {
	Recv() (*longrunningpb.Operation, error)
}) (*longrunningpb.Operation, *repb.ExecuteResponse, error) {
	for {
		op, err := stream.Recv()
		if err != nil {
			return nil, nil, err
		}
		if !op.GetDone() {
			continue
		}
		resp := &repb.ExecuteResponse{}
		if err := op.GetResponse().UnmarshalTo(resp); err != nil {
			return op, nil, err
		}
		return op, resp, nil
	}
}

// TestReplicasCacheHitsAndStatus: an operation answered from the action
// cache at replica A is found by WaitExecution at replica B; each replica's
// /status and /metrics say which replica it is, list its own executors and
// show the shared queue (an action no executor can take, queued at A, is
// counted at B). Then A is stopped gracefully (SIGTERM): its worker moves to
// B, the next replica it lists, and runs B's actions.
func TestReplicasCacheHitsAndStatus(t *testing.T) {
	a, b, w1, _, _, _ := startReplicas(t)
	ca, cb := dial(t, a.GRPCAddr), dial(t, b.GRPCAddr)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	act := actionSpec{args: []string{"/bin/sh", "-c", "echo cached > out"}, outputPaths: []string{"out"}}.build(t)
	ca.upload(t, act)
	if resp, err := ca.execute(ctx, act.action.digest); err != nil || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("first Execute at A: %v %v", resp, err)
	}
	stream, err := ca.exec.Execute(ctx, &repb.ExecuteRequest{ActionDigest: act.action.digest, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		t.Fatal(err)
	}
	hit, resp, err := firstDone(stream)
	if err != nil || !resp.GetCachedResult() {
		t.Fatalf("second Execute at A: %v cached=%v, want a cache hit", err, resp.GetCachedResult())
	}
	wait, err := cb.exec.WaitExecution(ctx, &repb.WaitExecutionRequest{Name: hit.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	atB, respB, err := firstDone(wait)
	if err != nil {
		t.Fatalf("WaitExecution at B of A's cache hit %s: %v", hit.GetName(), err)
	}
	if atB.GetName() != hit.GetName() || !respB.GetCachedResult() || respB.GetResult().GetOutputFiles()[0].GetDigest().GetHash() != resp.GetResult().GetOutputFiles()[0].GetDigest().GetHash() {
		t.Errorf("at B: %s %v, want A's cached result of %s", atB.GetName(), respB, hit.GetName())
	}

	// An action for a platform no executor has waits in the shared queue
	// (with shared state a replica cannot tell it unschedulable).
	nowhere := actionSpec{args: []string{"/bin/true"}, editAction: func(a *repb.Action) {
		a.Platform = &repb.Platform{Properties: []*repb.Platform_Property{{Name: "OSFamily", Value: "nowhere"}}}
	}}.build(t)
	ca.upload(t, nowhere)
	qctx, qcancel := context.WithCancel(ctx)
	defer qcancel()
	queued, err := ca.exec.Execute(qctx, &repb.ExecuteRequest{ActionDigest: nowhere.action.digest, SkipCacheLookup: true, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := queued.Recv(); err != nil { // the first message: submitted
		t.Fatal(err)
	}

	host, _ := os.Hostname()
	for _, r := range []struct {
		p      *hearthProcess
		worker string // the worker whose first address it is
	}{{a, "w1"}, {b, "w2"}} {
		_, port, _ := net.SplitHostPort(r.p.GRPCAddr)
		wantName := net.JoinHostPort(host, port)
		st := getReplicaStatus(t, r.p.HTTPAddr)
		if st.Replica != wantName {
			t.Errorf("%s: /status replica %q, want %q", r.p.GRPCAddr, st.Replica, wantName)
		}
		if len(st.Executors) != 1 || st.Executors[0].Name != r.worker {
			t.Errorf("%s: own executors %+v, want only %s", wantName, st.Executors, r.worker)
		}
		if st.Shared == nil || st.Shared.Error != "" || st.Shared.Queued != 1 || len(st.Shared.Queues) != 1 || st.Shared.Queues[0].Platform != "OSFamily=nowhere" {
			t.Errorf("%s: /status shared %+v, want the one action queued for OSFamily=nowhere", wantName, st.Shared)
		}
		m := scrape(t, r.p.HTTPAddr)
		if v, ok := metricSum(m, "hearth_scheduler_replica_info", "replica="+wantName); !ok || v != 1 {
			t.Errorf("%s: hearth_scheduler_replica_info{replica=%q} = %v (%v)", wantName, wantName, v, ok)
		}
		if v, ok := metricSum(m, "hearth_scheduler_shared_queue_depth", "platform=OSFamily=nowhere"); !ok || v != 1 {
			t.Errorf("%s: hearth_scheduler_shared_queue_depth{platform=OSFamily=nowhere} = %v (%v), want 1", wantName, v, ok)
		}
		if v, ok := metricSum(m, "hearth_scheduler_shared_up"); !ok || v != 1 {
			t.Errorf("%s: hearth_scheduler_shared_up = %v (%v)", wantName, v, ok)
		}
		if _, ok := metricSum(m, "hearth_scheduler_shared_leases"); !ok {
			t.Errorf("%s: no hearth_scheduler_shared_leases", wantName)
		}
		page, err := http.Get("http://" + r.p.HTTPAddr + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(page.Body)
		page.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), `<b id="replica">`+wantName+`</b>`) || !strings.Contains(string(body), `<b id="shared-queued">1</b>`) {
			t.Errorf("%s: the status page does not show the replica and the shared queue", wantName)
		}
	}

	// A drains and exits; w1's session there ends and w1 reconnects to B.
	qcancel() // A waits for its clients' calls before it ends the sessions
	a.stop(syscall.SIGTERM)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if _, err := b.log.waitFor(wctx, w1.done, `msg="executor connected" executor=w1 `); err != nil {
		t.Fatalf("w1 did not move to B after A's SIGTERM: %v\nw1:\n%s", err, w1.log.tail(20))
	}
	// Both workers at B now: B runs enough actions at once for both.
	var wg sync.WaitGroup
	ran := make(chan string, 6)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			act := actionSpec{args: []string{"/bin/sh", "-c", fmt.Sprintf("sleep 1; echo %d > out", i)}, outputPaths: []string{"out"}}.build(t)
			cb.upload(t, act)
			resp, err := cb.execute(ctx, act.action.digest)
			if err != nil || resp.GetResult().GetExitCode() != 0 {
				t.Errorf("Execute at B after A stopped: %v %v", resp, err)
				return
			}
			ran <- resp.GetResult().GetExecutionMetadata().GetWorker()
		}()
	}
	wg.Wait()
	close(ran)
	workers := map[string]int{}
	for w := range ran {
		workers[w]++
	}
	if workers["w1"] == 0 {
		t.Errorf("w1 ran none of B's actions after moving there: %v", workers)
	}
	t.Logf("after A's SIGTERM, B's actions ran on %v", workers)
}
