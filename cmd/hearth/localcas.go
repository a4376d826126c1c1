package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/localcas"
)

// startLocalCAS serves buildbox's LocalCAS protocol for exec on
// w.LocalCASSocket, if set, until ctx ends. Staging directories go under the
// work directory, beside the file cache, so that staging is hardlinks.
func startLocalCAS(ctx context.Context, field string, w *config.LocalWorker, exec *executor.Executor, store cas.Store, ac actioncache.Store, logger *slog.Logger) error {
	if w.LocalCASSocket == "" {
		return nil
	}
	s, err := localcas.New(localcas.Options{
		CAS: store, ActionCache: ac, Files: exec.FileCache(),
		StageDir: filepath.Join(w.WorkDirectory, "localcas"),
	})
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	l, err := localcas.Listen(w.LocalCASSocket)
	if err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	logger.Info("serving LocalCAS", "socket", w.LocalCASSocket, "worker", w.Name)
	go func() {
		if err := localcas.Serve(ctx, l, s); err != nil {
			logger.Error("LocalCAS server stopped", "socket", w.LocalCASSocket, "err", err)
		}
	}()
	return nil
}
