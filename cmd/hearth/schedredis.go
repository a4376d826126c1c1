package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/serverconfig"
)

// sharedScheduler is what scheduler.redis adds to the scheduler's config.
type sharedScheduler struct {
	state   scheduler.Shared
	poll    time.Duration
	replica string
	close   func()
}

// openSharedScheduler connects to the Redis of the config file's
// scheduler.redis and checks it answers, so a wrong URL stops the start
// naming the setting. listen is the replica's gRPC address, for its default
// name. With c nil it returns nothing to add and needs no Redis.
func openSharedScheduler(c *serverconfig.RedisScheduler, listen net.Addr, logger *slog.Logger) (sharedScheduler, error) {
	if c == nil {
		return sharedScheduler{close: func() {}}, nil
	}
	opt, err := redis.ParseURL(c.URL)
	if err != nil {
		return sharedScheduler{}, fmt.Errorf("scheduler.redis.url: %w", err)
	}
	rdb := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return sharedScheduler{}, fmt.Errorf("scheduler.redis.url: Redis at %s does not answer: %w", opt.Addr, err)
	}
	st := redissched.New(rdb, redissched.Options{Lease: c.Lease})
	replica := c.Replica
	if replica == "" {
		replica = defaultReplicaName(listen)
	}
	// Never the URL: it may hold a password.
	logger.Info("scheduler state in Redis, shared by replicas", "replica", replica, "addr", opt.Addr, "db", opt.DB, "lease", st.LeaseDuration())
	return sharedScheduler{state: st, poll: c.Poll, replica: replica, close: func() { rdb.Close() }}, nil
}

// defaultReplicaName is "host:port": the machine's name and the replica's
// gRPC port, which tells apart replicas on one machine too.
func defaultReplicaName(listen net.Addr) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	port := "0"
	if listen != nil {
		if _, p, err := net.SplitHostPort(listen.String()); err == nil {
			port = p
		}
	}
	return net.JoinHostPort(host, port)
}

// statusWithShared is the status page's scheduler state: with shared state,
// also the shared queues and leases (bounded: the page must not hang on a
// Redis that does not answer).
func (s *server) statusWithShared() scheduler.Status {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.sched.StatusWithShared(ctx)
}
