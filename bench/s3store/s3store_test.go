package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/redistest"
	"github.com/hearth-build/hearth/internal/s3test"
)

const (
	blobSize       = 256 << 20
	findDigests    = 10_000
	findClients    = 4
	findDuration   = 3 * time.Second
	prefix         = "bench"
	warmBlobSize   = 64
	uploadBatch    = 500
	uploadParallel = 8
)

func BenchmarkS3Store(b *testing.B) {
	ctx := context.Background()
	s3 := s3test.Start(b)
	rs := redistest.Start(b)
	addr, dataDir := startHearth(b, s3, rs.URL(0))
	conn, err := casclient.Dial(ctx, "grpc://"+addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	store := casclient.NewStore(conn, "")
	mc := s3.Client()
	meter := newCPUMeter()
	// timed runs f and logs the CPU each process used meanwhile.
	timed := func(b *testing.B, what string, f func() error) time.Duration {
		b.Helper()
		before := meter.sample()
		d := timedRun(b, f)
		b.Logf("%s: %v, CPU: %s", what, d.Round(time.Millisecond), meter.sample().since(before))
		return d
	}

	var rows []string
	row := func(format string, args ...any) { rows = append(rows, fmt.Sprintf(format, args...)) }
	for round := range b.N {
		data := make([]byte, blobSize)
		if _, err := rand.Read(data); err != nil {
			b.Fatal(err)
		}
		d := digest.Compute(digest.SHA256, data)

		// Write: minio-go PutObject of the bytes vs ByteStream.Write through
		// hearth (fast disk tier + S3 multipart, S3 acknowledged first).
		direct := timed(b, "minio-go PutObject", func() error {
			_, err := mc.PutObject(ctx, s3.Bucket, fmt.Sprintf("direct/%d-%s", round, d.Hash), bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
			return err
		})
		through := timed(b, "ByteStream write", func() error {
			w, err := store.Create(ctx, d)
			if err != nil {
				return err
			}
			defer w.Close()
			if _, err := w.Write(data); err != nil {
				return err
			}
			return w.Commit()
		})
		row("| ByteStream 256 MiB write | MiB/s | %.0f | minio-go PutObject: %.0f | %.2f× | ≥ 0.7× |", mibps(through), mibps(direct), direct.Seconds()/through.Seconds())

		// Cold read: a blob only in the bucket (put there directly under
		// hearth's key), so hearth's read goes to S3 and fills its disk.
		cold := make([]byte, blobSize)
		if _, err := rand.Read(cold); err != nil {
			b.Fatal(err)
		}
		cd := digest.Compute(digest.SHA256, cold)
		key := fmt.Sprintf("%s/sha256/%s-%d", prefix, cd.Hash, cd.Size)
		if _, err := mc.PutObject(ctx, s3.Bucket, key, bytes.NewReader(cold), int64(len(cold)), minio.PutObjectOptions{}); err != nil {
			b.Fatal(err)
		}
		directRead := timed(b, "minio-go GetObject", func() error {
			o, err := mc.GetObject(ctx, s3.Bucket, key, minio.GetObjectOptions{})
			if err != nil {
				return err
			}
			defer o.Close()
			return copyN(o, blobSize)
		})
		coldRead := timed(b, "ByteStream cold read", func() error { return readVia(ctx, store, cd) })
		// A large cold read's fill is usually finished in the background
		// (it fell behind the read): a read right after it still misses
		// the fast tier and streams from S3 again, beside that fill.
		during := timed(b, "ByteStream read during the background fill", func() error { return readVia(ctx, store, cd) })
		wait := time.Now()
		if err := waitForBlob(dataDir, cd, 60*time.Second); err != nil {
			b.Fatal(err)
		}
		b.Logf("the fast tier had the blob %v after the second read", time.Since(wait).Round(time.Millisecond))
		warmRead := timed(b, "ByteStream warm read", func() error { return readVia(ctx, store, cd) })
		row("| ByteStream 256 MiB read, cold (from S3) | MiB/s | %.0f | minio-go GetObject: %.0f | %.2f× | ≥ 0.7× |", mibps(coldRead), mibps(directRead), directRead.Seconds()/coldRead.Seconds())
		row("| the same blob again at once (S3, beside the background fill) | MiB/s | %.0f | minio-go GetObject: %.0f | %.2f× |  |", mibps(during), mibps(directRead), directRead.Seconds()/during.Seconds())
		row("| ByteStream 256 MiB read, warm (fast tier, once filled) | MiB/s | %.0f | minio-go GetObject: %.0f | %.2f× |  |", mibps(warmRead), mibps(directRead), directRead.Seconds()/warmRead.Seconds())
	}

	// FindMissingBlobs of 10,000 digests the fast tier holds.
	ds := uploadSmall(b, ctx, conn, findDigests)
	var calls atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range findClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < findDuration {
				missing, err := store.FindMissing(ctx, ds)
				if err != nil || len(missing) != 0 {
					b.Errorf("FindMissing: %d missing, %v", len(missing), err)
					return
				}
				calls.Add(1)
			}
		}()
	}
	wg.Wait()
	rate := float64(calls.Load()*findDigests) / time.Since(start).Seconds()
	row("| FindMissingBlobs ×10,000, warm fast tier, %d clients | digests/s | %.0f |  |  | ≥ 300,000 |", findClients, rate)
	b.ReportMetric(rate, "digests/s")
	for _, r := range rows {
		b.Log(r)
	}
}

