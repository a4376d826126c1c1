package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/rpcretry"
)

// registerBuildbox adds the flags of buildbox's runner command line that
// buildbox-worker 1.4.30 passes to its --buildbox-run (observed: the
// connection flags of --remote and of the Remote Asset service, the
// partial metadata file, --log-level, --log-directory and, once at start,
// --validate-parameters), plus --verbose.
func (f *runFlags) registerBuildbox(fs *flag.FlagSet) {
	f.cas.register(fs, "", "CAS (--remote)")
	f.ra.register(fs, "ra-", "Remote Asset service")
	fs.BoolVar(&f.validateParameters, "validate-parameters", false, "check the flags and exit, 0 if they are all valid, without reading the action or running anything (buildbox-worker asks this once at start)")
	fs.StringVar(&f.partialMetadataFile, "partial-execution-metadata-file", "", "write the ExecutedActionMetadata stage timestamps to this file when the run ends, also when it fails")
	fs.StringVar(&f.logLevel, "log-level", "info", "log verbosity: trace, debug, info, warning or error (any case)")
	fs.BoolVar(&f.verbose, "verbose", false, "log at debug level, as --log-level=debug")
	fs.StringVar(&f.logDirectory, "log-directory", "", "write the log to hearth-run.HOST.USER.log.TIME.PID in this existing directory instead of to stderr")
}

// runSetup is what the flags of one run resolve to.
type runSetup struct {
	fn     digest.Function
	level  slog.Level
	logger *slog.Logger
	dial   casclient.DialOptions
	// retry is the --retry-* policy of the CAS calls, which casclient
	// applies itself (resuming ByteStream reads and writes); the dial
	// options' interceptors retry the connection's other calls.
	retry rpcretry.Policy
}

// check resolves and checks every flag without touching the action or the
// network: a flag hearth run cannot honour is an error naming it.
func (f *runFlags) check() (runSetup, error) {
	var s runSetup
	fn, ok := digest.FunctionFromLower(strings.ToLower(f.digestFunction))
	if !ok {
		return s, fmt.Errorf("--digest-function=%s: hearth run supports sha256 and blake3 (in any case)", f.digestFunction)
	}
	s.fn = fn
	if f.remote == "" {
		return s, errors.New("--remote is required")
	}
	level, err := slogLevel(f.logLevel)
	if err != nil {
		return s, err
	}
	if f.verbose {
		level = slog.LevelDebug
	}
	s.level = level
	if f.logDirectory != "" {
		if st, err := os.Stat(f.logDirectory); err != nil || !st.IsDir() {
			return s, fmt.Errorf("--log-directory=%s: not an existing directory", f.logDirectory)
		}
	}
	s.logger = newLevelLogger(os.Stderr, level)
	if s.dial, err = f.dialOptions(s.logger); err != nil {
		return s, err
	}
	cs, err := f.cas.settings() // checked by dialOptions already
	if err != nil {
		return s, err
	}
	s.retry = cs.policy
	s.retry.Logger = s.logger
	return s, nil
}

// slogLevel maps buildbox's log levels onto slog's; trace is below debug.
func slogLevel(v string) (slog.Level, error) {
	switch strings.ToLower(v) {
	case "trace":
		return slog.LevelDebug - 4, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level=%s: want trace, debug, info, warning or error", v)
}

func newLevelLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// openLog makes s.logger the default logger, writing to a new file in dir
// when dir is set (--log-directory), and returns what closes it.
func (s *runSetup) openLog(dir string) (func(), error) {
	closeLog := func() {}
	if dir != "" {
		name := "unknown"
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
		path := filepath.Join(dir, fmt.Sprintf("hearth-run.%s.%s.log.%s.%d", hostname(), name, time.Now().UTC().Format("20060102-150405"), os.Getpid()))
		file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--log-directory: %w", err)
		}
		// The connection's logger was made before: point it at the file
		// too, by replacing the handler both share.
		*s.logger = *newLevelLogger(file, s.level)
		closeLog = func() { file.Close() }
	}
	slog.SetDefault(s.logger)
	return closeLog, nil
}

// partialMetadata is the part of result's ExecutedActionMetadata a buildbox
// runner writes to --partial-execution-metadata-file: its stage timestamps
// (the worker's own, and the worker name, are the worker's to fill in).
func partialMetadata(result *repb.ActionResult) *repb.ExecutedActionMetadata {
	md := result.GetExecutionMetadata()
	return &repb.ExecutedActionMetadata{
		InputFetchStartTimestamp:       md.GetInputFetchStartTimestamp(),
		InputFetchCompletedTimestamp:   md.GetInputFetchCompletedTimestamp(),
		ExecutionStartTimestamp:        md.GetExecutionStartTimestamp(),
		ExecutionCompletedTimestamp:    md.GetExecutionCompletedTimestamp(),
		OutputUploadStartTimestamp:     md.GetOutputUploadStartTimestamp(),
		OutputUploadCompletedTimestamp: md.GetOutputUploadCompletedTimestamp(),
	}
}
