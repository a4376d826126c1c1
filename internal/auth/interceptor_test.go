package auth_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/scheduler"
	"github.com/hearth-build/hearth/internal/testcerts"
	"github.com/hearth-build/hearth/internal/workerapi"
)

const (
	readerToken = "reader-token"
	teamToken   = "team-token"
	workerToken = "worker-token"
)

// fixture is a real Hearth server (disk CAS and action cache, scheduler,
// worker API) on a loopback TLS listener behind the policy's interceptors.
type fixture struct {
	addr string
	ca   *testcerts.CA
	disk *cas.Disk
	ac   *actioncache.Disk
}

func startFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	ca, err := testcerts.NewCA(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Server("server")
	if err != nil {
		t.Fatal(err)
	}
	disk, err := cas.NewDisk(filepath.Join(dir, "cas"), cas.DiskOptions{})
	if err != nil {
		t.Fatal(err)
	}
	acDisk, err := actioncache.NewDisk(filepath.Join(dir, "ac"))
	if err != nil {
		t.Fatal(err)
	}
	sched := scheduler.New(scheduler.Config{})
	t.Cleanup(sched.Close)
	policy, err := auth.New(auth.Config{
		Principals: []auth.PrincipalConfig{
			{Name: "reader", TokenSHA256: []string{auth.HashToken(readerToken)}, Grants: []auth.Grant{{Rights: auth.Read}}},
			{Name: "team", TokenSHA256: []string{auth.HashToken(teamToken)}, Grants: []auth.Grant{
				{InstancePrefix: "team", Rights: auth.Read | auth.Write | auth.ACWrite | auth.Execute},
			}},
			{Name: "worker", TokenSHA256: []string{auth.HashToken(workerToken)}, Grants: []auth.Grant{{Rights: auth.Executor}}},
			{Name: "ci-cert", ClientCertNames: []string{"ci"}, Grants: []auth.Grant{{Rights: auth.Read | auth.Write}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{srvCert.TLS}, ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.UnaryInterceptor(policy.UnaryInterceptor()),
		grpc.StreamInterceptor(policy.StreamInterceptor()),
	)
	store := cas.NewVerifying(disk)
	reapi.Register(srv, reapi.Config{CAS: store, ActionCache: actioncache.NewCompletenessChecking(acDisk, store), ExecEnabled: true, Scheduler: sched})
	workerapi.RegisterSchedulerServer(srv, sched)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return &fixture{addr: lis.Addr().String(), ca: ca, disk: disk, ac: acDisk}
}

// client dials the fixture with a client certificate (or none) and sends
// token (or nothing) as a bearer token with every call.
func (f *fixture) client(t *testing.T, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: f.ca.Pool(), ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func blobOf(data string) (*repb.Digest, digest.Digest) {
	sum := sha256.Sum256([]byte(data))
	d := &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
	dd, _ := digest.FromProto(digest.SHA256, d)
	return d, dd
}

// call is one RPC of the table; written, if set, reports whether the call
// stored something, so that a refused write can be shown to have stored
// nothing.
type call struct {
	do      func(ctx context.Context, conn *grpc.ClientConn, instance, data string) error
	written func(f *fixture, instance, data string) bool
}

var calls = map[string]call{
	"caps": {do: func(ctx context.Context, c *grpc.ClientConn, inst, _ string) error {
		_, err := repb.NewCapabilitiesClient(c).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: inst})
		return err
	}},
	"findmissing": {do: func(ctx context.Context, c *grpc.ClientConn, inst, data string) error {
		d, _ := blobOf(data)
		_, err := repb.NewContentAddressableStorageClient(c).FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: inst, BlobDigests: []*repb.Digest{d}})
		return err
	}},
	"batchupdate": {do: func(ctx context.Context, c *grpc.ClientConn, inst, data string) error {
		d, _ := blobOf(data)
		_, err := repb.NewContentAddressableStorageClient(c).BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{InstanceName: inst,
			Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: []byte(data)}}})
		return err
	}, written: casHas},
	"bswrite": {do: func(ctx context.Context, c *grpc.ClientConn, inst, data string) error {
		d, _ := blobOf(data)
		name := "uploads/" + uuid.NewString() + "/blobs/" + d.Hash + "/" + strconv.FormatInt(d.SizeBytes, 10)
		if inst != "" {
			name = inst + "/" + name
		}
		w, err := bspb.NewByteStreamClient(c).Write(ctx)
		if err != nil {
			return err
		}
		if err := w.Send(&bspb.WriteRequest{ResourceName: name, Data: []byte(data), FinishWrite: true}); err != nil {
			_, err = w.CloseAndRecv()
			return err
		}
		_, err = w.CloseAndRecv()
		return err
	}, written: casHas},
	"bsread": {do: func(ctx context.Context, c *grpc.ClientConn, inst, _ string) error {
		// The empty blob is always present.
		name := "blobs/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/0"
		if inst != "" {
			name = inst + "/" + name
		}
		r, err := bspb.NewByteStreamClient(c).Read(ctx, &bspb.ReadRequest{ResourceName: name})
		if err != nil {
			return err
		}
		for {
			if _, err := r.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}},
	"updateac": {do: func(ctx context.Context, c *grpc.ClientConn, inst, data string) error {
		d, _ := blobOf(data)
		_, err := repb.NewActionCacheClient(c).UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: inst, ActionDigest: d, ActionResult: &repb.ActionResult{ExitCode: 3}})
		return err
	}, written: func(f *fixture, inst, data string) bool {
		_, d := blobOf(data)
		_, err := f.ac.Get(context.Background(), inst, d)
		return err == nil
	}},
	"execute": {do: func(ctx context.Context, c *grpc.ClientConn, inst, data string) error {
		d, _ := blobOf(data) // not in the CAS: an authorized call fails with FAILED_PRECONDITION
		s, err := repb.NewExecutionClient(c).Execute(ctx, &repb.ExecuteRequest{InstanceName: inst, ActionDigest: d})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}},
	"connect": {do: func(ctx context.Context, c *grpc.ClientConn, _, _ string) error {
		s, err := workerapi.NewSchedulerClient(c).Connect(ctx)
		if err != nil {
			return err
		}
		// An empty first message: an executor past the check gets
		// INVALID_ARGUMENT from the scheduler.
		s.Send(&workerapi.ExecutorMessage{})
		_, err = s.Recv()
		return err
	}},
}

