package executor_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/config"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/sandbox"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/workerapi"
	"github.com/hearth-build/hearth/internal/workerpolicy"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

// cluster is a server (REAPI + scheduler) and one executor, wired as
// `hearth serve` wires them, over an in-memory gRPC listener.
type cluster struct {
	t       *testing.T
	conn    *grpc.ClientConn
	store   cas.Store
	sched   *scheduler.Scheduler
	exec    repb.ExecutionClient
	builder *builder.Builder
	// executor and runDone (closed when its Run returns), for drain tests.
	executor *executor.Executor
	runDone  <-chan struct{}
}

func startCluster(t *testing.T, maxTimeout time.Duration) *cluster {
	t.Helper()
	return startClusterWith(t, clusterOptions{maxTimeout: maxTimeout})
}

type clusterOptions struct {
	maxTimeout time.Duration
	// workers enables persistent workers with this configuration.
	workers *config.PersistentWorkers
	// history is the prewarm history file (read at start when prewarm > 0).
	history string
	// bwrap runs one-shot actions under bubblewrap.
	bwrap bool
}

func startClusterWith(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	return startClusterWithCAS(t, o)
}

// server is the server side of a cluster: the CAS, the action cache, the
// scheduler and REAPI, served over an in-memory listener.
type server struct {
	conn  *grpc.ClientConn
	disk  *cas.Disk
	store cas.Store
	ac    *actioncache.Disk
	sched *scheduler.Scheduler
	lis   *bufconn.Listener
	// kill stops the server as a SIGKILL would: the scheduler's background
	// work, then every stream.
	kill func()
}

// startServer starts a server whose CAS holds blobs, storing under dir.
func startServer(t *testing.T, dir string, schedCfg scheduler.Config, blobs ...[]byte) *server {
	t.Helper()
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{})
	if err != nil {
		t.Fatal(err)
	}
	store := cas.NewVerifying(disk)
	for _, b := range blobs {
		if err := cas.Put(context.Background(), store, digest.Compute(digest.SHA256, b), b); err != nil {
			t.Fatal(err)
		}
	}
	ac, err := actioncache.NewDisk(filepath.Join(dir, "ac"))
	if err != nil {
		t.Fatal(err)
	}
	sched := scheduler.New(schedCfg)
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize))
	reapi.Register(gs, reapi.Config{CAS: store, ActionCache: actioncache.NewCompletenessChecking(ac, store), ExecEnabled: true, Scheduler: sched})
	workerapi.RegisterSchedulerServer(gs, sched)
	go gs.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); gs.Stop(); sched.Close() })
	return &server{conn: conn, disk: disk, store: store, ac: ac, sched: sched, lis: lis, kill: func() { sched.Close(); gs.Stop() }}
}

