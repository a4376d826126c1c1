package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/runner"
)

// QueryCmdTimeout bounds one query_cmd run. NativeLink waits forever; a
// worker that hangs at start on a stuck probe is worse than one that fails
// with a message naming the probe.
const QueryCmdTimeout = 30 * time.Second

// maxQueryOutput bounds what a query_cmd may print: property values are
// short, and a runaway command must not fill the worker's memory.
const maxQueryOutput = 1 << 20

// ErrQueryCmd is wrapped by the errors of a failed query_cmd.
var ErrQueryCmd = errors.New("platform property query_cmd failed")

// helperSetup is what the executor's helper commands (query_cmd, the
// precondition script) run with: as in NativeLink, only the static
// additional_environment entries (value and from_environment) as their
// environment, the executor's PATH to find them, and the executor's own
// working directory.
type helperSetup struct {
	env        []string
	searchPath string
	dir        string
}

func newHelperSetup(staticEnv map[string]string, searchPath, dir string) helperSetup {
	env := make([]string, 0, len(staticEnv))
	for name, v := range staticEnv {
		env = append(env, name+"="+v)
	}
	sort.Strings(env)
	return helperSetup{env: env, searchPath: searchPath, dir: dir}
}

func (s helperSetup) helper(argv []string, timeout time.Duration, maxOutput int) runner.Helper {
	return runner.Helper{Args: argv, Env: s.env, SearchPath: s.searchPath, Dir: s.dir, Timeout: timeout, MaxOutput: maxOutput}
}

// resolvePlatformProperties returns the values of every platform property
// of w, running the query_cmd ones concurrently. As in NativeLink, a
// query_cmd runs without a shell (write "sh -c '...'" for one), with stdin
// empty and the helper environment; each output line, trimmed, is a value.
// Unlike NativeLink, blank lines are skipped, a property with no values is
// left out of the result (so the worker does not advertise it), and each
// command must finish within timeout.
func resolvePlatformProperties(ctx context.Context, w *config.LocalWorker, hs helperSetup, timeout time.Duration, logger *slog.Logger) (map[string][]string, error) {
	names := make([]string, 0, len(w.PlatformProperties))
	for name := range w.PlatformProperties {
		names = append(names, name)
	}
	sort.Strings(names)
	values := make([][]string, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		p := w.PlatformProperties[name]
		if len(p.QueryCmd) == 0 {
			values[i] = slices.Clone(p.Values)
			continue
		}
		wg.Go(func() {
			values[i], errs[i] = runQueryCmd(ctx, config.FieldPath("platform_properties", name), hs.helper(p.QueryCmd, timeout, maxQueryOutput), logger)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make(map[string][]string, len(names))
	for i, name := range names {
		if len(values[i]) > 0 {
			out[name] = values[i]
		}
	}
	return out, nil
}

func runQueryCmd(ctx context.Context, field string, h runner.Helper, logger *slog.Logger) ([]string, error) {
	out, err := runner.RunHelper(ctx, h)
	what := fmt.Sprintf("%s: query_cmd %q", field, strings.Join(h.Args, " "))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s: %w: %w", what, ErrQueryCmd, err)
	case out.StdoutTruncated:
		return nil, fmt.Errorf("%s: %w: printed more than %d bytes", what, ErrQueryCmd, h.MaxOutput)
	}
	if s := strings.TrimSpace(string(out.Stderr)); s != "" {
		logger.WarnContext(ctx, "query_cmd wrote to stderr", "property", field, "cmd", h.Args, "stderr", s)
	}
	var values []string
	for _, line := range strings.Split(string(out.Stdout), "\n") {
		if v := strings.TrimSpace(line); v != "" {
			values = append(values, v)
		}
	}
	return values, nil
}