func casHas(f *fixture, _, data string) bool {
	_, d := blobOf(data)
	missing, err := f.disk.FindMissing(context.Background(), []digest.Digest{d})
	return err == nil && len(missing) == 0
}

func TestInterceptors(t *testing.T) {
	f := startFixture(t)
	ci, err := f.ca.Client("ci")
	if err != nil {
		t.Fatal(err)
	}
	unmapped, err := f.ca.Client("nobody")
	if err != nil {
		t.Fatal(err)
	}
	type tc struct {
		who      string // token name, "cert:ci", "cert:nobody" or "" (nothing)
		call     string
		instance string
		want     codes.Code // codes.OK means "got past the check": any other code than these two
	}
	cases := []tc{
		// No credential at all.
		{"", "caps", "", codes.Unauthenticated},
		{"", "batchupdate", "", codes.Unauthenticated},
		{"", "bswrite", "", codes.Unauthenticated},
		{"", "updateac", "", codes.Unauthenticated},
		{"", "connect", "", codes.Unauthenticated},
		{"bogus", "caps", "", codes.Unauthenticated},
		{"cert:nobody", "caps", "", codes.Unauthenticated},
		// Read-only token.
		{readerToken, "caps", "", codes.OK},
		{readerToken, "findmissing", "any/where", codes.OK},
		{readerToken, "bsread", "x", codes.OK},
		{readerToken, "batchupdate", "", codes.PermissionDenied},
		{readerToken, "bswrite", "", codes.PermissionDenied},
		{readerToken, "updateac", "", codes.PermissionDenied},
		{readerToken, "execute", "", codes.PermissionDenied},
		{readerToken, "connect", "", codes.PermissionDenied},
		// Token limited to the instance prefix "team".
		{teamToken, "batchupdate", "team", codes.OK},
		{teamToken, "bswrite", "team/linux", codes.OK},
		{teamToken, "updateac", "team", codes.OK},
		{teamToken, "execute", "team", codes.OK},
		{teamToken, "bsread", "team", codes.OK},
		{teamToken, "batchupdate", "teamx", codes.PermissionDenied},
		{teamToken, "bswrite", "", codes.PermissionDenied},
		{teamToken, "updateac", "other", codes.PermissionDenied},
		{teamToken, "execute", "", codes.PermissionDenied},
		{teamToken, "caps", "", codes.PermissionDenied},
		{teamToken, "connect", "", codes.PermissionDenied},
		// Executor token: the worker API, and nothing else.
		{workerToken, "connect", "", codes.OK},
		{workerToken, "bswrite", "any", codes.OK}, // executors upload outputs of every instance
		{workerToken, "updateac", "any", codes.OK},
		{workerToken, "execute", "", codes.PermissionDenied},
		// Client certificate mapped to a principal.
		{"cert:ci", "batchupdate", "", codes.OK},
		{"cert:ci", "bswrite", "a/b", codes.OK},
		{"cert:ci", "updateac", "", codes.PermissionDenied},
		{"cert:ci", "connect", "", codes.PermissionDenied},
	}
	for i, c := range cases {
		name := c.who + "/" + c.call + "/" + c.instance
		t.Run(name, func(t *testing.T) {
			var conn *grpc.ClientConn
			token := c.who
			switch c.who {
			case "cert:ci":
				conn, token = f.client(t, &ci.TLS), ""
			case "cert:nobody":
				conn, token = f.client(t, &unmapped.TLS), ""
			default:
				conn = f.client(t, nil)
			}
			ctx, cancel := context.WithTimeout(withToken(context.Background(), token), 10*time.Second)
			defer cancel()
			data := "blob for case " + strconv.Itoa(i)
			cl := calls[c.call]
			err := cl.do(ctx, conn, c.instance, data)
			got := status.Code(err)
			switch c.want {
			case codes.OK:
				if got == codes.Unauthenticated || got == codes.PermissionDenied {
					t.Fatalf("refused: %v", err)
				}
			default:
				if got != c.want {
					t.Fatalf("got %v (%v), want %v", got, err, c.want)
				}
			}
			if c.want == codes.PermissionDenied {
				msg := status.Convert(err).Message()
				if !strings.Contains(msg, "lacks the") || (c.call != "connect" && !strings.Contains(msg, `instance "`+c.instance+`"`)) {
					t.Errorf("PERMISSION_DENIED message %q does not name the right and the instance", msg)
				}
			}
			if cl.written != nil && (err == nil || c.want != codes.OK) {
				if w := cl.written(f, c.instance, data); w != (err == nil) {
					t.Errorf("stored = %v after a call answered %v", w, got)
				}
			}
		})
	}
}