// startClusterWithCAS starts a cluster whose CAS already holds blobs.
func startClusterWithCAS(t *testing.T, o clusterOptions, blobs ...[]byte) *cluster {
	t.Helper()
	maxTimeout := o.maxTimeout
	dir := t.TempDir()
	srv := startServer(t, dir, scheduler.Config{OrphanGrace: 200 * time.Millisecond}, blobs...)
	disk, store, ac := srv.disk, srv.store, srv.ac
	files, err := filecache.New(filepath.Join(dir, "files"), disk, filecache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := &builder.Builder{CAS: store, Files: files, WorkDir: filepath.Join(dir, "work"), WorkerName: "test-executor", MaxTimeout: maxTimeout}
	if o.bwrap {
		bin, err := sandbox.Find("")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(b.WorkDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := sandbox.Probe(context.Background(), bin, b.WorkDir); err != nil {
			t.Fatal(err)
		}
		b.Bwrap = bin
	}
	opts := executor.Options{
		Name: "test-executor", Properties: executor.DefaultProperties(), MinimumProperties: executor.MinimumProperties,
		MaxInflight: 4, MaxActionTimeout: maxTimeout,
		Runner:      b,
		ActionCache: ac,
	}
	if o.workers != nil {
		popts, err := executor.PoolOptions(o.workers, filepath.Join(dir, "workers"))
		if err != nil {
			t.Fatal(err)
		}
		popts.Prepare = workerpolicy.PrepareWorkspace(files)
		pool, err := workerpool.New(popts)
		if err != nil {
			t.Fatal(err)
		}
		b.Workers = workerpolicy.New(pool, workerpolicy.Options{
			Protocols: []workerproto.Protocol{workerproto.Proto, workerproto.JSON}, VerifyFraction: o.workers.VerifyFraction, HistoryPath: o.history,
		})
		if o.history != "" {
			data, err := workerpolicy.ReadHistory(o.history)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Workers.Prewarm(context.Background(), data, disk, o.workers.Prewarm); err != nil {
				t.Fatal(err)
			}
		}
		opts.WarmWorkers = b.Workers.WarmWorkers
		opts.Close = func() {
			if err := b.Workers.Close(); err != nil {
				t.Errorf("closing the persistent workers: %v", err)
			}
		}
	}
	ex, err := executor.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	c := srv.run(t, ex)
	c.builder = b
	return c
}

// run runs ex against the server until the test ends, and returns the
// cluster once ex has registered.
func (srv *server) run(t *testing.T, ex *executor.Executor) *cluster {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ex.Run(ctx, srv.conn); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sched := srv.sched
	c := &cluster{t: t, conn: srv.conn, store: srv.store, sched: sched, exec: repb.NewExecutionClient(srv.conn), executor: ex, runDone: done}
	// Wait until the executor has registered, so that platform checks see it.
	for i := 0; ; i++ {
		if _, err := sched.Submit(scheduler.Request{ActionDigest: digest.Compute(digest.SHA256, []byte("probe")), Action: &repb.Action{},
			Platform: &repb.Platform{Properties: []*repb.Platform_Property{{Name: "nonexistent", Value: "x"}}}}); errors.Is(err, scheduler.ErrUnschedulable) {
			break
		}
		if i > 500 {
			t.Fatal("executor did not register")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c
}

func (c *cluster) put(data []byte) *repb.Digest {
	c.t.Helper()
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(context.Background(), c.store, d, data); err != nil {
		c.t.Fatal(err)
	}
	return d.Proto()
}

func (c *cluster) putProto(m proto.Message) *repb.Digest {
	c.t.Helper()
	data, err := proto.Marshal(m)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.put(data)
}

func (c *cluster) read(d *repb.Digest) string {
	c.t.Helper()
	dg, err := digest.FromProto(digest.SHA256, d)
	if err != nil {
		c.t.Fatal(err)
	}
	data, err := cas.Get(context.Background(), c.store, dg)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(data)
}

// action stores cmd, root and the Action and returns the Action's digest.
func (c *cluster) action(cmd *repb.Command, root *repb.Directory, mutate ...func(*repb.Action)) *repb.Digest {
	c.t.Helper()
	if root == nil {
		root = &repb.Directory{}
	}
	a := &repb.Action{CommandDigest: c.putProto(cmd), InputRootDigest: c.putProto(root)}
	for _, m := range mutate {
		m(a)
	}
	return c.putProto(a)
}

func env(kv ...string) []*repb.Command_EnvironmentVariable {
	var out []*repb.Command_EnvironmentVariable
	for i := 0; i < len(kv); i += 2 {
		out = append(out, &repb.Command_EnvironmentVariable{Name: kv[i], Value: kv[i+1]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// execute runs Execute to the end and returns every Operation message.
func (c *cluster) execute(req *repb.ExecuteRequest) ([]*longrunningpb.Operation, *repb.ExecuteResponse, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := c.exec.Execute(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	return drain(c.t, stream)
}

func drain(t *testing.T, stream grpc.ServerStreamingClient[longrunningpb.Operation]) ([]*longrunningpb.Operation, *repb.ExecuteResponse, error) {
	t.Helper()
	var ops []*longrunningpb.Operation
	for {
		op, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			t.Fatal("stream ended without a done operation")
		}
		if err != nil {
			return ops, nil, err
		}
		ops = append(ops, op)
		if op.GetDone() {
			if op.GetError() != nil {
				t.Fatalf("Operation.error set: %v", op.GetError())
			}
			resp := &repb.ExecuteResponse{}
			if err := op.GetResponse().UnmarshalTo(resp); err != nil {
				t.Fatal(err)
			}
			return ops, resp, nil
		}
	}
}

func stages(t *testing.T, ops []*longrunningpb.Operation) []repb.ExecutionStage_Value {
	t.Helper()
	var out []repb.ExecutionStage_Value
	for _, op := range ops {
		md := &repb.ExecuteOperationMetadata{}
		if err := op.GetMetadata().UnmarshalTo(md); err != nil {
			t.Fatal(err)
		}
		out = append(out, md.GetStage())
		if op.GetName() != ops[0].GetName() {
			t.Fatalf("operation name changed from %q to %q", ops[0].GetName(), op.GetName())
		}
	}
	return out
}
