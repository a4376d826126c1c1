package localcas

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/localcas/localcaspb"
	"github.com/hearth-build/hearth/internal/reapi"
)

const sha = repb.DigestFunction_SHA256

// env is a real Hearth storage server on loopback TCP, and a LocalCAS
// server on a real Unix socket backed by a file cache fed from it.
type env struct {
	remote cas.Store // the storage server's own store
	sock   string
	client localcaspb.LocalContentAddressableStorageClient
	stage  string
}

func start(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	blobs := cas.NewVerifying(disk)
	results, err := actioncache.NewDisk(filepath.Join(dir, "ac"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize))
	reapi.Register(srv, reapi.Config{CAS: blobs, ActionCache: actioncache.NewCompletenessChecking(results, blobs)})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := casclient.Dial(context.Background(), "grpc://"+lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	store := casclient.NewStore(conn, "")
	files, err := filecache.New(filepath.Join(dir, "files"), store, filecache.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{CAS: store, ActionCache: casclient.NewActionCache(conn), Files: files, StageDir: filepath.Join(dir, "stage")})
	if err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "lc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "s")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go Serve(ctx, l, s)
	lc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close() })
	return &env{sock: sock, remote: blobs, client: localcaspb.NewLocalContentAddressableStorageClient(lc), stage: filepath.Join(dir, "stage")}
}

func (e *env) put(t *testing.T, data []byte) *repb.Digest {
	t.Helper()
	d := digest.Compute(sha, data)
	if err := cas.Put(context.Background(), e.remote, d, data); err != nil {
		t.Fatal(err)
	}
	return d.Proto()
}

func (e *env) putProto(t *testing.T, m proto.Message) *repb.Digest {
	t.Helper()
	data, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return e.put(t, data)
}

func (e *env) get(t *testing.T, d *repb.Digest) []byte {
	t.Helper()
	dg, err := digest.FromProto(sha, d)
	if err != nil {
		t.Fatal(err)
	}
	data, err := cas.Get(context.Background(), e.remote, dg)
	if err != nil {
		t.Fatalf("the storage server lacks %v: %v", dg, err)
	}
	return data
}

// inputRoot is: hello.txt, bin/run.sh (executable), link -> hello.txt.
func (e *env) inputRoot(t *testing.T) *repb.Digest {
	bin := e.putProto(t, &repb.Directory{Files: []*repb.FileNode{{Name: "run.sh", Digest: e.put(t, []byte("#!/bin/sh\necho hi\n")), IsExecutable: true}}})
	return e.putProto(t, &repb.Directory{
		Files:       []*repb.FileNode{{Name: "hello.txt", Digest: e.put(t, []byte("hello"))}},
		Directories: []*repb.DirectoryNode{{Name: "bin", Digest: bin}},
		Symlinks:    []*repb.SymlinkNode{{Name: "link", Target: "hello.txt"}},
	})
}

