package executor_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/executor"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/redissched"
	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// replicaPair is two servers sharing scheduler state in one Redis, and an
// executor whose connection reaches whichever of them the test points it
// at (or none), as worker_api_endpoint.uris fails over to the next replica.
type replicaPair struct {
	a, b   *server
	redis  *redistest.Server
	target atomic.Pointer[bufconn.Listener]
	conn   *grpc.ClientConn
	action *repb.Digest
	marks  string // the action appends a line here as it starts and ends
}

// startReplicaPair serves cmd's action (stored at both) from two replicas.
// The action logs "start" and "end" to p.marks around sleeping for sleep.
func startReplicaPair(t *testing.T, lease time.Duration, sleep string) *replicaPair {
	t.Helper()
	p := &replicaPair{redis: redistest.Start(t), marks: filepath.Join(t.TempDir(), "marks")}
	cmd := &repb.Command{
		Arguments:   []string{"sh", "-c", "echo start >> " + p.marks + "; sleep " + sleep + "; echo end >> " + p.marks + "; echo done > out"},
		OutputPaths: []string{"out"},
	}
	var blobs [][]byte
	put := func(m proto.Message) *repb.Digest {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, data)
		return digest.Compute(digest.SHA256, data).Proto()
	}
	p.action = put(&repb.Action{CommandDigest: put(cmd), InputRootDigest: put(&repb.Directory{})})
	replica := func() *server {
		st := redissched.New(p.redis.Client(t), redissched.Options{Lease: lease})
		return startServer(t, t.TempDir(), scheduler.Config{Shared: st, SharedPoll: 100 * time.Millisecond}, blobs...)
	}
	p.a, p.b = replica(), replica()
	p.target.Store(p.a.lis)
	var err error
	p.conn, err = grpc.NewClient("passthrough:///replicas",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			if lis := p.target.Load(); lis != nil {
				return lis.DialContext(ctx)
			}
			return nil, errors.New("no replica reachable")
		}),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.conn.Close() })
	return p
}

