package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/testcerts"
)

// accessSetup is what an access-control test deploys: a CA with a server
// certificate (for 127.0.0.1) and a client certificate "bazel-ci", and a
// bearer token per principal of the server configuration it writes.
type accessSetup struct {
	dir    string
	ca     *testcerts.CA
	server testcerts.Pair
	client testcerts.Pair
	// tokens by principal: "ci" (read, write, ac-write, execute),
	// "readonly" (read) and "workers" (executor).
	tokens map[string]string
}

func newAccessSetup(t *testing.T) *accessSetup {
	t.Helper()
	s := &accessSetup{dir: t.TempDir(), tokens: map[string]string{}}
	var err error
	if s.ca, err = testcerts.NewCA(s.dir, "hearth-test"); err != nil {
		t.Fatal(err)
	}
	if s.server, err = s.ca.Server("server"); err != nil {
		t.Fatal(err)
	}
	if s.client, err = s.ca.Client("bazel-ci"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ci", "readonly", "workers"} {
		s.tokens[name] = auth.NewToken()
	}
	return s
}

// writeConfig writes a --config-server file serving TLS with the setup's
// certificate (and requiring client certificates when mtls) and the
// principals. It returns its path.
func (s *accessSetup) writeConfig(t *testing.T, mtls bool) string {
	t.Helper()
	clientCA, certPrincipal := "", ""
	if mtls {
		clientCA = fmt.Sprintf("client_ca_file: %q,", s.ca.CertFile)
		certPrincipal = `{name: "bazel-ci-cert", client_cert_names: ["bazel-ci"], grants: [{rights: ["read", "write", "ac-write", "execute"]}]},`
	}
	cfg := fmt.Sprintf(`// written by %s
{
  tls: {cert_file: %q, key_file: %q, %s},
  auth: {
    principals: [
      {name: "ci", token_sha256: %q, grants: [{instance_prefix: "", rights: ["read", "write", "ac-write", "execute"]}]},
      {name: "readonly", token_sha256: %q, grants: [{rights: ["read"]}]},
      {name: "workers", token_sha256: %q, grants: [{rights: ["executor"]}]},
      %s
    ],
  },
}
`, t.Name(), s.server.CertFile, s.server.KeyFile, clientCA,
		auth.HashToken(s.tokens["ci"]), auth.HashToken(s.tokens["readonly"]), auth.HashToken(s.tokens["workers"]), certPrincipal)
	path := filepath.Join(s.dir, "server.json5")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// tokenFile writes principal's token to a file and returns its path.
func (s *accessSetup) tokenFile(t *testing.T, principal string) string {
	t.Helper()
	path := filepath.Join(s.dir, principal+".token")
	if err := os.WriteFile(path, []byte(s.tokens[principal]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// dialSecure is dial over TLS verified with the setup's CA, presenting
// cert (if not nil) and sending token (if not empty).
func (s *accessSetup) dialSecure(t *testing.T, addr, token string, cert *tls.Certificate) *reapiClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.ca.Pool()}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)),
	}
	if token != "" {
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), method, req, reply, cc, o...)
		}), grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), desc, cc, method, o...)
		}))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &reapiClient{
		conn: conn,
		cas:  repb.NewContentAddressableStorageClient(conn),
		bs:   bspb.NewByteStreamClient(conn),
		caps: repb.NewCapabilitiesClient(conn),
		exec: repb.NewExecutionClient(conn),
	}
}

// storedFiles counts the files below the server's CAS and action cache.
func storedFiles(t *testing.T, dataDir string) int {
	t.Helper()
	n := 0
	for _, sub := range []string{"cas", "ac"} {
		filepath.WalkDir(filepath.Join(dataDir, sub), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				n++
			}
			return nil
		})
	}
	return n
}

// secureExecutionFlags are remoteExecutionFlags over TLS verified with the
// setup's CA, plus extra.
func (s *accessSetup) secureExecutionFlags(addr string, extra ...string) []string {
	flags := remoteExecutionFlags(addr)
	flags[0] = "--remote_executor=grpcs://" + addr
	return append(append(flags, "--tls_certificate="+s.ca.CertFile), extra...)
}

// debianTCNative is Debian's netty-tcnative JNI library
// (libnetty-tcnative-jni).
const debianTCNative = "/usr/lib/x86_64-linux-gnu/jni/libnetty-tcnative.so"

