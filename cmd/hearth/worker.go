package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/localcas"
	"github.com/hearth-build/hearth/internal/metrics"
	"github.com/hearth-build/hearth/internal/statuspage"
)

// runWorker is `hearth worker --config FILE`: executors that connect to a
// `hearth server` (or `hearth serve`) and use its CAS and action cache.
//
// SIGTERM (or SIGINT) drains: the executors take no new actions, finish the
// running ones for up to --drain-grace, end their sessions (the scheduler
// re-queues what they had not started), stop their persistent workers and
// exit. A second signal, or the end of the grace, cancels what still runs.
func runWorker(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	path := fs.String("config", "", "worker configuration (JSON5, NativeLink's local worker shape; see the README)")
	httpAddr := fs.String("http", "", "HTTP address of this worker's status page (/), /status, /metrics and /healthz, e.g. 127.0.0.1:8982 (empty disables)")
	httpPprof := fs.Bool("http-pprof", false, "also serve Go's runtime profiles at /debug/pprof/ on --http")
	insecure := fs.Bool("insecure", false, "allow --http on a non-loopback address (the worker's HTTP port has no authentication)")
	grace := fs.Duration("drain-grace", 10*time.Minute, "on SIGTERM, how long running actions may take to finish before they are cancelled (and re-queued by the scheduler)")
	localCASSocket := fs.String("localcas-socket", "", "serve buildbox's LocalCAS protocol on this Unix socket, for buildbox runners (overrides the config's localcas_socket; the config must then have one worker)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("--config is required")
	}
	if *httpPprof && *httpAddr == "" {
		return errors.New("--http-pprof needs --http (the profiles are served on the worker's HTTP port)")
	}
	if n := len(*localCASSocket); n > localcas.MaxSocketPath {
		return fmt.Errorf("--localcas-socket %q is %d bytes, longer than the %d a Unix socket path allows", *localCASSocket, n, localcas.MaxSocketPath)
	}
	if *grace <= 0 {
		return fmt.Errorf("--drain-grace must be positive, got %s", *grace)
	}
	if *httpAddr != "" && !*insecure && !isLoopbackAddr(*httpAddr) {
		return fmt.Errorf("refusing --http %s, which is not a loopback address: the worker's HTTP port has no authentication, so anyone who can reach it could read its metrics and pool keys; bind it to 127.0.0.1, or pass --insecure on a network you trust", *httpAddr)
	}
	logger := newLogger()
	file, err := config.Load(*path)
	if err != nil {
		return err
	}
	logWarnings(logger, file.Warnings)
	if *localCASSocket != "" {
		if len(file.Workers) != 1 {
			return fmt.Errorf("--localcas-socket: the config has %d workers; set localcas_socket in each instead", len(file.Workers))
		}
		file.Workers[0].Local.LocalCASSocket = *localCASSocket
	}
	// ctx is the hard stop; the first signal only drains.
	ctx, hardStop := context.WithCancel(context.Background())
	defer hardStop()
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)

	reg := metrics.NewRegistry()
	execMetrics := metrics.NewExecutor(reg)
	clientMetrics := metrics.GRPCClient(reg)
	var wg sync.WaitGroup
	errs := make([]error, len(file.Workers))
	var execs []*executor.Executor
	var statusFuncs []func() any
	for i := range file.Workers {
		w := &file.Workers[i].Local
		tlsConfig, err := clientTLS(w.WorkerAPIEndpoint.TLS)
		if err != nil {
			return fmt.Errorf("workers[%d].local.worker_api_endpoint.tls_config: %w", i, err)
		}
		var token string
		if tf := w.WorkerAPIEndpoint.TokenFile; tf != "" {
			if token, err = auth.ReadTokenFile(tf); err != nil {
				return fmt.Errorf("workers[%d].local.worker_api_endpoint.token_file: %w", i, err)
			}
		}
		if err := checkRunnerCredentials(fmt.Sprintf("workers[%d].local", i), w, token != "" || tlsConfig != nil); err != nil {
			return err
		}
		addrs := w.WorkerAPIEndpoint.Addresses()
		// With several servers (replicas sharing state) the connection
		// uses the first that answers and moves on to the next when it
		// fails; the executor's session reconnects over it with backoff.
		// A runner (runner_command) is given the server the connection
		// uses when the runner starts.
		dialExtra, runnerRemote := withServerConnLog(clientMetrics, addrs, w.Name, logger)
		conn, err := casclient.DialAny(ctx, addrs, casclient.DialOptions{Timeout: w.WorkerAPIEndpoint.Timeout, TLS: tlsConfig, Token: token,
			Extra: dialExtra})
		if err != nil {
			return fmt.Errorf("workers[%d].local.worker_api_endpoint: %w", i, err)
		}
		defer conn.Close()
		// Directory and Command protos are read again for every action
		// that shares them; keep the small ones in memory rather than ask
		// the server each time.
		// CAS and action cache calls cut by a server's death are retried
		// (a stream resumed) and so land on the next server.
		retry := casclient.DefaultRetry
		retry.Logger = logger.With("worker", w.Name)
		store := cas.NewSmallBlobCache(cas.NewMetrics(casclient.NewStore(conn, "", casclient.WithRetry(retry)), reg), smallBlobMax, smallBlobCacheBytes)
		results := actioncache.NewMetrics(casclient.NewActionCache(conn, casclient.WithRetry(retry)), reg)
		exec, err := executor.FromConfig(ctx, w, executor.Deps{
			CAS: store, ActionCache: results, FileSource: store,
			RunnerRemote: runnerRemote, Logger: logger, Metrics: execMetrics,
		})
		if err != nil {
			return fmt.Errorf("workers[%d]: %w", i, err)
		}
		if err := startLocalCAS(ctx, fmt.Sprintf("workers[%d].local.localcas_socket", i), w, exec, store, results, logger); err != nil {
			return err
		}
		execs = append(execs, exec)
		statusFuncs = append(statusFuncs, exec.Status)
		logger.Info("hearth worker starting", "name", w.Name, "scheduler", strings.Join(addrs, ","), "work_directory", w.WorkDirectory, "max_inflight", w.MaxInflightTasks)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = exec.Run(ctx, conn)
		}()
	}
	if *httpAddr != "" {
		stopHTTP, err := serveWorkerHTTP(*httpAddr, *httpPprof, reg, statusFuncs, workerNames(file), logger)
		if err != nil {
			hardStop()
			wg.Wait()
			return err
		}
		defer stopHTTP()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return errors.Join(errs...)
	case sig := <-signals:
		logger.Info("draining", "signal", sig.String(), "grace", *grace)
	}
	for _, e := range execs {
		e.Drain()
	}
	timer := time.NewTimer(*grace)
	defer timer.Stop()
	select {
	case <-done:
		logger.Info("drained")
	case <-timer.C:
		logger.Warn("drain grace over; cancelling the actions still running")
	case sig := <-signals:
		logger.Warn("second signal; cancelling the actions still running", "signal", sig.String())
	}
	hardStop()
	<-done
	return errors.Join(errs...)
}

