package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/casclient"
)

// Scenario redissched: what shared scheduler state in Redis (scheduler.redis)
// costs one Execute. Each round starts two `hearth serve` processes on empty
// data directories, one with the in-memory scheduler and one whose
// operations and queues are in a loopback redis-server (AOF, fsync on every
// write, as a deployment that must not lose acknowledged operations runs
// it), and measures both back to back with the same client: Execute latency
// of /bin/true actions one at a time.

// Goal from the issue: shared state at most doubles the Execute p50.
const redisSchedGoalP50 = 2.0

func runRedisSched(ctx context.Context, b *bench) (*result, error) {
	dir, err := b.scratch("redissched")
	if err != nil {
		return nil, err
	}
	url, stopRedis, err := startRedisServer(ctx, filepath.Join(dir, "redis"))
	if err != nil {
		return nil, err
	}
	defer stopRedis()
	cfgPath := filepath.Join(dir, "server.json5")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`{scheduler: {redis: {url: %q}}}`, url)), 0o644); err != nil {
		return nil, err
	}
	var p50, p99, cpu comparison
	for round := range b.opts.rounds {
		b.logger.Info("redissched: round", "round", round+1)
		rdir := filepath.Join(dir, fmt.Sprintf("round%d", round))
		var mem, shared schedSample
		for i := range 2 {
			var err error
			if (i+round)%2 == 0 {
				mem, err = schedRound(ctx, b, filepath.Join(rdir, "memory"))
			} else {
				shared, err = schedRound(ctx, b, filepath.Join(rdir, "redis"), "--config-server", cfgPath)
			}
			if err != nil {
				return nil, err
			}
		}
		p50.add(shared.p50.Seconds(), mem.p50.Seconds())
		p99.add(shared.p99.Seconds(), mem.p99.Seconds())
		cpu.add(shared.cpu.Seconds(), mem.cpu.Seconds())
		if err := os.RemoveAll(rdir); err != nil {
			return nil, err
		}
	}
	r := &result{}
	name := "Redis scheduler state vs in-memory"
	rw := p50.row(name, "Execute /bin/true p50 latency, 1 client", "in-memory", secondsFormat)
	rw.Goal, rw.Met = fmt.Sprintf("≤ %.1f×", redisSchedGoalP50), metText(p50.ratio() <= redisSchedGoalP50)
	r.add(rw)
	r.add(p99.row(name, "Execute /bin/true p99 latency, 1 client", "in-memory", secondsFormat))
	r.add(cpu.row(name, "CPU per Execute (server + client, not redis-server)", "in-memory", secondsFormat))
	r.note("per round: hearth serve with the in-memory scheduler and one with scheduler.redis on one loopback redis-server (appendonly yes, appendfsync always), each on an empty data directory, in alternating order; %d actions one after another (each with its own digest, skip_cache_lookup)", b.opts.execLatency)
	return r, nil
}

type schedSample struct {
	p50, p99, cpu time.Duration
}

func schedRound(ctx context.Context, b *bench, dir string, extraArgs ...string) (schedSample, error) {
	var s schedSample
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return s, err
	}
	srv, err := b.startHearthWith(ctx, filepath.Join(dir, "data"), filepath.Join(dir, "hearth.log"), "grpc", casclient.DialOptions{}, extraArgs...)
	if err != nil {
		return s, err
	}
	defer srv.kill()
	conn, err := srv.dial(ctx)
	if err != nil {
		return s, err
	}
	defer conn.Close()
	n := b.opts.execLatency
	actions, err := uploadTrueActions(ctx, repb.NewContentAddressableStorageClient(conn), executeWarmup+n)
	if err != nil {
		return s, err
	}
	client := repb.NewExecutionClient(conn)
	run := func(first int) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error { return executeAction(ctx, client, actions[first+i]) }
	}
	if _, err := latencies(ctx, executeWarmup, run(0)); err != nil {
		return s, err
	}
	cpu := measureCPU(srv.PID())
	lat, err := latencies(ctx, n, run(executeWarmup))
	if err != nil {
		return s, err
	}
	s.p50, s.p99 = percentile(lat, 0.5), percentile(lat, 0.99)
	srvCPU, cliCPU := cpu()
	s.cpu = (srvCPU + cliCPU) / time.Duration(n)
	return s, srv.stop()
}

// startRedisServer runs redis-server on a free loopback port with its data
// in dir, and returns its URL and a function that stops it.
func startRedisServer(ctx context.Context, dir string) (string, func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.CommandContext(ctx, "redis-server", "--bind", "127.0.0.1", "--port", fmt.Sprint(port), "--dir", dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no")
	log, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		return "", nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return "", nil, fmt.Errorf("starting redis-server (scripts/install-test-deps.sh installs it): %w", err)
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait(); log.Close() }
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return "redis://" + addr + "/0", stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("redis-server did not listen on %s within 10s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
