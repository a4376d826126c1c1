package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
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
	perRound := o.execLatency + o.execThroughput
	b.logger.Info("execute: uploading actions", "actions", executeWarmup+o.rounds*perRound)
	actions, err := uploadTrueActions(ctx, repb.NewContentAddressableStorageClient(conn), executeWarmup+o.rounds*perRound)
	if err != nil {
		return nil, err
	}
	client := repb.NewExecutionClient(conn)
	// Each phase runs its own slice of the actions, so none runs twice.
	executeFrom := func(first int) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error { return executeAction(ctx, client, actions[first+i]) }
	}
	forkExec := func(context.Context, int) error { return exec.Command(trueBinary).Run() }
	if _, err := latencies(ctx, executeWarmup, executeFrom(0)); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}

	var (
		p50, p99, rate     comparison
		hearthCPU, baseCPU cpuTimes
		first              = executeWarmup
	)
	for round := range o.rounds {
		b.logger.Info("execute: round", "round", round+1)
		baseLat, err := latencies(ctx, o.execLatency, forkExec)
		if err != nil {
			return nil, err
		}
		stopProfile := b.profile(srv, fmt.Sprintf("execute-latency-%d", round))
		lat, err := latencies(ctx, o.execLatency, executeFrom(first))
		stopProfile()
		if err != nil {
			return nil, err
		}
		first += o.execLatency
		p50.add(percentile(lat, 0.5).Seconds(), percentile(baseLat, 0.5).Seconds())
		p99.add(percentile(lat, 0.99).Seconds(), percentile(baseLat, 0.99).Seconds())

		own0 := ownCPU()
		baseTime, err := runConcurrently(ctx, o.execThroughput, o.execConcurrency, forkExec)
		if err != nil {
			return nil, err
		}
		baseCPU = baseCPU.add(ownCPU().sub(own0))
		cpu0, err := readCPUTimes(srv.PID())
		if err != nil {
			return nil, err
		}
		stopProfile = b.profile(srv, fmt.Sprintf("execute-throughput-%d", round))
		remoteTime, err := runConcurrently(ctx, o.execThroughput, o.execConcurrency, executeFrom(first))
		stopProfile()
		if err != nil {
			return nil, err
		}
		first += o.execThroughput
		cpu1, err := readCPUTimes(srv.PID())
		if err != nil {
			return nil, err
		}
		hearthCPU = hearthCPU.add(cpu1.sub(cpu0))
		rate.add(perSecond(float64(o.execThroughput), remoteTime), perSecond(float64(o.execThroughput), baseTime))
	}
	if err := srv.stop(); err != nil {
		return nil, err
	}

	r := &result{}
	name := "Execute " + trueBinary
	rw := p50.row(name, "p50 latency, 1 client", "fork+exec", secondsFormat)
	rw.Goal, rw.Met = "≤ "+formatDuration(executeGoalP50), metText(median(p50.hearth) <= executeGoalP50.Seconds())
	r.add(rw)
	r.add(p99.row(name, "p99 latency, 1 client", "fork+exec", secondsFormat))
	rw = rate.row(name, fmt.Sprintf("actions/s, %d clients", o.execConcurrency), "fork+exec", countFormat)
	rw.Goal, rw.Met = "≥ "+formatCount(executeGoalRate), metText(median(rate.hearth) >= executeGoalRate)
	r.add(rw)
	n := time.Duration(o.rounds * o.execThroughput)
	r.add(row{Scenario: name, Measure: "CPU per action, throughput phase (process; its children)",
		Hearth:   fmt.Sprintf("%s; %s", formatDuration(hearthCPU.Self/n), formatDuration(hearthCPU.Children/n)),
		Baseline: fmt.Sprintf("fork+exec: %s; %s", formatDuration(baseCPU.Self/n), formatDuration(baseCPU.Children/n)),
		Ratio:    ratio((hearthCPU.Self + hearthCPU.Children).Seconds(), (baseCPU.Self + baseCPU.Children).Seconds())})
	r.note("per round: %d actions one after another for latency, then %d from %d concurrent clients on one connection for throughput; hearth serve --max-inflight=%d, %d warm-up actions first",
		o.execLatency, o.execThroughput, o.execConcurrency, o.execConcurrency, executeWarmup)
	r.note("each action has its own digest (HEARTHBENCH_ACTION=<n> in its Command) and skip_cache_lookup, so nothing is merged or cached; the server still writes every ActionResult to its action cache")
	r.note("latency is from the Execute call to the final Operation (done, exit code 0 checked); the client runs on the same 2 cores; fork+exec is os/exec's Cmd.Run in this process")
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
