package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/metrics"
)

type serveFlags struct {
	serverFlags
	configPath        string
	fileCacheMaxBytes int64
	maxInflight       int
	maxActionTimeout  time.Duration
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var f serveFlags
	f.register(fs)
	fs.StringVar(&f.configPath, "config", "", "configuration of the embedded executor(s): a worker file (see the README) whose worker_api_endpoint is optional; overrides the three flags below")
	fs.Int64Var(&f.fileCacheMaxBytes, "file-cache-max-bytes", executor.DefaultFileCacheBytes, "bound of the executor's input file cache (hardlinks into the CAS cost no extra space)")
	fs.IntVar(&f.maxInflight, "max-inflight", runtime.NumCPU(), "actions the embedded executor runs at once")
	fs.DurationVar(&f.maxActionTimeout, "max-action-timeout", 20*time.Minute, "longest action timeout accepted, and the timeout of actions that set none")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if f.maxInflight <= 0 {
		return fmt.Errorf("--max-inflight must be positive, got %d", f.maxInflight)
	}
	if f.maxActionTimeout <= 0 {
		return fmt.Errorf("--max-action-timeout must be positive, got %s", f.maxActionTimeout)
	}
	logger := newLogger()
	if file, err := resolveServerFlags(fs, &f.serverFlags); err != nil {
		return err
	} else if file != nil {
		logWarnings(logger, file.Warnings)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, f, logger)
}

// embeddedWorkers returns the executors' configuration: the --config file,
// or one worker built from the flags.
func embeddedWorkers(f serveFlags, logger *slog.Logger) ([]config.LocalWorker, error) {
	if f.configPath != "" {
		data, err := os.ReadFile(f.configPath)
		if err != nil {
			return nil, err
		}
		file, err := config.ParseEmbedded(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.configPath, err)
		}
		logWarnings(logger, file.Warnings)
		var ws []config.LocalWorker
		for _, w := range file.Workers {
			ws = append(ws, w.Local)
		}
		return ws, nil
	}
	host, _ := os.Hostname()
	w := config.NewLocalWorker()
	w.Name = host + "/embedded"
	w.WorkDirectory = filepath.Join(f.data, "work")
	w.MaxInflightTasks = f.maxInflight
	w.MaxActionTimeout = f.maxActionTimeout
	w.DirectoryCache = &config.DirectoryCache{MaxSizeBytes: uint64(f.fileCacheMaxBytes)}
	w.ApplyDefaults(config.DetectMachine())
	return []config.LocalWorker{w}, nil
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return nil
}

func newLogger() *slog.Logger {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(logger)
	return logger
}

// serve runs the server and one embedded executor connected to it through an
// in-process listener: the same worker API stream a remote `hearth worker`
// uses, without a network hop.
func serve(ctx context.Context, f serveFlags, logger *slog.Logger) error {
	workers, err := embeddedWorkers(f, logger)
	if err != nil {
		return err
	}
	// The embedded executors' own credential when auth is on: a random
	// token that never leaves this process.
	f.access.embeddedToken = auth.NewToken()
	srv, err := openServer(f.serverFlags, logger)
	if err != nil {
		return err
	}
	defer srv.close()
	for i := range workers {
		if err := checkRunnerCredentials(fmt.Sprintf("workers[%d].local", i), &workers[i], srv.access.tls != nil || srv.access.policy != nil); err != nil {
			return err
		}
	}

	inproc := bufconn.Listen(1 << 20)
	dialOpts := []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return inproc.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	if srv.access.policy != nil {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(inProcessToken(f.access.embeddedToken)))
	}
	conn, err := grpc.NewClient("passthrough:///embedded", dialOpts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	execCtx, stopExec := context.WithCancel(context.Background())
	var running sync.WaitGroup
	stopExecutors := sync.OnceFunc(func() { stopExec(); running.Wait() })
	defer stopExecutors()
	execMetrics := metrics.NewExecutor(srv.reg)
	for i := range workers {
		results := srv.embeddedActionCache()
		exec, err := executor.FromConfig(ctx, &workers[i], executor.Deps{
			CAS: srv.store, ActionCache: results, FileSource: srv.fileSource,
			RunnerRemote: func() string { return "grpc://" + srv.lis.Addr().String() }, Logger: logger, Metrics: execMetrics,
		})
		if err != nil {
			return fmt.Errorf("embedded executor %s: %w", workers[i].Name, err)
		}
		if err := startLocalCAS(execCtx, fmt.Sprintf("workers[%d].local.localcas_socket", i), &workers[i], exec, srv.store, results, logger); err != nil {
			return err
		}
		running.Add(1)
		go func() { defer running.Done(); exec.Run(execCtx, conn) }()
	}
	return srv.run(ctx, logger, markInProcess(inproc), stopExecutors)
}

// inProcessToken sends the embedded executors' token over the in-process
// connection, which has no transport security to require.
type inProcessToken string

func (t inProcessToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (inProcessToken) RequireTransportSecurity() bool { return false }

// lockDataDir takes an exclusive flock on the data directory, because two
// processes sharing one disk store would corrupt each other's index.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir %s is in use by another hearth process", dir)
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