func TestStageCaptureRoundTrip(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	stream, err := e.client.StageTree(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&localcaspb.StageTreeRequest{RootDigest: e.inputRoot(t)}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("StageTree: %v", err)
	}
	dir := resp.GetPath()
	if !strings.HasPrefix(dir, e.stage) {
		t.Fatalf("staged at %q, want under %q", dir, e.stage)
	}
	for _, c := range []struct {
		path, data string
		mode       os.FileMode
	}{{"hello.txt", "hello", 0o444}, {"bin/run.sh", "#!/bin/sh\necho hi\n", 0o555}} {
		got, err := os.ReadFile(filepath.Join(dir, c.path))
		if err != nil || string(got) != c.data {
			t.Errorf("%s: %q, %v; want %q", c.path, got, err, c.data)
		}
		if st, err := os.Stat(filepath.Join(dir, c.path)); err != nil || st.Mode().Perm() != c.mode {
			t.Errorf("%s: mode %v, %v; want %v", c.path, st.Mode().Perm(), err, c.mode)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "link")); err != nil || target != "hello.txt" {
		t.Errorf("link: %q, %v", target, err)
	}

	// Outputs written beside the staged inputs, as a runner's command does.
	out := filepath.Join(dir, "out")
	if err := os.MkdirAll(filepath.Join(out, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "sub", "r.txt"), []byte("result"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, "tool"), []byte("exe"), 0o755); err != nil {
		t.Fatal(err)
	}
	ct, err := e.client.CaptureTree(ctx, &localcaspb.CaptureTreeRequest{Root: dir, Path: []string{"out", filepath.Join(dir, "out")}, OutputDirectoryFormat: repb.Command_TREE_AND_DIRECTORY})
	if err != nil {
		t.Fatal(err)
	}
	if len(ct.Responses) != 2 {
		t.Fatalf("%d responses, want 2", len(ct.Responses))
	}
	for _, r := range ct.Responses {
		if r.GetStatus().GetCode() != 0 {
			t.Fatalf("CaptureTree %q: %v", r.Path, r.GetStatus())
		}
	}
	if !proto.Equal(ct.Responses[0].TreeDigest, ct.Responses[1].TreeDigest) {
		t.Errorf("relative and absolute spelling give different trees")
	}
	tree := &repb.Tree{}
	if err := proto.Unmarshal(e.get(t, ct.Responses[0].TreeDigest), tree); err != nil {
		t.Fatal(err)
	}
	root := tree.GetRoot()
	if len(root.Files) != 1 || root.Files[0].Name != "tool" || !root.Files[0].IsExecutable || len(root.Directories) != 1 {
		t.Fatalf("captured root %v", root)
	}
	if got := string(e.get(t, root.Files[0].Digest)); got != "exe" {
		t.Errorf("tool on the server: %q", got)
	}
	if rd := ct.Responses[0].RootDirectoryDigest; rd == nil || !proto.Equal(e.putProto(t, root), rd) {
		t.Errorf("root_directory_digest %v", rd)
	}
	if len(tree.Children) != 1 || string(e.get(t, tree.Children[0].Files[0].Digest)) != "result" {
		t.Errorf("children %v", tree.Children)
	}

	cf, err := e.client.CaptureFiles(ctx, &localcaspb.CaptureFilesRequest{Root: dir, Path: []string{"out/tool", "out/sub/r.txt", "out/missing", "out/sub"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.OK, codes.NotFound, codes.FailedPrecondition}
	for i, r := range cf.Responses {
		if got := codes.Code(r.GetStatus().GetCode()); got != want[i] {
			t.Errorf("CaptureFiles %q: %v (%s), want %v", r.Path, got, r.GetStatus().GetMessage(), want[i])
		}
	}
	if r := cf.Responses[0]; !r.IsExecutable || string(e.get(t, r.Digest)) != "exe" {
		t.Errorf("out/tool: %v", r)
	}
	if r := cf.Responses[1]; r.IsExecutable || string(e.get(t, r.Digest)) != "result" {
		t.Errorf("out/sub/r.txt: %v", r)
	}

	// The second (empty) request unstages; the server answers when done.
	if err := stream.Send(&localcaspb.StageTreeRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("unstage: %v", err)
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Errorf("staged dir %s still there after unstaging: %v", dir, err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("stream after unstage: %v, want EOF", err)
	}
}

func TestStageIntoGivenDir(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	target := filepath.Join(t.TempDir(), "given")
	for _, c := range []struct {
		name    string
		prepare func()
		code    codes.Code
	}{
		{"absent", func() {}, codes.OK},
		{"empty", func() { os.Mkdir(target, 0o755) }, codes.OK},
		{"not empty", func() { os.Mkdir(target, 0o755); os.WriteFile(filepath.Join(target, "x"), nil, 0o644) }, codes.InvalidArgument},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.RemoveAll(target)
			c.prepare()
			stream, err := e.client.StageTree(ctx)
			if err != nil {
				t.Fatal(err)
			}
			stream.Send(&localcaspb.StageTreeRequest{RootDigest: e.inputRoot(t), Path: target})
			resp, err := stream.Recv()
			if got := status.Code(err); got != c.code {
				t.Fatalf("StageTree: %v, want %v", err, c.code)
			}
			if err != nil {
				return
			}
			if resp.Path != target {
				t.Errorf("staged at %q, want %q", resp.Path, target)
			}
			if _, err := os.Stat(filepath.Join(target, "bin", "run.sh")); err != nil {
				t.Error(err)
			}
			stream.CloseSend() // closing also unstages
			if _, err := stream.Recv(); err != nil {
				t.Fatal(err)
			}
			if names, _ := readNames(target); len(names) != 0 {
				t.Errorf("%s still holds %v", target, names)
			}
		})
	}
}

func TestStageRefusesBadTrees(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	missing := digest.Compute(sha, []byte("not uploaded")).Proto()
	for _, c := range []struct {
		name string
		root *repb.Digest
		code codes.Code
		msg  string
	}{
		{"symlink escapes", e.putProto(t, &repb.Directory{Symlinks: []*repb.SymlinkNode{{Name: "esc", Target: "../../etc/passwd"}}}), codes.InvalidArgument, "esc"},
		{"absolute symlink", e.putProto(t, &repb.Directory{Symlinks: []*repb.SymlinkNode{{Name: "abs", Target: "/etc/passwd"}}}), codes.InvalidArgument, "abs"},
		{"dotdot name", e.putProto(t, &repb.Directory{Files: []*repb.FileNode{{Name: "..", Digest: e.put(t, []byte("x"))}}}), codes.InvalidArgument, ".."},
		{"missing root", missing, codes.NotFound, missing.Hash},
		{"missing file", e.putProto(t, &repb.Directory{Files: []*repb.FileNode{{Name: "gone", Digest: missing}}}), codes.NotFound, missing.Hash},
		{"malformed digest", &repb.Digest{Hash: "xyz", SizeBytes: 1}, codes.InvalidArgument, "root_digest"},
	} {
		t.Run(c.name, func(t *testing.T) {
			stream, err := e.client.StageTree(ctx)
			if err != nil {
				t.Fatal(err)
			}
			stream.Send(&localcaspb.StageTreeRequest{RootDigest: c.root})
			_, err = stream.Recv()
			if status.Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("StageTree: %v; want %v naming %q", err, c.code, c.msg)
			}
		})
	}
	if names, _ := readNames(e.stage); len(names) != 0 {
		t.Errorf("failed stagings left %v behind", names)
	}
}

