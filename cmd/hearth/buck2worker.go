package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-build/hearth/internal/buck2worker"
	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// runBuck2Worker is `hearth buck2-worker [flags] -- <bazel worker argv>`: a
// Buck2 local persistent worker (WorkerInfo.exe) that serves Buck2's gRPC
// protocol on $WORKER_SOCKET with Bazel-protocol workers.
func runBuck2Worker(args []string) error {
	fs := flag.NewFlagSet("buck2-worker", flag.ContinueOnError)
	protocol := fs.String("protocol", "proto", "Bazel worker protocol of the worker: proto or json")
	concurrency := fs.Int("concurrency", runtime.NumCPU(), "commands run at once (set it to WorkerInfo.concurrency)")
	multiplex := fs.Bool("multiplex", false, "the worker is a multiplex worker: all commands share one process")
	cancellable := fs.Bool("cancellable", false, "the worker honours WorkRequest.cancel (else a cancelled command kills its process)")
	volatile := fs.String("volatile-env", strings.Join(buck2worker.DefaultVolatileEnv, ","),
		"comma-separated variables that Buck2 changes per action and that do not select a worker process")
	idle := fs.Duration("idle-timeout", 0, "stop a worker process idle this long (0: keep it until Buck2 stops the bridge)")
	var inputDirs stringList
	fs.Var(&inputDirs, "input-dir", "directory (relative to the working directory, or absolute) whose files are listed with digests in WorkRequest.inputs; repeatable")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: hearth buck2-worker [flags] -- <bazel worker argv>")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return errors.New("no worker command: hearth buck2-worker [flags] -- <bazel worker argv>")
	}
	socket := os.Getenv(buck2worker.SocketEnv)
	if socket == "" {
		return execWorker(argv)
	}
	proto, err := workerproto.ParseProtocol(*protocol)
	if err != nil {
		return fmt.Errorf("--protocol: %w", err)
	}
	var volatileEnv []string
	for _, v := range strings.Split(*volatile, ",") {
		if v = strings.TrimSpace(v); v != "" {
			volatileEnv = append(volatileEnv, v)
		}
	}
	logger := newLogger()
	workDir, err := os.Getwd()
	if err != nil {
		return err
	}
	poolDir, err := buck2worker.NewPoolDir("")
	if err != nil {
		return err
	}
	defer poolDir.Remove()
	bridge, err := buck2worker.New(buck2worker.Config{
		Argv:        argv,
		Protocol:    proto,
		Concurrency: *concurrency,
		Multiplex:   *multiplex,
		Cancellable: *cancellable,
		WorkDir:     workDir,
		Env:         buck2worker.WithoutVar(os.Environ(), buck2worker.SocketEnv),
		VolatileEnv: volatileEnv,
		InputDirs:   inputDirs,
		PoolDir:     poolDir.Path,
		IdleTimeout: *idle,
		Logger:      logger,
	})
	if err != nil {
		return err
	}
	defer bridge.Close()
	lis, err := buck2worker.Listen(socket)
	if err != nil {
		return err
	}
	defer os.Remove(socket)
	srv := buck2worker.NewServer(bridge)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// Buck2 stops its workers when the command ends: let running
		// commands answer briefly, then cut them off.
		t := time.AfterFunc(2*time.Second, srv.Stop)
		defer t.Stop()
		srv.GracefulStop()
	}()
	logger.Info("buck2-worker serving", "socket", socket, "worker", argv, "protocol", proto,
		"concurrency", *concurrency, "multiplex", *multiplex, "work_dir", workDir)
	return srv.Serve(lis)
}

// execWorker replaces the bridge with the Bazel worker itself when Buck2 did
// not start it as a local worker ($WORKER_SOCKET unset): run remotely as
// a Bazel-protocol persistent worker (WorkerInfo with
// supports_bazel_remote_persistent_worker_protocol, its command line
// followed by --persistent_worker), or one-shot. So one WorkerInfo serves
// Buck2's local workers and remote ones. Nothing may be written to stdout
// here: it is the worker protocol's channel.
func execWorker(argv []string) error {
	dir, err := os.Getwd()
	if err != nil {
		return err
	}
	path, err := runner.ResolveExecutable(argv[0], os.Environ(), dir)
	if err != nil {
		return fmt.Errorf("$%s is not set, so running the worker command directly: %w", buck2worker.SocketEnv, err)
	}
	return syscall.Exec(path, argv, os.Environ())
}
