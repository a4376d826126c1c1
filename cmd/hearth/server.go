package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/workerapi"
)

// gRPC transport sizes shared by the server and its clients (casclient uses
// the same values).
const (
	transportBufferSize = casclient.TransportBufferSize
	// The read buffer stays allocated for as long as a connection lives
	// (write buffers are shared between flushes), and Bazel opens many
	// connections: a quarter of the client's size keeps 100 connections
	// within 25 MiB.
	serverReadBufferSize = 256 << 10
	streamWindowSize     = casclient.StreamWindowSize
	connWindowSize       = casclient.ConnWindowSize
)

// The in-memory cache of small blobs (Directory, Command and Action protos
// mostly) in front of the CAS.
const (
	smallBlobMax        = 64 << 10
	smallBlobCacheBytes = 64 << 20
)

type serverFlags struct {
	listen      string
	httpAddr    string
	data        string
	casMaxBytes int64
	access      accessFlags
}

func (f *serverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8980", "gRPC address for REAPI clients and executors (Bazel --remote_executor=grpc://ADDR)")
	fs.StringVar(&f.httpAddr, "http", "127.0.0.1:8981", "HTTP address for /healthz and /metrics (empty disables)")
	fs.StringVar(&f.data, "data", "./hearth-data", "directory holding the CAS, the action cache and executor scratch space")
	fs.Int64Var(&f.casMaxBytes, "cas-max-bytes", 0, "evict least recently used CAS blobs beyond this many bytes (0 = unbounded)")
	f.access.register(fs)
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	var f serverFlags
	f.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger := newLogger()
	if file, err := resolveServerFlags(fs, &f); err != nil {
		return err
	} else if file != nil {
		logWarnings(logger, file.Warnings)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := openServer(f, logger)
	if err != nil {
		return err
	}
	defer srv.close()
	return srv.run(ctx, logger, nil, nil)
}

// server is the storage, scheduling and REAPI half of Hearth.
type server struct {
	f      serverFlags
	unlock func()
	reg    *prometheus.Registry
	disk   *cas.Disk
	store  cas.Store
	acDisk *actioncache.Disk
	sched  *scheduler.Scheduler
	grpc   *grpc.Server
	lis    net.Listener
	access *access
}

func openServer(f serverFlags, logger *slog.Logger) (*server, error) {
	if f.casMaxBytes < 0 {
		return nil, fmt.Errorf("--cas-max-bytes must be ≥ 0, got %d", f.casMaxBytes)
	}
	if err := checkAccess(f); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(f.data, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(f.data)
	if err != nil {
		return nil, err
	}
	s := &server{f: f, unlock: unlock, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	start := time.Now()
	s.disk, err = cas.NewDisk(filepath.Join(f.data, "cas"), cas.DiskOptions{MaxBytes: f.casMaxBytes, Logger: logger})
	if err != nil {
		unlock()
		return nil, fmt.Errorf("opening CAS: %w", err)
	}
	logger.Info("CAS index loaded", "blobs", s.disk.Count(), "bytes", s.disk.SizeBytes(), "took", time.Since(start).Round(time.Millisecond))
	s.store = cas.NewMetrics(cas.NewVerifying(cas.NewSmallBlobCache(s.disk, smallBlobMax, smallBlobCacheBytes)), s.reg)
	s.acDisk, err = actioncache.NewDisk(filepath.Join(f.data, "ac"))
	if err != nil {
		unlock()
		return nil, fmt.Errorf("opening action cache: %w", err)
	}
	// Listening now, before anything uses the address: with --listen on
	// port 0 the embedded executor's runner_command needs the real port.
	if s.lis, err = net.Listen("tcp", f.listen); err != nil {
		unlock()
		return nil, fmt.Errorf("listen %s: %w", f.listen, err)
	}
	s.sched = scheduler.New(scheduler.Config{Logger: logger})
	if s.access, err = openAccess(f, logger, s.operationInstance); err != nil {
		s.lis.Close()
		s.sched.Close()
		unlock()
		return nil, err
	}
	s.grpc = grpc.NewServer(append(s.access.serverOptions(),
		grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize),
		// Large transport buffers and flow-control windows: ByteStream moves
		// 1 MiB messages, and gRPC's 32 KiB buffers cost a system call (and
		// on loopback a wake-up of the peer) per 32 KiB.
		grpc.ReadBufferSize(serverReadBufferSize), grpc.WriteBufferSize(transportBufferSize),
		grpc.InitialWindowSize(streamWindowSize), grpc.InitialConnWindowSize(connWindowSize),
		// Executors and long Execute streams stay idle for minutes; pings
		// keep NATs and load balancers from dropping them silently.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)...)
	reapi.Register(s.grpc, reapi.Config{
		CAS:                 s.store,
		ActionCache:         actioncache.NewCompletenessChecking(s.acDisk, s.store),
		ExecEnabled:         true,
		Scheduler:           s.sched,
		MaxCASBlobSizeBytes: f.casMaxBytes,
	})
	workerapi.RegisterSchedulerServer(s.grpc, s.sched)
	return s, nil
}

// operationInstance tells the access policy which instance an operation
// runs on.
func (s *server) operationInstance(name string) (string, bool) {
	op, err := s.sched.Get(name)
	if err != nil {
		return "", false
	}
	st, _ := op.Watch()
	return st.Instance, true
}

func (s *server) close() {
	s.access.stop()
	s.lis.Close()
	s.sched.Close()
	s.unlock()
}

// run serves until ctx ends, then stops gracefully: in-flight RPCs get a grace
// period, and a write stream cut off after it is discarded by its Writer, so
// nothing half-written is ever visible. extra is an additional listener (the
// embedded executor's in-process one); beforeStop runs before the graceful
// stop, so that the embedded executor's own stream does not hold it up.
func (s *server) run(ctx context.Context, logger *slog.Logger, extra net.Listener, beforeStop func()) error {
	lis := s.lis
	var hs *http.Server
	httpAddr := ""
	if s.f.httpAddr != "" {
		hl, err := net.Listen("tcp", s.f.httpAddr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen %s: %w", s.f.httpAddr, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			enc.Encode(s.sched.Status())
		})
		hs = &http.Server{Handler: s.access.httpHandler(mux), ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(hl)
		httpAddr = hl.Addr().String()
	}
	errc := make(chan error, 2)
	if extra != nil {
		go func() { errc <- s.grpc.Serve(extra) }()
	}
	go func() { errc <- s.grpc.Serve(lis) }()
	logger.Info("hearth serving", "grpc", lis.Addr().String(), "http", httpAddr, "data", s.f.data,
		"tls", s.access.tls != nil, "mtls", s.access.tls != nil && s.access.tls.MutualTLS(), "auth", s.access.policy != nil)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	if beforeStop != nil {
		beforeStop()
	}
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.grpc.Stop()
	}
	if hs != nil {
		hs.Close()
	}
	return nil
}