func TestCaptureRefusesEscapes(t *testing.T) {
	e := start(t)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "ok"), 0o755)
	os.Symlink("/etc", filepath.Join(root, "etclink"))
	os.Symlink("..", filepath.Join(root, "up"))
	for _, c := range []struct {
		root, path string
		code       codes.Code
	}{
		{root, "ok", codes.OK},
		{root, "../x", codes.InvalidArgument},
		{root, "ok/../../x", codes.InvalidArgument},
		{root, "/etc", codes.InvalidArgument},
		{root, "etclink/ssl", codes.FailedPrecondition}, // a parent is a symlink: never followed
		{root, "up/x", codes.FailedPrecondition},
		{"", "relative", codes.InvalidArgument},
		{"relative-root", "x", codes.InvalidArgument},
	} {
		resp, err := e.client.CaptureTree(context.Background(), &localcaspb.CaptureTreeRequest{Root: c.root, Path: []string{c.path}})
		if err != nil {
			t.Fatal(err)
		}
		r := resp.Responses[0]
		if got := codes.Code(r.GetStatus().GetCode()); got != c.code {
			t.Errorf("root %q path %q: %v (%s), want %v", c.root, c.path, got, r.GetStatus().GetMessage(), c.code)
		}
	}
}

func TestBlobsAndTrees(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	present := e.put(t, []byte("present"))
	missing := digest.Compute(sha, []byte("absent")).Proto()
	fr, err := e.client.FetchMissingBlobs(ctx, &localcaspb.FetchMissingBlobsRequest{BlobDigests: []*repb.Digest{present, missing, {Hash: "bad"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(fr.Responses) != 2 || codes.Code(fr.Responses[0].Status.Code) != codes.NotFound || !proto.Equal(fr.Responses[0].Digest, missing) ||
		codes.Code(fr.Responses[1].Status.Code) != codes.InvalidArgument {
		t.Fatalf("FetchMissingBlobs failures: %v", fr.Responses)
	}
	du, err := e.client.GetLocalDiskUsage(ctx, &localcaspb.GetLocalDiskUsageRequest{})
	if err != nil || du.SizeBytes != int64(len("present")) {
		t.Fatalf("GetLocalDiskUsage after one fetch: %v, %v", du, err)
	}
	// A blob the file cache holds uploads; one it lacks is NOT_FOUND.
	ur, err := e.client.UploadMissingBlobs(ctx, &localcaspb.UploadMissingBlobsRequest{BlobDigests: []*repb.Digest{present, missing}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ur.Responses) != 1 || codes.Code(ur.Responses[0].Status.Code) != codes.NotFound {
		t.Fatalf("UploadMissingBlobs failures: %v", ur.Responses)
	}
	root := e.inputRoot(t)
	if _, err := e.client.FetchTree(ctx, &localcaspb.FetchTreeRequest{RootDigest: root, FetchFileBlobs: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.UploadTree(ctx, &localcaspb.UploadTreeRequest{RootDigest: root}); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.FetchTree(ctx, &localcaspb.FetchTreeRequest{RootDigest: missing})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("FetchTree of an absent root: %v, want NOT_FOUND", err)
	}
	in, err := e.client.GetInstanceNameForRemotes(ctx, &localcaspb.GetInstanceNameForRemotesRequest{ContentAddressableStorage: &localcaspb.Remote{InstanceName: "main"}})
	if err != nil || in.InstanceName != "main" {
		t.Fatalf("GetInstanceNameForRemotes: %v, %v", in, err)
	}
}
