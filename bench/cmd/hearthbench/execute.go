package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
)

// Scenario execute: trivial actions (/bin/true, no inputs, no outputs)
// through `hearth serve` from a Go REAPI client, against fork+exec of
// /bin/true with os/exec in this process. One client at a time gives the
// latency; N clients (and --max-inflight=N) give the throughput.
//
// Every action is distinct: its Command sets HEARTHBENCH_ACTION=<n>, so each
// has its own Action digest and the server can neither merge two in flight
// nor answer one from the cache (skip_cache_lookup is set too). The
// alternative, do_not_cache, would avoid merging with a single digest but
// also skip the action-cache write that every real cacheable action pays.

const (
	executeGoalP50  = 3 * time.Millisecond
	executeGoalRate = 1000 // actions/s
	executeWarmup   = 20
	trueBinary      = "/bin/true"
)

func runExecute(ctx context.Context, b *bench) (*result, error) {
	o := b.opts
	dir, err := b.scratch("execute")
	if err != nil {
		return nil, err
	}
	// The baseline first, while the server is not running.
	b.logger.Info("execute: fork+exec baseline")
	baseLat, err := latencies(ctx, o.execLatency, func(context.Context, int) error { return exec.Command(trueBinary).Run() })
	if err != nil {
		return nil, err
	}
	var ru0, ru0c syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru0c)
	baseTime, err := runConcurrently(ctx, o.execThroughput, o.execConcurrency, func(context.Context, int) error { return exec.Command(trueBinary).Run() })
	if err != nil {
		return nil, err
	}
	var ru1, ru1c syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru1c)
	baseCPU := cpuTimes{Self: rusageCPU(ru1) - rusageCPU(ru0), Children: rusageCPU(ru1c) - rusageCPU(ru0c)}

	srv, err := b.startHearth(ctx, filepath.Join(dir, "data"), filepath.Join(dir, "hearth.log"),
		"--max-inflight", strconv.Itoa(o.execConcurrency))
	if err != nil {
		return nil, err
	}
	defer srv.kill()
	conn, err := srv.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	total := executeWarmup + o.execLatency + o.execThroughput
	b.logger.Info("execute: uploading actions", "actions", total)
	actions, err := uploadTrueActions(ctx, repb.NewContentAddressableStorageClient(conn), total)
	if err != nil {
		return nil, err
	}
	client := repb.NewExecutionClient(conn)
	// Each phase runs its own slice of the actions, so none runs twice.
	executeFrom := func(first int) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error { return executeAction(ctx, client, actions[first+i]) }
	}

	b.logger.Info("execute: hearth serve")
	if _, err := latencies(ctx, executeWarmup, executeFrom(0)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	lat, err := latencies(ctx, o.execLatency, executeFrom(executeWarmup))
	if err != nil {
		return nil, err
	}
	cpu0, err := readCPUTimes(srv.PID())
	if err != nil {
		return nil, err
	}
	remoteTime, err := runConcurrently(ctx, o.execThroughput, o.execConcurrency, executeFrom(executeWarmup+o.execLatency))
	if err != nil {
		return nil, err
	}
	cpu1, err := readCPUTimes(srv.PID())
	if err != nil {
		return nil, err
	}
	if err := srv.stop(); err != nil {
		return nil, err
	}

	r := &result{}
	name := "Execute " + trueBinary
	for _, q := range []struct {
		name string
		q    float64
		goal time.Duration
	}{{"p50", 0.5, executeGoalP50}, {"p99", 0.99, 0}} {
		v, base := percentile(lat, q.q), percentile(baseLat, q.q)
		rw := row{Scenario: name, Measure: q.name + " latency, 1 client", Hearth: formatDuration(v),
			Baseline: "fork+exec: " + formatDuration(base), Ratio: ratio(v.Seconds(), base.Seconds())}
		if q.goal > 0 {
			rw.Goal, rw.Met = "≤ "+formatDuration(q.goal), metText(v <= q.goal)
		}
		r.add(rw)
	}
	v := perSecond(float64(o.execThroughput), remoteTime)
	base := perSecond(float64(o.execThroughput), baseTime)
	r.add(row{Scenario: name, Measure: fmt.Sprintf("actions/s, %d clients", o.execConcurrency), Hearth: formatCount(v),
		Baseline: "fork+exec: " + formatCount(base), Ratio: ratio(v, base),
		Goal: "≥ " + formatCount(executeGoalRate), Met: metText(v >= executeGoalRate)})
	used := cpu1.sub(cpu0)
	per := func(d time.Duration) time.Duration { return d / time.Duration(o.execThroughput) }
	r.add(row{Scenario: name, Measure: "CPU per action (server; children)",
		Hearth:   fmt.Sprintf("%s; %s", formatDuration(per(used.Self)), formatDuration(per(used.Children))),
		Baseline: fmt.Sprintf("fork+exec (parent; child): %s; %s", formatDuration(per(baseCPU.Self)), formatDuration(per(baseCPU.Children))),
		Ratio:    ratio((used.Self + used.Children).Seconds(), (baseCPU.Self + baseCPU.Children).Seconds())})
	r.note("latency: %d actions one after another (after %d warm-up actions); throughput: %d actions from %d concurrent clients on one connection, hearth serve --max-inflight=%d",
		o.execLatency, executeWarmup, o.execThroughput, o.execConcurrency, o.execConcurrency)
	r.note("each action has its own digest (HEARTHBENCH_ACTION=<n> in its Command) and skip_cache_lookup, so nothing is merged or cached; the server still writes every ActionResult to its action cache")
	r.note("latency is from the Execute call to the final Operation (done, exit code 0 checked); the client runs on the same 2 cores")
	return r, nil
}