// enableTLS lets Debian's Bazel 4.2.3 use grpcs://: its bundled Netty
// cannot negotiate ALPN with Java 17's own TLS and needs OpenSSL through
// netty-tcnative, which it loads only as "libnetty_tcnative.so" from
// java.library.path, and only from a file of that name (the library checks
// its own path), so a copy is made.
func enableTLS(t *testing.T, b *bazelRunner) {
	t.Helper()
	data, err := os.ReadFile(debianTCNative)
	if err != nil {
		t.Fatalf("Bazel needs netty-tcnative for TLS; run scripts/install-test-deps.sh (Debian's libnetty-tcnative-jni): %v", err)
	}
	dir := filepath.Join(b.root, "jni")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "libnetty_tcnative.so"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	b.extraStartup = append(b.extraStartup, "--host_jvm_args=-Djava.library.path="+dir)
}

func bearerHeader(token string) string { return "--remote_header=authorization=Bearer " + token }

// TestBazelAccessTLSToken deploys `hearth serve` with TLS and tokens and
// builds the workspace with Bazel 4.2.3: without a token the build fails
// UNAUTHENTICATED and nothing is stored; with the read-only token it fails
// PERMISSION_DENIED at the first upload and nothing is stored; with the CI
// token it builds remotely (so the embedded executor works with auth on);
// then, from a clean output tree, the read-only token gets every action
// from the cache. The read-only token cannot execute either.
func TestBazelAccessTLSToken(t *testing.T) {
	s := newAccessSetup(t)
	p := startServe(t, t.TempDir(), "--config-server", s.writeConfig(t, false))
	if !strings.Contains(p.log.String(), "tls=true") || !strings.Contains(p.log.String(), "auth=true") {
		t.Fatalf("the server does not say it serves TLS with auth:\n%s", p.log.tail(5))
	}
	b := newBazel(t)
	enableTLS(t, b)
	before := storedFiles(t, p.DataDir)

	out, err := b.runErr("build", s.secureExecutionFlags(p.GRPCAddr, "//...")...)
	if err == nil || !strings.Contains(out, "UNAUTHENTICATED") {
		t.Fatalf("a build without a token: %v, want a failure saying UNAUTHENTICATED\n%s", err, tailLines(out, 30))
	}
	if n := storedFiles(t, p.DataDir); n != before {
		t.Errorf("the unauthenticated build stored %d files", n-before)
	}

	out, err = b.runErr("build", s.secureExecutionFlags(p.GRPCAddr, bearerHeader(s.tokens["readonly"]), "//...")...)
	if err == nil || !strings.Contains(out, "PERMISSION_DENIED") || !strings.Contains(out, "write") {
		t.Fatalf("a build with the read-only token: %v, want a failure saying PERMISSION_DENIED for the write right\n%s", err, tailLines(out, 30))
	}
	if n := storedFiles(t, p.DataDir); n != before {
		t.Errorf("the read-only build stored %d files", n-before)
	}

	execLog := filepath.Join(b.root, "ci.exec.json")
	out = b.run("build", s.secureExecutionFlags(p.GRPCAddr, bearerHeader(s.tokens["ci"]), "--execution_log_json_file="+execLog, "//...")...)
	for _, pr := range remoteProblems(out) {
		t.Errorf("CI build: %s", pr)
	}
	spawns := mustReadExecutionLog(t, execLog)
	for _, sp := range spawns {
		if sp.Runner != "remote" || sp.RemoteCacheHit || sp.Status != "" {
			t.Errorf("CI build: not executed remotely with success: %s", sp)
		}
	}
	if len(spawns) == 0 {
		t.Fatal("the CI build ran no spawns")
	}

	b.run("clean")
	execLog = filepath.Join(b.root, "readonly.exec.json")
	out = b.run("build", s.secureExecutionFlags(p.GRPCAddr, bearerHeader(s.tokens["readonly"]), "--execution_log_json_file="+execLog, "//...")...)
	for _, pr := range remoteProblems(out) {
		t.Errorf("read-only build: %s", pr)
	}
	hits := mustReadExecutionLog(t, execLog)
	for _, sp := range hits {
		if !sp.RemoteCacheHit {
			t.Errorf("read-only build: not a remote cache hit: %s", sp)
		}
	}
	t.Logf("CI build: %d spawns executed remotely; read-only build: %d cache hits", len(spawns), len(hits))

	// The read-only token cannot execute even an action whose blobs are
	// all present, nor upload.
	ci := s.dialSecure(t, p.GRPCAddr, s.tokens["ci"], nil)
	ro := s.dialSecure(t, p.GRPCAddr, s.tokens["readonly"], nil)
	a := actionSpec{args: []string{"/bin/sh", "-c", "echo hi > out"}, outputPaths: []string{"out"}}.build(t)
	ci.upload(t, a)
	_, err = ro.execute(t.Context(), a.action.digest)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `"execute" right on instance ""`) {
		t.Errorf("Execute with the read-only token: %v, want PERMISSION_DENIED naming the execute right and the instance", err)
	}
	if err := ro.byteStreamWrite(t.Context(), newTestBlob([]byte("from the read-only token")), 1<<20); status.Code(err) != codes.PermissionDenied {
		t.Errorf("ByteStream.Write with the read-only token: %v, want PERMISSION_DENIED", err)
	}
	if resp, err := ci.execute(t.Context(), a.action.digest); err != nil || resp.GetResult().GetExitCode() != 0 {
		t.Errorf("Execute with the CI token: %v, %v", resp, err)
	}
}

