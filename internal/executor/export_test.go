package executor

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/hearth-build/hearth/internal/config"
)

// ResolvePlatformProperties lets the external tests run the query_cmds of w
// as FromConfig does, in dir, with a timeout of their choice.
func ResolvePlatformProperties(ctx context.Context, w *config.LocalWorker, dir string, timeout time.Duration) (map[string][]string, error) {
	return resolvePlatformProperties(ctx, w, newHelperSetup(w.StaticEnvironment(os.LookupEnv), os.Getenv("PATH"), dir), timeout, slog.Default())
}
