package executor

import (
	"context"
	"fmt"
	"github.com/hearth-build/hearth/internal/platform"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/metrics"
	"github.com/hearth-build/hearth/internal/sandbox"
	"github.com/hearth-build/hearth/internal/workerapi"
	"github.com/hearth-build/hearth/internal/workerpolicy"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// Deps are the stores an executor built from configuration uses.
type Deps struct {
	CAS         cas.Store
	ActionCache actioncache.Store
	// FileSource feeds the input file cache; the bare *cas.Disk when the
	// CAS is local, so that inputs are hardlinked from it without a copy.
	FileSource cas.Store
	// RunnerRemote gives the CAS address handed to an external runner
	// (runner_command) as --remote, asked once per action: a worker with
	// several servers answers with the one it is connected to now.
	RunnerRemote func() string
	Logger       *slog.Logger
	// HeartbeatInterval overrides the executor's heartbeat period when
	// positive (tests use a short one).
	HeartbeatInterval time.Duration
	// Metrics, if set, counts the executed actions and reads the worker
	// pool's statistics at each scrape.
	Metrics *metrics.Executor
}

// DefaultFileCacheBytes bounds the input file cache when directory_cache
// sets no size.
const DefaultFileCacheBytes = 16 << 30

// sideChannelName is the side channel file inside each action directory.
const sideChannelName = "side_channel.json"

// FromConfig builds an executor from a NativeLink-style local worker
// configuration: it purges the work directory, resolves the platform
// properties (query_cmd), and turns each setting into behaviour.
// fileCacheSpareFiles is how many entry files the input file cache keeps
// created ahead of need (filecache.Options.SpareFiles).
const fileCacheSpareFiles = 16

func FromConfig(ctx context.Context, w *config.LocalWorker, deps Deps) (*Executor, error) {
	logger := deps.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if err := checkCombinations(w); err != nil {
		return nil, err
	}
	staticEnv := w.StaticEnvironment(os.LookupEnv)
	cwd, err := os.Getwd()
	if err != nil {
		return nil, fmt.Errorf("helper commands' working directory: %w", err)
	}
	helpers := newHelperSetup(staticEnv, os.Getenv("PATH"), cwd)
	props, err := resolvePlatformProperties(ctx, w, helpers, QueryCmdTimeout, logger)
	if err != nil {
		return nil, err
	}
	if len(props) == 0 {
		props = DefaultProperties()
	}
	historyPath := filepath.Join(absolute(w.WorkDirectory), "prewarm.json")
	history, err := workerpolicy.ReadHistory(historyPath) // read before the purge
	if err != nil {
		logger.Warn("reading the persistent worker history", "err", err)
	}
	if err := purge(w.WorkDirectory); err != nil {
		return nil, err
	}
	cacheBytes := int64(DefaultFileCacheBytes)
	// Enough for a few actions' new inputs; each spare is an open file.
	if dc := w.DirectoryCache; dc != nil && dc.MaxSizeBytes > 0 {
		cacheBytes = int64(dc.MaxSizeBytes)
	}
	files, err := filecache.New(filepath.Join(w.WorkDirectory, "files"), deps.FileSource, filecache.Options{MaxBytes: cacheBytes, Logger: logger, SpareFiles: fileCacheSpareFiles})
	if err != nil {
		return nil, fmt.Errorf("input file cache: %w", err)
	}
	actions := filepath.Join(w.WorkDirectory, "actions")
	if err := os.MkdirAll(actions, 0o755); err != nil {
		return nil, err
	}
	b := &builder.Builder{
		CAS: deps.CAS, Files: files, WorkDir: actions, WorkerName: w.Name,
		MaxTimeout: w.MaxActionTimeout, MaxUploadTimeout: w.MaxUploadTimeout, Logger: logger,
	}
	if w.Sandbox == config.SandboxBwrap {
		if b.Bwrap, err = sandbox.Find(""); err != nil {
			return nil, err
		}
		if err := sandbox.Probe(ctx, b.Bwrap, actions); err != nil {
			return nil, err
		}
	}
	var run Runner = b
	var workers *workerpolicy.Workers
	if pw := &w.PersistentWorkers; pw.Enabled {
		popts, err := PoolOptions(pw, filepath.Join(absolute(w.WorkDirectory), "workers"))
		if err != nil {
			return nil, err
		}
		popts.Prepare = workerpolicy.PrepareWorkspace(files)
		popts.Logger = logger
		pool, err := workerpool.New(popts)
		if err != nil {
			return nil, fmt.Errorf("persistent workers: %w", err)
		}
		var protocols []workerproto.Protocol
		for _, p := range pw.Protocols {
			if wp, err := workerproto.ParseProtocol(p.String()); err == nil {
				protocols = append(protocols, wp)
			}
		}
		workers = workerpolicy.New(pool, workerpolicy.Options{
			Protocols: protocols, VerifyFraction: pw.VerifyFraction, HistoryPath: historyPath, Logger: logger,
		})
		b.Workers = workers
		if deps.Metrics != nil {
			deps.Metrics.AddPool(pool.Stats)
		}
		if n, err := workers.Prewarm(ctx, history, deps.FileSource, pw.Prewarm); err != nil {
			logger.Warn("prewarming persistent workers", "err", err)
		} else if n > 0 {
			logger.Info("prewarming persistent workers", "keys", n, "per_key", pw.Prewarm)
		}
	}
	if len(w.RunnerCommand) > 0 {
		external := &ExternalRunner{Command: w.RunnerCommand, Remote: deps.RunnerRemote, WorkDir: actions, WorkerName: w.Name, MaxTimeout: w.MaxActionTimeout, Logger: logger}
		run = external
		if workers != nil {
			// Warm workers serve the actions that opt in; the runner the rest.
			b.OneShot = external
			run = b
		}
	}
	opts := Options{
		Name:              w.Name,
		Properties:        props,
		MinimumProperties: MinimumProperties,
		MaxInflight:       w.MaxInflightTasks,
		MaxActionTimeout:  w.MaxActionTimeout,
		Runner:            run,
		ActionCache:       deps.ActionCache,
		UploadResult:      w.UploadActionResult.UploadACResultsStrategy.Uploads,
		Message: func(resp *repb.ExecuteResponse, action digest.Digest) string {
			tmpl := w.UploadActionResult.SuccessMessageTemplate
			if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
				tmpl = w.UploadActionResult.FailureMessageTemplate
			}
			return tmpl.Expand(config.TemplateValues{DigestFunction: digest.Lower(action.Function), ActionDigestHash: action.Hash, ActionDigestSize: action.Size})
		},
		Hooks: func(a *workerapi.Assign) (builder.Hooks, error) {
			return hooksFor(w, staticEnv, a), nil
		},
		HeartbeatInterval: deps.HeartbeatInterval,
		Logger:            logger,
		Files:             files,
	}
	if deps.Metrics != nil {
		opts.Finished = deps.Metrics.ActionFinished
	}
	if workers != nil {
		opts.WarmWorkers = workers.WarmWorkers
		opts.Status = func() any { return workers.Status() }
		opts.Close = func() {
			if err := workers.Close(); err != nil {
				logger.Warn("stopping persistent workers", "err", err)
			}
		}
	}
	if len(w.PreconditionScript) > 0 {
		gate := newPrecondition(helpers.helper(w.PreconditionScript, PreconditionTimeout, maxPreconditionOutput), preconditionWait, logger)
		opts.Accepting = gate.Accepting
	}
	return New(opts)
}