// serveWorkerHTTP serves the worker's own HTTP port: its metrics and the
// persistent worker pools of its executors.
func serveWorkerHTTP(addr string, pprof bool, reg *prometheus.Registry, status []func() any, names string, logger *slog.Logger) (func(), error) {
	hl, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	hs := &http.Server{Handler: statuspage.Handler(statuspage.Config{
		Title: "Hearth worker " + names,
		Local: func() []json.RawMessage {
			var out []json.RawMessage
			for _, f := range status {
				if data, err := json.Marshal(f()); err == nil {
					out = append(out, data)
				}
			}
			return out
		},
		Metrics:   promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Profiling: pprof,
	}), ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(hl)
	logger.Info("hearth worker http", "http", hl.Addr().String())
	return func() { hs.Close() }, nil
}

func workerNames(f *config.File) string {
	var names []string
	for _, w := range f.Workers {
		names = append(names, w.Local.Name)
	}
	return strings.Join(names, ", ")
}

func logWarnings(logger *slog.Logger, warnings []string) {
	for _, w := range warnings {
		logger.Warn("config: " + w)
	}
}

// clientTLS builds the TLS settings of tls_config (nil: system roots).
func clientTLS(c *config.ClientTLS) (*tls.Config, error) {
	if c == nil {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if !c.UseNativeRoots && c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