// uploadTrueActions stores n distinct /bin/true actions and returns their
// digests.
func uploadTrueActions(ctx context.Context, casClient repb.ContentAddressableStorageClient, n int) ([]*repb.Digest, error) {
	var blobs []blob
	actions := make([]*repb.Digest, n)
	marshal := proto.MarshalOptions{Deterministic: true}
	for i := range actions {
		cmd := &repb.Command{
			Arguments:            []string{trueBinary},
			EnvironmentVariables: []*repb.Command_EnvironmentVariable{{Name: "HEARTHBENCH_ACTION", Value: strconv.Itoa(i)}},
		}
		cmdBytes, err := marshal.Marshal(cmd)
		if err != nil {
			return nil, err
		}
		cmdDigest := digest.Compute(digest.SHA256, cmdBytes)
		// The empty Directory message serializes to no bytes: the input
		// root is the empty blob, which is always present.
		action := &repb.Action{CommandDigest: cmdDigest.Proto(), InputRootDigest: digest.Empty(digest.SHA256).Proto()}
		actionBytes, err := marshal.Marshal(action)
		if err != nil {
			return nil, err
		}
		actionDigest := digest.Compute(digest.SHA256, actionBytes)
		blobs = append(blobs, blob{cmdDigest, cmdBytes}, blob{actionDigest, actionBytes})
		actions[i] = actionDigest.Proto()
	}
	for _, req := range packBatches(blobs, 2<<20) {
		resp, err := casClient.BatchUpdateBlobs(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("uploading actions: %w", err)
		}
		for _, r := range resp.GetResponses() {
			if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
				return nil, fmt.Errorf("uploading actions: %s: %s", c, r.GetStatus().GetMessage())
			}
		}
	}
	return actions, nil
}

// executeAction runs one action to completion and checks that /bin/true
// succeeded.
func executeAction(ctx context.Context, client repb.ExecutionClient, action *repb.Digest) error {
	stream, err := client.Execute(ctx, &repb.ExecuteRequest{ActionDigest: action, SkipCacheLookup: true, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		return err
	}
	for {
		op, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("execute %s: %w", action.GetHash(), err)
		}
		if !op.GetDone() {
			continue
		}
		if e := op.GetError(); e != nil {
			return fmt.Errorf("execute %s: operation error %s", action.GetHash(), e.GetMessage())
		}
		resp := &repb.ExecuteResponse{}
		if err := op.GetResponse().UnmarshalTo(resp); err != nil {
			return fmt.Errorf("execute %s: response: %w", action.GetHash(), err)
		}
		if c := codes.Code(resp.GetStatus().GetCode()); c != codes.OK {
			return fmt.Errorf("execute %s: %s %s", action.GetHash(), c, resp.GetStatus().GetMessage())
		}
		if code := resp.GetResult().GetExitCode(); code != 0 {
			return fmt.Errorf("execute %s: %s exited with %d", action.GetHash(), trueBinary, code)
		}
		return nil
	}
}

// latencies runs f(0..n-1) one after another and returns the sorted times.
func latencies(ctx context.Context, n int, f func(ctx context.Context, i int) error) ([]time.Duration, error) {
	ds := make([]time.Duration, n)
	for i := range ds {
		start := time.Now()
		if err := f(ctx, i); err != nil {
			return nil, err
		}
		ds[i] = time.Since(start)
	}
	slices.Sort(ds)
	return ds, nil
}

// runConcurrently runs f(0..n-1) on `workers` goroutines and returns the
// total time.
func runConcurrently(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) (time.Duration, error) {
	var next atomic.Int64
	start := time.Now()
	err := parallel(ctx, workers, func(ctx context.Context, _ int) error {
		for ctx.Err() == nil {
			i := int(next.Add(1) - 1)
			if i >= n {
				return nil
			}
			if err := f(ctx, i); err != nil {
				return err
			}
		}
		return ctx.Err()
	})
	return time.Since(start), err
}

func rusageCPU(ru syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