// runExecutor runs an executor on p's connection until the test ends; its
// CAS and action cache are A's (read directly, so A's death spares them).
func (p *replicaPair) runExecutor(t *testing.T, grace time.Duration) {
	t.Helper()
	dir := t.TempDir()
	files, err := filecache.New(filepath.Join(dir, "files"), p.a.disk, filecache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := executor.New(executor.Options{
		Name: "w", Properties: executor.DefaultProperties(), MinimumProperties: executor.MinimumProperties, MaxInflight: 2,
		Runner:      &builder.Builder{CAS: p.a.store, Files: files, WorkDir: filepath.Join(dir, "work"), WorkerName: "w"},
		ActionCache: p.a.ac, ReconnectGrace: grace, HeartbeatInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ex.Run(ctx, p.conn); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

type executed struct {
	name string
	resp *repb.ExecuteResponse
}

// submitAtB starts the action through B's Execution service, the client
// waiting there, and returns its operation and response when they come.
func (p *replicaPair) submitAtB(t *testing.T) <-chan executed {
	out := make(chan executed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		stream, err := repb.NewExecutionClient(p.b.conn).Execute(ctx, &repb.ExecuteRequest{ActionDigest: p.action, SkipCacheLookup: true})
		if err != nil {
			t.Error(err)
			close(out)
			return
		}
		ops, resp, err := drain(t, stream)
		if err != nil {
			t.Error(err)
			close(out)
			return
		}
		out <- executed{ops[0].GetName(), resp}
	}()
	return out
}

func (p *replicaPair) readMarks(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(p.marks)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(string(data)), " ")
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func executorsAt(s *server) int { return len(s.sched.Status().Executors) }

// attemptsOf reads how often the shared state handed operation name out.
func (p *replicaPair) attemptsOf(t *testing.T, name string) int {
	t.Helper()
	snap, err := redissched.New(p.redis.Client(t), redissched.Options{}).Get(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return snap.Attempts
}

// The replica that assigned an action is killed while the action runs and
// no replica is reachable until it has finished: the executor keeps it
// running, holds its result, and at its next session (with B) reports it;
// B adopts it and the client waiting at B gets that result. It ran once.
func TestSessionBreakKeepsActionAndReportsHeldResult(t *testing.T) {
	p := startReplicaPair(t, 2*time.Second, "0.5")
	p.runExecutor(t, time.Minute)
	waitFor(t, "executor registered at A", 5*time.Second, func() bool { return executorsAt(p.a) == 1 })
	result := p.submitAtB(t)
	waitFor(t, "the action started", 10*time.Second, func() bool { return p.readMarks(t) == "start" })
	p.target.Store(nil)
	p.a.kill()
	waitFor(t, "the action finished after its session broke", 10*time.Second, func() bool { return p.readMarks(t) == "start end" })
	time.Sleep(100 * time.Millisecond) // held, with nobody to report it to
	p.target.Store(p.b.lis)
	select {
	case r := <-result:
		if resp := r.resp; resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 || len(resp.GetResult().GetOutputFiles()) != 1 {
			t.Errorf("client at B got %v", resp)
		}
		if n := p.attemptsOf(t, r.name); n != 1 {
			t.Errorf("handed out %d times, want 1", n)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no result at B; B: %+v", p.b.sched.Status())
	}
	if got := p.readMarks(t); got != "start end" {
		t.Errorf("the action's runs: %q, want one (start end)", got)
	}
	if st := p.b.sched.Status(); st.TasksAdopted != 1 || st.TasksRefused != 0 {
		t.Errorf("B adopted %d, refused %d; want 1, 0", st.TasksAdopted, st.TasksRefused)
	}
}

// Past the grace without a lasting session, the executor cancels the action
// and forgets it: the next session reports nothing, and the action runs
// again once its lease lapses. Sessions that a server ends at once (here
// one without the worker API) do not extend the grace.
func TestSessionBreakGraceCancels(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) { testGraceCancels(t, nil, func() {}) })
	t.Run("sessions end at once", func(t *testing.T) {
		lis := bufconn.Listen(1 << 20)
		gs := grpc.NewServer()
		go gs.Serve(lis)
		t.Cleanup(gs.Stop)
		testGraceCancels(t, lis, gs.Stop)
	})
}

// testGraceCancels points the executor at meanwhile from A's death until
// the grace passed, then stops it and points the executor at B.
func testGraceCancels(t *testing.T, meanwhile *bufconn.Listener, stop func()) {
	p := startReplicaPair(t, time.Second, "3")
	p.runExecutor(t, 200*time.Millisecond)
	waitFor(t, "executor registered at A", 5*time.Second, func() bool { return executorsAt(p.a) == 1 })
	result := p.submitAtB(t)
	waitFor(t, "the action started", 10*time.Second, func() bool { return p.readMarks(t) == "start" })
	p.target.Store(meanwhile)
	p.a.kill()
	time.Sleep(time.Second) // the grace passes
	p.target.Store(p.b.lis)
	stop()
	waitFor(t, "executor registered at B", 15*time.Second, func() bool { return executorsAt(p.b) == 1 })
	select {
	case r := <-result:
		if resp := r.resp; resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
			t.Errorf("client at B got %v", resp)
		}
		if n := p.attemptsOf(t, r.name); n != 2 {
			t.Errorf("handed out %d times, want 2", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no result at B; B: %+v", p.b.sched.Status())
	}
	// The first run was cut short; the second, after the lapse, finished.
	if got := p.readMarks(t); got != "start start end" {
		t.Errorf("the action's runs: %q, want a cancelled one, then a whole one", got)
	}
	if st := p.b.sched.Status(); st.TasksAdopted != 0 || st.TasksRefused != 0 {
		t.Errorf("B adopted %d, refused %d; want nothing reported", st.TasksAdopted, st.TasksRefused)
	}
}

// A result reported just before the session broke is reported again at the
// next session (the dead replica may never have read it): B finds the
// operation done and counts it so, and the client's result stands.
func TestResultReportedAgainAfterBreak(t *testing.T) {
	p := startReplicaPair(t, 2*time.Second, "0.1")
	p.runExecutor(t, time.Minute)
	waitFor(t, "executor registered at A", 5*time.Second, func() bool { return executorsAt(p.a) == 1 })
	var r executed
	select {
	case r = <-p.submitAtB(t):
	case <-time.After(15 * time.Second):
		t.Fatal("no result")
	}
	p.target.Store(nil)
	p.a.kill()
	p.target.Store(p.b.lis)
	waitFor(t, "executor registered at B", 5*time.Second, func() bool { return executorsAt(p.b) == 1 })
	waitFor(t, "B counted the repeated result", 5*time.Second, func() bool { return p.b.sched.Status().TasksDone == 1 })
	if st := p.b.sched.Status(); st.TasksAdopted != 0 || st.TasksRefused != 0 {
		t.Errorf("B adopted %d, refused %d; want neither", st.TasksAdopted, st.TasksRefused)
	}
	waitFor(t, "the repeated result's slot freed", 5*time.Second, func() bool { return running(&cluster{sched: p.b.sched}) == 0 })
	if r.resp.GetResult().GetExitCode() != 0 || p.attemptsOf(t, r.name) != 1 || p.readMarks(t) != "start end" {
		t.Errorf("result %v after %d attempts, runs %q", r.resp, p.attemptsOf(t, r.name), p.readMarks(t))
	}
}
