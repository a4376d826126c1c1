package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/executor"
)

// runWorker is `hearth worker --config FILE`: executors that connect to a
// `hearth server` (or `hearth serve`) and use its CAS and action cache.
func runWorker(args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	path := fs.String("config", "", "worker configuration (JSON5, NativeLink's local worker shape; see the README)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("--config is required")
	}
	logger := newLogger()
	file, err := config.Load(*path)
	if err != nil {
		return err
	}
	logWarnings(logger, file.Warnings)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var wg sync.WaitGroup
	errs := make([]error, len(file.Workers))
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
		conn, err := casclient.DialWith(ctx, w.WorkerAPIEndpoint.URI, casclient.DialOptions{Timeout: w.WorkerAPIEndpoint.Timeout, TLS: tlsConfig, Token: token})
		if err != nil {
			return fmt.Errorf("workers[%d].local.worker_api_endpoint: %w", i, err)
		}
		defer conn.Close()
		// Directory and Command protos are read again for every action
		// that shares them; keep the small ones in memory rather than ask
		// the server each time.
		store := cas.NewSmallBlobCache(casclient.NewStore(conn, ""), smallBlobMax, smallBlobCacheBytes)
		exec, err := executor.FromConfig(ctx, w, executor.Deps{
			CAS: store, ActionCache: casclient.NewActionCache(conn), FileSource: store,
			RunnerRemote: w.WorkerAPIEndpoint.URI, Logger: logger,
		})
		if err != nil {
			return fmt.Errorf("workers[%d]: %w", i, err)
		}
		logger.Info("hearth worker starting", "name", w.Name, "scheduler", w.WorkerAPIEndpoint.URI, "work_directory", w.WorkDirectory, "max_inflight", w.MaxInflightTasks)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = exec.Run(ctx, conn)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
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
