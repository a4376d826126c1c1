package main

import (
	"context"
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

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/drain"
	"github.com/hearth-build/hearth/internal/grpcbulk"
	"github.com/hearth-build/hearth/internal/metrics"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/redisac"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/serverconfig"
	"github.com/hearth-build/hearth/internal/statuspage"
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
	httpPprof   bool // Go's runtime profiles at /debug/pprof/ on the HTTP port
	data        string
	casMaxBytes int64
	access      accessFlags
	drainGrace  time.Duration
	// botSessionTTL is how long a Remote Workers API bot session outlives
	// its last call (rwapi.go).
	botSessionTTL time.Duration
	// acRedis, from the config file's action_cache.redis, moves the action
	// cache into Redis (shared by replicas).
	acRedis *serverconfig.RedisActionCache
	// stores is the config file's stores block (nil: the CAS is the disk).
	stores *serverconfig.Stores
	// schedRedis, from scheduler.redis, shares the scheduler's operations
	// and queues with other replicas (schedredis.go).
	schedRedis *serverconfig.RedisScheduler
}

func (f *serverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8980", "gRPC address for REAPI clients and executors (Bazel --remote_executor=grpc://ADDR)")
	fs.StringVar(&f.httpAddr, "http", "127.0.0.1:8981", "HTTP address of the status page (/), /status, /metrics and /healthz (empty disables)")
	fs.BoolVar(&f.httpPprof, "http-pprof", false, "also serve Go's runtime profiles at /debug/pprof/ on the HTTP port, behind the same access check as /metrics")
	fs.StringVar(&f.data, "data", "./hearth-data", "directory holding the CAS, the action cache and executor scratch space")
	fs.Int64Var(&f.casMaxBytes, "cas-max-bytes", 0, "evict least recently used CAS blobs beyond this many bytes (0 = unbounded)")
	f.access.register(fs)
	fs.DurationVar(&f.drainGrace, "drain-grace", 10*time.Second, "on SIGTERM, how long running client calls (Execute streams, uploads) may take to finish before the server stops")
	fs.DurationVar(&f.botSessionTTL, "bot-session-ttl", 30*time.Second, "how long a buildbox-worker bot session lives after its last UpdateBotSession; then its lease's action is re-queued")
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
	// fileSource feeds the embedded executors' input file caches: the
	// disk store, or the fast/slow pair in front of it, unwrapped, so that
	// inputs the disk holds are hardlinked from it and the others are read
	// through the slow tier (the disk alone misses what only S3 holds: a
	// blob whose fast copy is still being committed, one the disk evicted,
	// one another replica wrote).
	fileSource cas.Store
	acDisk     *actioncache.Disk
	// acRedis is the Redis action cache when configured (it replaces acDisk
	// for every reader and writer); rdbAC is its client.
	acRedis *redisac.Store
	rdbAC   *redis.Client
	sched   *scheduler.Scheduler
	grpc    *grpc.Server
	lis     net.Listener
	access  *access
	// closeStores releases the CAS's remote stores (stores.go).
	closeStores func()
	// closeShared releases the shared scheduler state's client.
	closeShared func()

	journal     *statuspage.Journal
	calls       *drain.Tracker
	grpcMetrics *grpcprom.ServerMetrics
	grpcOpts    []grpc.ServerOption
}

func openServer(f serverFlags, logger *slog.Logger) (_ *server, err error) {
	if f.casMaxBytes < 0 {
		return nil, fmt.Errorf("--cas-max-bytes must be ≥ 0, got %d", f.casMaxBytes)
	}
	if f.botSessionTTL < 2*time.Second {
		return nil, fmt.Errorf("--bot-session-ttl must be at least 2s (a bot's long poll lasts up to a third of it), got %s", f.botSessionTTL)
	}
	if f.drainGrace <= 0 {
		return nil, fmt.Errorf("--drain-grace must be positive, got %s", f.drainGrace)
	}
	if err := checkAccess(f); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(f.data, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	// undo releases, newest first, what was opened when a later step fails.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	unlock, err := lockDataDir(f.data)
	if err != nil {
		return nil, err
	}
	undo = append(undo, unlock)
	diskMax, err := casDiskMaxBytes(f)
	if err != nil {
		return nil, err
	}
	s := &server{f: f, unlock: unlock, reg: metrics.NewRegistry(), journal: statuspage.NewJournal(100, 30)}
	start := time.Now()
	s.disk, err = cas.NewDisk(filepath.Join(f.data, "cas"), cas.DiskOptions{MaxBytes: diskMax, Logger: logger, SpareFiles: casSpareFiles})
	if err != nil {
		return nil, fmt.Errorf("opening CAS: %w", err)
	}
	undo = append(undo, func() { s.disk.Close() })
	logger.Info("CAS index loaded", "blobs", s.disk.Count(), "bytes", s.disk.SizeBytes(), "took", time.Since(start).Round(time.Millisecond))
	base, closeStores, err := openCASStores(f, s.disk, logger)
	if err != nil {
		return nil, err
	}
	s.closeStores = closeStores
	undo = append(undo, closeStores)
	s.fileSource = base
	s.store = cas.NewMetrics(cas.NewVerifying(cas.NewSmallBlobCache(base, smallBlobMax, smallBlobCacheBytes)), s.reg)
	metrics.RegisterDisk(s.reg, s.disk)
	if f.acRedis != nil {
		// Redis replaces the disk action cache for every reader and
		// writer, so data_dir/ac is neither opened nor created.
		if err := s.openRedisActionCache(f.acRedis); err != nil {
			return nil, err
		}
		undo = append(undo, func() { s.rdbAC.Close() })
		logger.Info("action cache in Redis", "url_host", s.rdbAC.Options().Addr, "db", s.rdbAC.Options().DB, "ttl", f.acRedis.TTL)
	} else if s.acDisk, err = actioncache.NewDisk(filepath.Join(f.data, "ac")); err == nil {
		// The embedded executors write a result on every action's path.
		s.acDisk.KeepSpareFiles(acSpareFiles)
		undo = append(undo, s.acDisk.Close)
	} else {
		return nil, fmt.Errorf("opening action cache: %w", err)
	}
	// Listening now, before anything uses the address: with --listen on
	// port 0 the embedded executor's runner_command needs the real port.
	if s.lis, err = net.Listen("tcp", f.listen); err != nil {
		return nil, fmt.Errorf("listen %s: %w", f.listen, err)
	}
	undo = append(undo, func() { s.lis.Close() })
	schedMetrics := metrics.NewScheduler(s.reg, func() scheduler.Status { return s.sched.Status() })
	shared, err := openSharedScheduler(f.schedRedis, s.lis.Addr(), logger)
	if err != nil {
		return nil, err
	}
	s.closeShared = shared.close
	undo = append(undo, shared.close)
	s.sched = scheduler.New(scheduler.Config{Logger: logger, Observer: scheduler.Observers{schedMetrics, s.journal}, Shared: shared.state, SharedPoll: shared.poll, Replica: shared.replica})
	undo = append(undo, s.sched.Close)
	if shared.state != nil {
		metrics.RegisterShared(s.reg, shared.replica, s.sched.StatusWithShared)
	}
	if s.access, err = openAccess(f, logger, s.operationInstance); err != nil {
		return nil, err
	}
	// Metrics first, so that calls the access check refuses are counted.
	s.calls = drain.NewTracker("/" + workerapi.Scheduler_ServiceDesc.ServiceName + "/")
	s.grpcMetrics, s.grpcOpts = metrics.GRPCServer(s.reg)
	s.grpcOpts = append(s.grpcOpts, s.calls.ServerOptions()...)
	s.grpcOpts = append(s.grpcOpts, s.access.serverOptions()...)
	// ByteStream reads hand their buffers to the transport and the
	// transport's buffers are not zeroed (grpcbulk: the copies and the
	// zeroing were a third of a large read's CPU).
	s.grpcOpts = append(s.grpcOpts, grpcbulk.ServerOptions()...)
	s.grpc = grpc.NewServer(append(s.grpcOpts,
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
		ActionCache:         actioncache.NewMetrics(actioncache.NewCompletenessChecking(s.actionCache(), s.store), s.reg),
		ExecEnabled:         true,
		Scheduler:           s.sched,
		MaxCASBlobSizeBytes: maxCASBlobSize(f),
	})
	workerapi.RegisterSchedulerServer(s.grpc, s.sched)
	s.registerBots(logger)
	s.grpcMetrics.InitializeMetrics(s.grpc)
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

// casSpareFiles is how many upload files the disk CAS keeps created ahead
// of need (cas.DiskOptions.SpareFiles): Bazel uploads an action's new
// inputs, and executors its outputs, a few small blobs at a time.
const casSpareFiles = 16

// acSpareFiles is the same for the disk action cache.
const acSpareFiles = 4

func (s *server) close() {
	s.access.stop()
	s.lis.Close()
	s.sched.Close()
	s.closeShared()
	if s.rdbAC != nil {
		s.rdbAC.Close()
	}
	s.closeStores()
	// After the executors: their outputs were stored relaxed; this syncs
	// them and records the clean stop (internal/cas/relaxed.go).
	if err := s.disk.Close(); err != nil {
		slog.Warn("closing the CAS disk store", "err", err)
	}
	if s.acDisk != nil {
		s.acDisk.Close()
	}
	s.unlock()
}

// openRedisActionCache connects to the configured Redis and checks it answers,
// so a wrong URL fails the start naming the setting rather than every lookup.
func (s *server) openRedisActionCache(c *serverconfig.RedisActionCache) error {
	opt, err := redis.ParseURL(c.URL)
	if err != nil {
		return fmt.Errorf("action_cache.redis.url: %w", err)
	}
	s.rdbAC = redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.rdbAC.Ping(ctx).Err(); err != nil {
		s.rdbAC.Close()
		return fmt.Errorf("action_cache.redis.url: Redis at %s does not answer: %w", opt.Addr, err)
	}
	if s.acRedis, err = redisac.New(s.rdbAC, redisac.Options{TTL: c.TTL}); err != nil {
		s.rdbAC.Close()
		return fmt.Errorf("action_cache.redis: %w", err)
	}
	return nil
}

// actionCache is the store behind the ActionCache service.
func (s *server) actionCache() actioncache.Store {
	if s.acRedis != nil {
		return s.acRedis
	}
	return s.acDisk
}

// embeddedActionCache is what in-process executors write results to: the
// disk store without per-write fsync (see actioncache.Disk.Relaxed), or Redis.
func (s *server) embeddedActionCache() actioncache.Store {
	if s.acRedis != nil {
		return s.acRedis
	}
	return s.acDisk.Relaxed()
}

// run serves until ctx ends, then drains (see drainAndStop). extra is an
// additional listener (the embedded executor's in-process one); stopExecutors
// runs once the clients' calls are done, before the server closes the
// executor sessions.
func (s *server) run(ctx context.Context, logger *slog.Logger, extra net.Listener, stopExecutors func()) error {
	lis := s.lis
	var hs *http.Server
	httpAddr := ""
	if s.f.httpAddr != "" {
		hl, err := net.Listen("tcp", s.f.httpAddr)
		if err != nil {
			lis.Close()
			return fmt.Errorf("listen %s: %w", s.f.httpAddr, err)
		}
		// The access check guards everything but /healthz when a policy
		// is in force (the same principal check as the gRPC APIs).
		hs = &http.Server{Handler: s.access.httpHandler(statuspage.Handler(statuspage.Config{
			Scheduler: s.statusWithShared, Journal: s.journal,
			Metrics:   promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}),
			Profiling: s.f.httpPprof,
		})), ReadHeaderTimeout: 10 * time.Second}
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
	s.drainAndStop(logger, stopExecutors)
	if hs != nil {
		hs.Close()
	}
	return nil
}

// drainAndStop is the graceful stop: no new connections or calls; the
// clients' calls in flight (Execute streams waiting for their actions,
// uploads) get --drain-grace to finish while executors keep working; then the
// embedded executors stop, the executor sessions close (a remote worker
// reconnects elsewhere or waits), and the action cache is synced so every
// acknowledged write is on disk (the CAS fsyncs each commit already).
func (s *server) drainAndStop(logger *slog.Logger, stopExecutors func()) {
	logger.Info("draining", "calls_in_flight", s.calls.InFlight(), "grace", s.f.drainGrace)
	cut := drain.Stop(s.grpc, s.calls, s.f.drainGrace, stopExecutors)
	if cut > 0 {
		logger.Warn("drain grace over; cut off calls still running", "calls", cut)
	}
	if s.acDisk != nil {
		if err := s.acDisk.Sync(); err != nil {
			logger.Warn("syncing the action cache", "err", err)
		}
	}
	logger.Info("shut down")
}
