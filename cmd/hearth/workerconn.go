package main

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// serverConnLog logs each transport a worker with several servers
// (worker_api_endpoint.uris) opens and loses, naming the server, so that an
// operator sees which replica a worker uses and when it moved. It only
// watches connections; calls pass untouched.
type serverConnLog struct {
	logger *slog.Logger
	worker string
}

type serverAddrKey struct{}

func (l serverConnLog) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	return context.WithValue(ctx, serverAddrKey{}, info.RemoteAddr.String())
}

func (l serverConnLog) HandleConn(ctx context.Context, s stats.ConnStats) {
	addr, _ := ctx.Value(serverAddrKey{}).(string)
	switch s.(type) {
	case *stats.ConnBegin:
		l.logger.Info("connected to server", "worker", l.worker, "server", addr)
	case *stats.ConnEnd:
		l.logger.Warn("connection to server lost; the next calls go to the first server that answers", "worker", l.worker, "server", addr)
	}
}

func (serverConnLog) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (serverConnLog) HandleRPC(context.Context, stats.RPCStats)                       {}

// withServerConnLog adds serverConnLog to a worker's dial options when it
// names several servers.
func withServerConnLog(opts []grpc.DialOption, addrs []string, worker string, logger *slog.Logger) []grpc.DialOption {
	if len(addrs) < 2 {
		return opts
	}
	return append(append([]grpc.DialOption(nil), opts...), grpc.WithStatsHandler(serverConnLog{logger: logger, worker: worker}))
}