func timedRun(b *testing.B, f func() error) time.Duration {
	b.Helper()
	start := time.Now()
	if err := f(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func mibps(d time.Duration) float64 { return float64(blobSize) / (1 << 20) / d.Seconds() }

func copyN(r io.Reader, n int64) error {
	got, err := io.Copy(io.Discard, r)
	if err == nil && got != n {
		err = fmt.Errorf("read %d bytes, want %d", got, n)
	}
	return err
}

func readVia(ctx context.Context, s *casclient.Store, d digest.Digest) error {
	r, err := s.Open(ctx, d, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	return copyN(r, d.Size)
}

// uploadSmall stores n distinct small blobs through hearth (so both tiers
// hold them) and returns their digests.
func uploadSmall(b *testing.B, ctx context.Context, conn grpc.ClientConnInterface, n int) []digest.Digest {
	b.Helper()
	c := repb.NewContentAddressableStorageClient(conn)
	ds := make([]digest.Digest, n)
	reqs := make(chan *repb.BatchUpdateBlobsRequest)
	var wg sync.WaitGroup
	for range uploadParallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := range reqs {
				resp, err := c.BatchUpdateBlobs(ctx, req)
				if err != nil {
					b.Errorf("BatchUpdateBlobs: %v", err)
					continue
				}
				for _, r := range resp.Responses {
					if r.Status.GetCode() != 0 {
						b.Errorf("BatchUpdateBlobs: %v", r.Status)
					}
				}
			}
		}()
	}
	req := &repb.BatchUpdateBlobsRequest{}
	for i := range n {
		data := make([]byte, warmBlobSize)
		if _, err := rand.Read(data); err != nil {
			b.Fatal(err)
		}
		ds[i] = digest.Compute(digest.SHA256, data)
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: ds[i].Proto(), Data: data})
		if len(req.Requests) == uploadBatch || i == n-1 {
			reqs <- req
			req = &repb.BatchUpdateBlobsRequest{}
		}
	}
	close(reqs)
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return ds
}

// waitForBlob waits until hearth's disk tier under dataDir holds d: its
// file ({hash}-{size}, somewhere under the tier's shard directories)
// appears only once the fill is committed (renamed into place after its
// fsync).
func waitForBlob(dataDir string, d digest.Digest, timeout time.Duration) error {
	name := fmt.Sprintf("%s-%d", d.Hash, d.Size)
	deadline := time.Now().Add(timeout)
	for {
		found := false
		filepath.WalkDir(dataDir, func(_ string, e os.DirEntry, err error) error {
			if err == nil && e.Name() == name {
				found = true
				return filepath.SkipAll
			}
			return nil
		})
		if found {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the fast tier did not get %s within %v", d, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startHearth builds cmd/hearth (no -race) and starts `hearth server` with
// the stores block on s3 and Redis; it returns the gRPC address and the
// server's data directory.
func startHearth(b testing.TB, s3 *s3test.Server, redisURL string) (string, string) {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "hearth")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/hearth-build/hearth/cmd/hearth").CombinedOutput(); err != nil {
		b.Fatalf("building hearth: %v\n%s", err, out)
	}
	cfg := fmt.Sprintf(`{stores: {cas: {
  fast_slow: {
    fast: {filesystem: {max_bytes: "2GiB"}},
    slow: {s3: {endpoint: "http://%s", bucket: %q, prefix: %q, access_key_id: %q, secret_access_key: %q}},
  },
  index: {redis: {url: %q}},
}}}`, s3.Endpoint, s3.Bucket, prefix, s3test.AccessKey, s3test.SecretKey, redisURL)
	cfgPath := filepath.Join(dir, "server.json5")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "server", "--listen", addr, "--http", "", "--data", filepath.Join(dir, "data"), "--config-server", cfgPath)
	logf, err := os.Create(filepath.Join(dir, "hearth.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	ctx := context.Background()
	conn, err := casclient.Dial(ctx, "grpc://"+addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	caps := repb.NewCapabilitiesClient(conn)
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := caps.GetCapabilities(cctx, &repb.GetCapabilitiesRequest{})
		cancel()
		if err == nil {
			return addr, filepath.Join(dir, "data")
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "hearth.log"))
			b.Fatalf("hearth server did not serve within 60s: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
