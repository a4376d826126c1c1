package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/serverconfig"
)

// openSharedScheduler connects to the Redis of the config file's
// scheduler.redis and checks it answers, so a wrong URL stops the start
// naming the setting. It returns the scheduler config additions and a close
// function; with c nil it returns nothing to add and needs no Redis.
func openSharedScheduler(c *serverconfig.RedisScheduler, logger *slog.Logger) (scheduler.Shared, time.Duration, func(), error) {
	if c == nil {
		return nil, 0, func() {}, nil
	}
	opt, err := redis.ParseURL(c.URL)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("scheduler.redis.url: %w", err)
	}
	rdb := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, 0, nil, fmt.Errorf("scheduler.redis.url: Redis at %s does not answer: %w", opt.Addr, err)
	}
	st := redissched.New(rdb, redissched.Options{Lease: c.Lease})
	// Never the URL: it may hold a password.
	logger.Info("scheduler state in Redis, shared by replicas", "addr", opt.Addr, "db", opt.DB, "lease", st.LeaseDuration())
	return st, c.Poll, func() { rdb.Close() }, nil
}