// hooksFor applies entrypoint, timeout_handled_externally and
// additional_environment to one action, and to the persistent worker that
// may serve it (checkCombinations rejects the sources a worker cannot get).
func hooksFor(w *config.LocalWorker, staticEnv map[string]string, a *workerapi.Assign) builder.Hooks {
	h := builder.Hooks{Entrypoint: w.Entrypoint, TimeoutHandledExternally: w.TimeoutHandledExternally}
	// The Command's platform counts too: Bazel 4 (REAPI before v2.2) sets
	// only that one.
	props := map[string]string{}
	for _, p := range platform.Properties(a.GetAction(), a.GetCommand()) {
		props[p.GetName()] = p.GetValue()
	}
	for _, src := range w.AdditionalEnvironment {
		if src.Kind == config.EnvSideChannelFile {
			h.SideChannelFile = sideChannelName
		}
	}
	if len(w.AdditionalEnvironment) == 0 {
		return h
	}
	if w.PersistentWorkers.Enabled {
		h.WorkerEnvironment = func(timeout time.Duration) ([]string, error) {
			return additionalEnv(w, staticEnv, props, "", timeout), nil
		}
	}
	h.Environment = func(actionDir string, timeout time.Duration) ([]string, error) {
		return additionalEnv(w, staticEnv, props, actionDir, timeout), nil
	}
	return h
}

// additionalEnv resolves additional_environment for one action ("NAME=value",
// sorted by name, so that a worker's pool key does not depend on map order).
func additionalEnv(w *config.LocalWorker, staticEnv, platform map[string]string, actionDir string, timeout time.Duration) []string {
	env := make([]string, 0, len(w.AdditionalEnvironment))
	for name, src := range w.AdditionalEnvironment {
		var v string
		switch src.Kind {
		case config.EnvValue, config.EnvFromEnvironment:
			v = staticEnv[name]
		case config.EnvProperty:
			v = platform[src.Property]
		case config.EnvTimeoutMillis:
			v = strconv.FormatInt(timeout.Milliseconds(), 10)
		case config.EnvSideChannelFile:
			v = filepath.Join(actionDir, sideChannelName)
		case config.EnvActionDirectory:
			v = actionDir
		}
		env = append(env, name+"="+v)
	}
	sort.Strings(env)
	return env
}

// purge empties dir, creating it if needed: leftovers of actions interrupted
// by a crash must not leak into new ones.
func absolute(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

func purge(dir string) error {
	if err := fsutil.RemoveAll(dir); err != nil {
		return fmt.Errorf("purging work directory %s: %w", dir, err)
	}
	return os.MkdirAll(dir, 0o755)
}
