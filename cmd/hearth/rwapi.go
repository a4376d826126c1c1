package main

import (
	"log/slog"

	"github.com/hearth-build/hearth/internal/rwapi"
	"github.com/hearth-build/hearth/internal/rwapi/rwapipb"
)

// registerBots serves the Remote Workers API (buildbox-worker's
// --bots-remote) on the server's gRPC listener. It is always on: it needs
// the executor right like the worker API, so it opens nothing new to
// anonymous callers when a policy is in force.
func (s *server) registerBots(logger *slog.Logger) {
	rwapipb.RegisterBotsServer(s.grpc, rwapi.New(rwapi.Config{
		Scheduler:   s.sched,
		ActionCache: s.actionCache(),
		SessionTTL:  s.f.botSessionTTL,
		Logger:      logger,
	}))
}
