package main

import (
	"context"
	"log/slog"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// serverConnLog logs each transport a worker with several servers
// (worker_api_endpoint.uris) opens and loses, naming the server, so that an
// operator sees which replica a worker uses and when it moved. It only
// watches connections; calls pass untouched.
type serverConnLog struct {
	logger  *slog.Logger
	worker  string
	current *currentServer
}

// currentServer is the address of the server a worker with several
// servers reached last: the one its calls go to (one connection at a time,
// pick_first). A runner (runner_command) started now is given it, so
// runners follow the worker from one replica to the next.
type currentServer struct {
	addr     atomic.Pointer[string]
	fallback string // before any connection: the first configured uri
}

// runnerRemote is the --remote of a runner started now.
func (c *currentServer) runnerRemote() string {
	if a := c.addr.Load(); a != nil {
		return "grpc://" + *a
	}
	return c.fallback
}

type serverAddrKey struct{}

func (l serverConnLog) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, serverAddrKey{}, info.RemoteAddr.String())
}

func (l serverConnLog) HandleConn(ctx context.Context, s stats.ConnStats) {
	addr, _ := ctx.Value(serverAddrKey{}).(string)
	switch s.(type) {
	case *stats.ConnBegin:
		l.current.addr.Store(&addr)
		l.logger.Info("connected to server", "worker", l.worker, "server", addr)
	case *stats.ConnEnd:
		l.logger.Warn("connection to server lost; the next calls go to the first server that answers", "worker", l.worker, "server", addr)
	}
}

func (serverConnLog) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (serverConnLog) HandleRPC(context.Context, stats.RPCStats)                       {}

// withServerConnLog adds serverConnLog to a worker's dial options when it
// names several servers, and returns what a runner's --remote is then.
func withServerConnLog(opts []grpc.DialOption, addrs []string, worker string, logger *slog.Logger) ([]grpc.DialOption, func() string) {
	if len(addrs) < 2 {
		var only string
		if len(addrs) == 1 {
			only = addrs[0]
		}
		return opts, func() string { return only }
	}
	current := &currentServer{fallback: addrs[0]}
	return append(append([]grpc.DialOption(nil), opts...), grpc.WithStatsHandler(serverConnLog{logger: logger, worker: worker, current: current})), current.runnerRemote
}
