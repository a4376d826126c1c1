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
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/filecache"
)

type serveFlags struct {
	serverFlags
	fileCacheMaxBytes int64
	maxInflight       int
	maxActionTimeout  time.Duration
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var f serveFlags
	f.register(fs)
	fs.Int64Var(&f.fileCacheMaxBytes, "file-cache-max-bytes", 16<<30, "bound of the executor's input file cache (hardlinks into the CAS cost no extra space)")
	fs.IntVar(&f.maxInflight, "max-inflight", runtime.NumCPU(), "actions the embedded executor runs at once")
	fs.DurationVar(&f.maxActionTimeout, "max-action-timeout", 20*time.Minute, "longest action timeout accepted, and the timeout of actions that set none")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if f.maxInflight <= 0 {
		return fmt.Errorf("--max-inflight must be positive, got %d", f.maxInflight)
	}
	logger := newLogger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, f, logger)
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
	srv, err := openServer(f.serverFlags, logger)
	if err != nil {
		return err
	}
	defer srv.close()

	workDir := filepath.Join(f.data, "work")
	if err := purgeDir(workDir); err != nil {
		return err
	}
	files, err := filecache.New(filepath.Join(f.data, "filecache"), srv.disk, filecache.Options{MaxBytes: f.fileCacheMaxBytes, Logger: logger})
	if err != nil {
		return fmt.Errorf("file cache: %w", err)
	}
	host, _ := os.Hostname()
	name := host + "/embedded"
	exec, err := executor.New(executor.Options{
		Name:              name,
		Properties:        executor.DefaultProperties(),
		MinimumProperties: executor.MinimumProperties,
		MaxInflight:       f.maxInflight,
		MaxActionTimeout:  f.maxActionTimeout,
		Runner: &builder.Builder{
			CAS: srv.store, Files: files, WorkDir: workDir, WorkerName: name,
			MaxTimeout: f.maxActionTimeout, Logger: logger,
		},
		ActionCache: srv.acDisk,
		Logger:      logger,
	})
	if err != nil {
		return err
	}
	inproc := bufconn.Listen(1 << 20)
	conn, err := grpc.NewClient("passthrough:///embedded",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return inproc.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	execCtx, stopExec := context.WithCancel(context.Background())
	execDone := make(chan struct{})
	go func() { exec.Run(execCtx, conn); close(execDone) }()
	stopExecutor := func() { stopExec(); <-execDone }
	defer stopExecutor()

	return srv.run(ctx, logger, inproc, stopExecutor)
}

// purgeDir empties dir (creating it), because leftovers of actions
// interrupted by a crash must not leak into new ones.
func purgeDir(dir string) error {
	if err := makeWritable(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("purging %s: %w", dir, err)
	}
	return os.MkdirAll(dir, 0o755)
}

func makeWritable(dir string) error {
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return err
	})
}

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
