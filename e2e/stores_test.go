package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/s3test"
)

// writeStoresConfig writes a --config-server file putting the CAS on a
// fast/slow pair: a bounded local tier, the test's SeaweedFS bucket, and (if
// redisURL is set) the presence index in the test's Redis. The secret comes
// from the environment, as a deployment would pass it. Each of extra is one
// more top-level setting ("key: value").
func writeStoresConfig(t *testing.T, s3 *s3test.Server, redisURL string, extra ...string) (path string, env []string) {
	t.Helper()
	index := ""
	if redisURL != "" {
		index = fmt.Sprintf(`, index: {redis: {url: %q}}`, redisURL)
	}
	cfg := fmt.Sprintf(`{
  stores: {
    cas: {
      fast_slow: {
        fast: {filesystem: {max_bytes: "256MiB"}},
        slow: {s3: {endpoint: "http://%s", bucket: %q, prefix: "e2e", region: "us-east-1",
                    access_key_id: %q, secret_access_key: "${HEARTH_E2E_S3_SECRET}", retries: 1}},
      }%s,
    },
  },
%s}`, s3.Endpoint, s3.Bucket, s3test.AccessKey, index, extraSettings(extra))
	path = filepath.Join(t.TempDir(), "server.json5")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, []string{"HEARTH_E2E_S3_SECRET=" + s3test.SecretKey}
}

// countObjects counts the bucket's objects under the e2e prefix.
func countObjects(t *testing.T, s3 *s3test.Server) int {
	t.Helper()
	n := 0
	for o := range s3.Client().ListObjects(context.Background(), s3.Bucket, minio.ListObjectsOptions{Prefix: "e2e/", Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("listing the bucket: %v", o.Err)
		}
		n++
	}
	return n
}

// TestBazelS3Store builds and tests the workspace through a server whose CAS
// is the fast/slow pair on S3 with the Redis presence index: outputs equal
// the local build's, and the blobs are in the bucket.
func TestBazelS3Store(t *testing.T) {
	s3 := s3test.Start(t)
	rs := redistest.Start(t)
	b := newBazel(t)
	local := localBaseline(t, b)
	cfg, env := writeStoresConfig(t, s3, rs.URL(0))
	p := startServer(t, "serve", t.TempDir(), env, "--config-server", cfg)
	checkRemoteMatchesLocal(t, b, local, remoteExecutionFlags(p.GRPCAddr)...)
	if n := countObjects(t, s3); n == 0 {
		t.Fatal("the build stored no blob in the bucket")
	}
}

// TestS3StoreSharedAcrossServers: every blob acknowledged by server A reads
// back with the right bytes from server B on the same bucket after A is
// killed with SIGKILL (B's local tier is empty: the bytes come from S3). With
// S3 stopped, what needs it is UNAVAILABLE naming the store; blobs in B's
// local tier are still served.
func TestS3StoreSharedAcrossServers(t *testing.T) {
	ctx := t.Context()
	s3 := s3test.Start(t)
	rs := redistest.Start(t)
	cfg, env := writeStoresConfig(t, s3, rs.URL(0))
	blobs := randomBlobs(newRand(t), 60)

	a := startServer(t, "server", t.TempDir(), env, "--config-server", cfg)
	if err := uploadAll(ctx, dial(t, a.GRPCAddr), blobs); err != nil {
		t.Fatalf("uploading through A: %v", err)
	}
	a.kill()

	bp := startServer(t, "server", t.TempDir(), env, "--config-server", cfg)
	c := dial(t, bp.GRPCAddr)
	missing, err := c.findMissing(ctx, digestsOf(blobs))
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 0 {
		t.Fatalf("server B reports %d of the blobs acknowledged by A missing", len(missing))
	}
	verifyAll(ctx, t, c, blobs)

	s3.Stop()
	// Read back from B's local tier, filled by the reads above.
	verifyAll(ctx, t, c, blobs[:4])
	fresh := randomBlobs(newRand(t), 1)
	fresh[0].data[0] ^= 0xff
	fresh[0] = newTestBlob(fresh[0].data)
	_, err = c.findMissing(ctx, digestsOf(fresh))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `s3 store "cas"`) {
		t.Errorf("FindMissingBlobs needing S3 while it is down: %v, want UNAVAILABLE naming the store", err)
	}
	if err := c.byteStreamWrite(ctx, fresh[0], 64<<10); status.Code(err) != codes.Unavailable {
		t.Errorf("ByteStream.Write while S3 is down: %v, want UNAVAILABLE", err)
	}
	if _, err := c.byteStreamRead(ctx, fresh[0].digest); status.Code(err) == codes.OK {
		t.Errorf("a write refused while S3 was down is readable")
	}
	s3.Start()
	if err := c.byteStreamWrite(ctx, fresh[0], 64<<10); err != nil {
		t.Fatalf("ByteStream.Write after S3 restarted: %v", err)
	}
	verifyAll(ctx, t, c, fresh)
}

func extraSettings(extra []string) string {
	var b strings.Builder
	for _, e := range extra {
		b.WriteString("  " + e + ",\n")
	}
	return b.String()
}

// TestServeExecutesInputsOnlyInS3: `hearth serve`'s embedded executor reads
// an input that only the slow tier holds (uploaded through another server on
// the bucket, so this one's disk tier never saw it). Its file cache used to
// read the disk tier alone and answered such an action with a MISSING
// precondition failure for a blob FindMissingBlobs reported present: the
// same happened to a blob whose fast copy was still being committed.
func TestServeExecutesInputsOnlyInS3(t *testing.T) {
	ctx := t.Context()
	s3 := s3test.Start(t)
	rs := redistest.Start(t)
	cfg, env := writeStoresConfig(t, s3, rs.URL(0))
	a := actionSpec{
		args:        []string{"/bin/sh", "-c", "mkdir -p out && tr a-z A-Z < in/data.txt > out/upper.txt"},
		outputPaths: []string{"out/upper.txt"},
		files:       map[string]string{"in/data.txt": "only in the bucket\n"},
	}.build(t)

	up := startServer(t, "server", t.TempDir(), env, "--config-server", cfg)
	dial(t, up.GRPCAddr).upload(t, a)
	up.kill()

	p := startServer(t, "serve", t.TempDir(), env, "--config-server", cfg)
	c := dial(t, p.GRPCAddr)
	resp, err := c.execute(ctx, a.action.digest)
	if st := outcome(resp, err); st.Code() != codes.OK {
		t.Fatalf("Execute of an action whose inputs are only in S3: %v", st.Err())
	}
	if code := resp.GetResult().GetExitCode(); code != 0 {
		t.Fatalf("exit code %d, stderr %q", code, c.stderrOf(t, resp))
	}
	if got := c.outputFiles(t, resp.GetResult())["out/upper.txt"]; got != "ONLY IN THE BUCKET\n" {
		t.Errorf("out/upper.txt = %q", got)
	}
}