// TestBazelAccessMTLS builds the workspace remotely with Bazel presenting a
// client certificate mapped to a principal, on a server that requires one;
// a client without a certificate does not get past the handshake.
func TestBazelAccessMTLS(t *testing.T) {
	s := newAccessSetup(t)
	p := startServe(t, t.TempDir(), "--config-server", s.writeConfig(t, true))
	if !strings.Contains(p.log.String(), "mtls=true") {
		t.Fatalf("the server does not say it requires client certificates:\n%s", p.log.tail(5))
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := s.dialSecure(t, p.GRPCAddr, s.tokens["ci"], nil).caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("GetCapabilities without a client certificate: %v, want UNAVAILABLE (handshake refused)", err)
	}
	if _, err := s.dialSecure(t, p.GRPCAddr, "", &s.client.TLS).caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Errorf("GetCapabilities with the client certificate: %v", err)
	}

	b := newBazel(t)
	enableTLS(t, b)
	execLog := filepath.Join(b.root, "mtls.exec.json")
	out := b.run("build", s.secureExecutionFlags(p.GRPCAddr,
		"--tls_client_certificate="+s.client.CertFile, "--tls_client_key="+s.client.KeyFile,
		"--execution_log_json_file="+execLog, "//...")...)
	for _, pr := range remoteProblems(out) {
		t.Errorf("mTLS build: %s", pr)
	}
	spawns := mustReadExecutionLog(t, execLog)
	for _, sp := range spawns {
		if sp.Runner != "remote" || sp.Status != "" {
			t.Errorf("mTLS build: not executed remotely with success: %s", sp)
		}
	}
	t.Logf("mTLS build: %d spawns executed remotely", len(spawns))
}

// launchSecureWorker starts `hearth worker` with one executor, name, that
// connects to srv over TLS with the token of principal.
func launchSecureWorker(t *testing.T, s *accessSetup, srv *hearthProcess, name, principal string) *hearthProcess {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`{
  workers: [{
    local: {
      name: %q,
      worker_api_endpoint: {uri: %q, tls_config: {ca_file: %q}, token_file: %q},
      work_directory: %q,
      max_inflight_tasks: 1,
    },
  }],
}
`, name, "grpcs://"+srv.GRPCAddr, s.ca.CertFile, s.tokenFile(t, principal), filepath.Join(dir, "work"))
	path := filepath.Join(dir, "worker.json5")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return launchHearth(t, dir, nil, "worker", "--config", path)
}

// TestWorkerAccessToken: on a `hearth server` with auth, a worker holding a
// client token is refused the worker API (and never registers), while a
// worker with the executor token registers and runs an action.
func TestWorkerAccessToken(t *testing.T) {
	s := newAccessSetup(t)
	srv := startServer(t, "server", t.TempDir(), nil, "--config-server", s.writeConfig(t, false))

	impostor := launchSecureWorker(t, s, srv, "impostor", "ci")
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	if _, err := impostor.log.waitFor(ctx, impostor.done, `lacks the \"executor\" right`); err != nil {
		t.Fatalf("the worker with a client token was not told it lacks the executor right: %v\n%s", err, impostor.log.tail(20))
	}
	impostor.stop(syscall.SIGTERM)
	if line, ok := srv.log.find(`msg="executor connected" executor=impostor`); ok {
		t.Fatalf("a client token registered an executor: %s", line)
	}

	launchSecureWorker(t, s, srv, "w1", "workers")
	if _, err := srv.log.waitFor(ctx, srv.done, `msg="executor connected" executor=w1 `); err != nil {
		t.Fatalf("the worker with the executor token did not connect: %v", err)
	}
	ci := s.dialSecure(t, srv.GRPCAddr, s.tokens["ci"], nil)
	a := actionSpec{args: []string{"/bin/sh", "-c", "echo remote > out"}, outputPaths: []string{"out"}}.build(t)
	ci.upload(t, a)
	resp, err := ci.execute(t.Context(), a.action.digest)
	if err != nil || resp.GetResult().GetExitCode() != 0 || len(resp.GetResult().GetOutputFiles()) != 1 {
		t.Fatalf("Execute through the worker: %v, %v", resp, err)
	}
	if w := resp.GetResult().GetExecutionMetadata().GetWorker(); !strings.Contains(w, "w1") {
		t.Errorf("the action ran on %q, want w1", w)
	}
}

