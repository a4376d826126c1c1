package reapi

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// startServer runs the storage services on an in-memory listener over real
// disk stores in a fresh temporary directory, the way the server wires them:
// a verifying disk CAS and a completeness-checking disk action cache. Options
// adjust the Config before the services start. The returned Config holds the
// same stores the server uses, so tests can inspect or seed them directly.
func startServer(t *testing.T, opts ...func(*Config)) (*grpc.ClientConn, Config) {
	t.Helper()
	dir := t.TempDir()
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{})
	if err != nil {
		t.Fatalf("cas.NewDisk: %v", err)
	}
	blobs := cas.NewVerifying(disk)
	results, err := actioncache.NewDisk(filepath.Join(dir, "ac"))
	if err != nil {
		t.Fatalf("actioncache.NewDisk: %v", err)
	}
	cfg := Config{
		CAS:         blobs,
		ActionCache: actioncache.NewCompletenessChecking(results, blobs),
	}
	for _, o := range opts {
		o(&cfg)
	}

	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(MaxRecvMsgSize))
	Register(srv, cfg)
	go srv.Serve(lis)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize), grpc.MaxCallSendMsgSize(MaxRecvMsgSize)))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
	})
	return conn, cfg
}

// wantCode fails the test unless err carries the gRPC code want.
func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

// blob returns data's digest under fn.
func blob(fn digest.Function, data string) digest.Digest {
	return digest.Compute(fn, []byte(data))
}

// putBlobs stores blobs in the CAS directly, bypassing the services.
func putBlobs(t *testing.T, s cas.Store, fn digest.Function, data ...[]byte) []digest.Digest {
	t.Helper()
	ds := make([]digest.Digest, len(data))
	for i, b := range data {
		ds[i] = digest.Compute(fn, b)
		if err := cas.Put(context.Background(), s, ds[i], b); err != nil {
			t.Fatalf("cas.Put: %v", err)
		}
	}
	return ds
}

// putProto stores m's encoding in the CAS and returns its digest.
func putProto(t *testing.T, s cas.Store, fn digest.Function, m proto.Message) digest.Digest {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return putBlobs(t, s, fn, b)[0]
}

// badDigests are malformed digests every service must reject, by name. (A
// singular digest field may also be nil, which tests check separately.)
var badDigests = map[string]*repb.Digest{
	"empty":          {},
	"short hash":     {Hash: "abc", SizeBytes: 3},
	"upper-case hex": {Hash: "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", SizeBytes: 0},
	"non-hex":        {Hash: "z3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", SizeBytes: 0},
	"negative size":  {Hash: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", SizeBytes: -1},
}
