package builder_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/metadatapb"
	"github.com/hearth-build/hearth/internal/workerpolicy"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

var testWorker []byte

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hearth-builder-test-")
	if err != nil {
		panic(err)
	}
	bin := filepath.Join(dir, "testworker")
	if out, err := exec.Command("go", "build", "-o", bin, "../workerproto/testworker").CombinedOutput(); err != nil {
		panic("building the test worker: " + err.Error() + "\n" + string(out))
	}
	if testWorker, err = os.ReadFile(bin); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// rig is a builder with a real disk CAS, file cache and worker pool.
type rig struct {
	t     testing.TB
	store cas.Store
	b     *builder.Builder
}

func newRig(t testing.TB, popts workerpool.Options) *rig {
	t.Helper()
	return newRigWith(t, popts, filecache.Options{})
}

func newRigWith(t testing.TB, popts workerpool.Options, fopts filecache.Options) *rig {
	t.Helper()
	dir := t.TempDir()
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{})
	if err != nil {
		t.Fatal(err)
	}
	files, err := filecache.New(filepath.Join(dir, "files"), disk, fopts)
	if err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	popts.Dir = filepath.Join(dir, "workers")
	popts.Prepare = workerpolicy.PrepareWorkspace(files)
	pool, err := workerpool.New(popts)
	if err != nil {
		t.Fatal(err)
	}
	w := workerpolicy.New(pool, workerpolicy.Options{Protocols: []workerproto.Protocol{workerproto.Proto}})
	t.Cleanup(func() { w.Close() })
	return &rig{t: t, store: disk, b: &builder.Builder{CAS: disk, Files: files, WorkDir: work, WorkerName: "test", Workers: w}}
}

func (r *rig) put(data []byte) *repb.Digest {
	r.t.Helper()
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(context.Background(), r.store, d, data); err != nil {
		r.t.Fatal(err)
	}
	return d.Proto()
}

func (r *rig) putProto(m proto.Message) *repb.Digest {
	r.t.Helper()
	data, err := proto.Marshal(m)
	if err != nil {
		r.t.Fatal(err)
	}
	return r.put(data)
}

// workerTask is a Bazel-style worker action: the test worker marked
// bazel_tool_input, startup args, the request in a flag file.
func (r *rig) workerTask(startup, request []string, props ...string) builder.Task {
	r.t.Helper()
	root := &repb.Directory{
		Files: []*repb.FileNode{{Name: "args.txt", Digest: r.put([]byte(strings.Join(request, "\n") + "\n"))}},
		Directories: []*repb.DirectoryNode{{Name: "tools", Digest: r.putProto(&repb.Directory{Files: []*repb.FileNode{{
			Name: "testworker", Digest: r.put(testWorker), IsExecutable: true,
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: inputtree.ToolInputProperty}}},
		}}})}},
	}
	platform := &repb.Platform{Properties: []*repb.Platform_Property{{Name: "persistentWorkerKey", Value: "k"}}}
	for i := 0; i < len(props); i += 2 {
		platform.Properties = append(platform.Properties, &repb.Platform_Property{Name: props[i], Value: props[i+1]})
	}
	cmd := &repb.Command{Arguments: append(append([]string{"tools/testworker"}, startup...), "@args.txt"), Platform: platform}
	action := &repb.Action{CommandDigest: r.putProto(cmd), InputRootDigest: r.putProto(root), Platform: platform}
	ad, _ := digest.FromProto(digest.SHA256, r.putProto(action))
	return builder.Task{ActionDigest: ad, Action: action, Command: cmd, QueuedAt: time.Now()}
}

func (r *rig) stderr(resp *repb.ExecuteResponse) string {
	r.t.Helper()
	d, err := digest.FromProto(digest.SHA256, resp.GetResult().GetStderrDigest())
	if err != nil {
		r.t.Fatal(err)
	}
	data, err := cas.Get(context.Background(), r.store, d)
	if err != nil {
		r.t.Fatal(err)
	}
	return string(data)
}

func info(t *testing.T, resp *repb.ExecuteResponse) *metadatapb.PersistentWorkerInfo {
	t.Helper()
	for _, a := range resp.GetResult().GetExecutionMetadata().GetAuxiliaryMetadata() {
		i := &metadatapb.PersistentWorkerInfo{}
		if a.MessageIs(i) {
			if err := a.UnmarshalTo(i); err != nil {
				t.Fatal(err)
			}
			return i
		}
	}
	t.Fatalf("no PersistentWorkerInfo in %v", resp.GetResult().GetExecutionMetadata())
	return nil
}

// A cancelled request costs the worker only when the worker does not answer
// the cancel: one that answers was_cancelled stays in the pool (DESIGN §3.6).
func TestCancelledRequestKeepsAWorkerThatAnswered(t *testing.T) {
	tests := []struct {
		name     string
		startup  []string // worker flags
		props    []string
		survives bool
	}{
		{"answers was_cancelled", []string{"--honor-cancel"}, []string{"supports-worker-cancellation", "1"}, true},
		{"declared cancellable, ignores the cancel", nil, []string{"supports-worker-cancellation", "1"}, false},
		{"not cancellable", []string{"--honor-cancel"}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, workerpool.Options{CancelGrace: 300 * time.Millisecond})
			warm := r.b.Build(context.Background(), r.workerTask(tc.startup, []string{"--counter"}, tc.props...))
			if i := info(t, warm); i.GetFellBack() || r.stderr(warm) != "1\n" {
				t.Fatalf("warm-up: %+v, stderr %q", i, r.stderr(warm))
			}

			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(300*time.Millisecond, cancel)
			start := time.Now()
			resp := r.b.Build(ctx, r.workerTask(tc.startup, []string{"--sleep=30s", "--counter"}, tc.props...))
			if codes.Code(resp.GetStatus().GetCode()) != codes.Canceled {
				t.Fatalf("cancelled action: status %v", resp.GetStatus())
			}
			if time.Since(start) > 10*time.Second {
				t.Fatal("the cancel did not stop the request")
			}

			next := r.b.Build(context.Background(), r.workerTask(tc.startup, []string{"--counter"}, tc.props...))
			i := info(t, next)
			if i.GetFellBack() {
				t.Fatalf("after the cancel: fell back: %+v", i)
			}
			if tc.survives {
				// The same process, on its third request.
				if !i.GetWarm() || i.GetInvocation() != 3 || r.stderr(next) != "3\n" {
					t.Fatalf("the worker that answered the cancel was not kept: %+v, stderr %q", i, r.stderr(next))
				}
				if st := r.b.Workers.Status().Total; len(st.Recycles) != 0 {
					t.Fatalf("a worker was stopped: %+v", st.Recycles)
				}
				return
			}
			if i.GetWarm() || i.GetInvocation() != 1 {
				t.Fatalf("a worker that did not answer the cancel was reused: %+v", i)
			}
			if got := r.b.Workers.Status().Total.Recycles[workerpool.ReasonCancelled]; got != 1 {
				t.Fatalf("recycled for the cancel: %d, want 1", got)
			}
		})
	}
}