// TestPlaintextRefusedOffLoopback: `hearth server` will not listen in
// plaintext on a non-loopback address without --insecure, and says why.
// (The check comes before the listener is opened, so nothing binds off
// loopback; --insecure is not tried, since it would.)
func TestPlaintextRefusedOffLoopback(t *testing.T) {
	p := launchHearth(t, t.TempDir(), nil, "server", "--listen", "0.0.0.0:0", "--http", "", "--data", t.TempDir())
	p.waitExit(1)
	if out := p.log.String(); !strings.Contains(out, "refusing to serve gRPC in plaintext on 0.0.0.0:0") || !strings.Contains(out, "--insecure") {
		t.Errorf("the refusal does not say what and why:\n%s", out)
	}
}

// TestTLSReloadOnSIGHUP: `hearth serve --tls-cert --tls-key` serves the
// files' certificate, and after the files are replaced and the server gets
// SIGHUP, new connections get the new certificate without a restart.
func TestTLSReloadOnSIGHUP(t *testing.T) {
	s := newAccessSetup(t)
	next, err := s.ca.Server("server-next")
	if err != nil {
		t.Fatal(err)
	}
	p := startServe(t, t.TempDir(), "--tls-cert", s.server.CertFile, "--tls-key", s.server.KeyFile)
	served := func() (string, error) {
		c, err := tls.Dial("tcp", p.GRPCAddr, &tls.Config{RootCAs: s.ca.Pool(), NextProtos: []string{"h2"}})
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
	}
	if cn, err := served(); err != nil || cn != "server" {
		t.Fatalf("served certificate %q (%v), want server", cn, err)
	}
	for _, f := range [][2]string{{next.CertFile, s.server.CertFile}, {next.KeyFile, s.server.KeyFile}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		cn, err := served()
		if err == nil && cn == "server-next" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5s after SIGHUP the server still serves %q (%v)", cn, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The embedded executor (in-process, no handshake) still works.
	ci := s.dialSecure(t, p.GRPCAddr, "", nil)
	a := actionSpec{args: []string{"/bin/sh", "-c", "echo after reload > out"}, outputPaths: []string{"out"}}.build(t)
	ci.upload(t, a)
	if resp, err := ci.execute(t.Context(), a.action.digest); err != nil || resp.GetResult().GetExitCode() != 0 {
		t.Fatalf("Execute after the reload: %v, %v", resp, err)
	}
}

// TestHearthRunCredentials: `hearth run --remote=grpcs://…` with --tls-ca
// and --token-file runs an action against a server with TLS and auth;
// without the token it fails, saying the call was unauthenticated.
func TestHearthRunCredentials(t *testing.T) {
	s := newAccessSetup(t)
	p := startServe(t, t.TempDir(), "--config-server", s.writeConfig(t, false))
	ci := s.dialSecure(t, p.GRPCAddr, s.tokens["ci"], nil)
	a := actionSpec{args: []string{"/bin/sh", "-c", "echo ran > out"}, outputPaths: []string{"out"}}.build(t)
	ci.upload(t, a)
	remote := "--remote=grpcs://" + p.GRPCAddr
	r := hearthRun(t, t.TempDir(), p.GRPCAddr, a, remote, "--tls-ca="+s.ca.CertFile, "--token-file="+s.tokenFile(t, "ci"))
	if r.exitCode != 0 || r.result.GetExitCode() != 0 || len(r.result.GetOutputFiles()) != 1 {
		t.Fatalf("hearth run with credentials: exit %d, result %v\n%s", r.exitCode, r.result, r.output)
	}
	r = hearthRun(t, t.TempDir(), p.GRPCAddr, a, remote, "--tls-ca="+s.ca.CertFile)
	if r.exitCode == 0 || !strings.Contains(strings.ToLower(r.output), "unauthenticated") {
		t.Fatalf("hearth run without a token: exit %d, want a failure saying unauthenticated\n%s", r.exitCode, r.output)
	}
}
