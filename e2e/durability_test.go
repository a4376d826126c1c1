package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// randomBlobs returns n distinct blobs: every fourth up to 1 MiB, the rest up
// to 64 KiB, which keeps the total (and the fsync cost) near 30 MiB.
func randomBlobs(rng *rand.Rand, n int) []testBlob {
	blobs := make([]testBlob, n)
	for i := range blobs {
		limit := 64 << 10
		if i%4 == 0 {
			limit = 1 << 20
		}
		data := make([]byte, 16+rng.IntN(limit-16))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		// Distinct by construction, however small.
		binary.BigEndian.PutUint64(data, uint64(i))
		blobs[i] = newTestBlob(data)
	}
	return blobs
}

func newRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)
	return rand.New(rand.NewPCG(seed, seed))
}

// uploadAll uploads blobs concurrently: even-indexed ones in
// BatchUpdateBlobs calls within the advertised batch limit, odd-indexed ones
// by ByteStream. It returns once every upload is acknowledged.
func uploadAll(ctx context.Context, c *reapiClient, blobs []testBlob) error {
	maxBatch, err := c.maxBatchBytes(ctx)
	if err != nil {
		return err
	}
	// Room for the per-blob digest and framing of the request.
	budget := maxBatch - 64<<10
	var jobs []func() error
	var batch []testBlob
	var batchBytes int64
	flush := func() {
		if len(batch) > 0 {
			b := batch
			jobs = append(jobs, func() error { return c.batchUpload(ctx, b) })
		}
		batch, batchBytes = nil, 0
	}
	for i, b := range blobs {
		if i%2 == 1 {
			jobs = append(jobs, func() error { return c.byteStreamWrite(ctx, b, 64<<10) })
			continue
		}
		if batchBytes+b.digest.SizeBytes > budget {
			flush()
		}
		batch = append(batch, b)
		batchBytes += b.digest.SizeBytes
	}
	flush()

	const workers = 4
	work := make(chan func() error)
	errs := make(chan error, len(jobs))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for job := range work {
				errs <- job()
			}
		})
	}
	for _, job := range jobs {
		work <- job
	}
	close(work)
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// verifyAll reads every blob back, alternating ByteStream and
// BatchReadBlobs, and compares the bytes.
func verifyAll(ctx context.Context, t *testing.T, c *reapiClient, blobs []testBlob) {
	t.Helper()
	var viaBatch []*repb.Digest
	want := map[string][]byte{}
	for i, b := range blobs {
		want[b.digest.Hash] = b.data
		if i%2 == 0 {
			got, err := c.byteStreamRead(ctx, b.digest)
			if err != nil {
				t.Errorf("blob %d: %v", i, err)
			} else if string(got) != string(b.data) {
				t.Errorf("blob %d %s: ByteStream.Read returned %d bytes that differ from the %d uploaded", i, b, len(got), len(b.data))
			}
			continue
		}
		viaBatch = append(viaBatch, b.digest)
		// Keep each response well under the 4 MiB message default.
		if len(viaBatch) == 8 || i == len(blobs)-1 {
			got, err := c.batchRead(ctx, viaBatch)
			if err != nil {
				t.Error(err)
			}
			for h, data := range got {
				if string(data) != string(want[h]) {
					t.Errorf("blob %s: BatchReadBlobs returned %d bytes that differ from the %d uploaded", h, len(data), len(want[h]))
				}
			}
			viaBatch = nil
		}
	}
}

// TestCrashDurability checks that every acknowledged upload survives a
// SIGKILL of the server, and that uploads cut off by the crash never become
// visible, even partially.
func TestCrashDurability(t *testing.T) {
	ctx := t.Context()
	data := t.TempDir()
	rng := newRand(t)
	blobs := randomBlobs(rng, 200)
	unfinished := randomBlobs(rng, 3)
	for i := range unfinished {
		// Distinct from blobs, whose first 8 bytes are their index.
		unfinished[i].data[0] ^= 0xff
		unfinished[i] = newTestBlob(unfinished[i].data)
	}

	p := startServe(t, data)
	c := dial(t, p.GRPCAddr)
	// Uploads in flight at the crash: half of each blob sent, never finished.
	for _, b := range unfinished {
		if _, err := c.startWrite(ctx, uploadResource(b), b.data[:len(b.data)/2], 16<<10, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := uploadAll(ctx, c, blobs); err != nil {
		t.Fatalf("uploading: %v", err)
	}
	p.kill()

	p2 := startServe(t, data)
	if line, ok := p2.log.find(`msg="CAS index loaded"`); !ok {
		t.Errorf("restarted server logged no CAS index line")
	} else if got := parseLogfmt(line)["blobs"]; got != strconv.Itoa(len(blobs)) {
		t.Errorf("after the crash the CAS index holds %s blobs, want the %d acknowledged ones (temp files of unfinished uploads must not count): %s", got, len(blobs), line)
	}
	c2 := dial(t, p2.GRPCAddr)
	missing, err := c2.findMissing(ctx, append(digestsOf(blobs), digestsOf(unfinished)...))
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range blobs {
		if missing[b.digest.Hash] {
			t.Errorf("acknowledged blob %d %s is missing after the crash", i, b)
		}
	}
	for _, b := range unfinished {
		if !missing[b.digest.Hash] {
			t.Errorf("unfinished upload %s is visible after the crash", b)
		}
		if _, err := c2.byteStreamRead(ctx, b.digest); status.Code(err) != codes.NotFound {
			t.Errorf("reading unfinished upload %s: got %v, want NOT_FOUND", b, err)
		}
	}
	verifyAll(ctx, t, c2, blobs)

	// A leftover of an unfinished upload must not get in the way of
	// uploading the same blob again.
	if err := c2.byteStreamWrite(ctx, unfinished[0], 64<<10); err != nil {
		t.Fatalf("re-uploading after the crash: %v", err)
	}
	verifyAll(ctx, t, c2, unfinished[:1])
}

// TestGracefulShutdown cuts ByteStream writes with SIGTERM: a write that the
// server acknowledged must be readable after a restart, a write it did not
// finish must not be visible at all.
func TestGracefulShutdown(t *testing.T) {
	ctx := t.Context()
	data := t.TempDir()
	rng := newRand(t)
	blobs := randomBlobs(rng, 2)
	stalled, finishing := blobs[0], blobs[1]
	half := func(b testBlob) int { return len(b.data) / 2 }

	p := startServe(t, data)
	c := dial(t, p.GRPCAddr)
	stalledRes, finishingRes := uploadResource(stalled), uploadResource(finishing)
	stalledW, err := c.startWrite(ctx, stalledRes, stalled.data[:half(stalled)], 16<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	finishingW, err := c.startWrite(ctx, finishingRes, finishing.data[:half(finishing)], 16<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	// Both halves must have reached the server before the signal.
	waitCommitted(ctx, t, c, stalledRes, int64(half(stalled)))
	waitCommitted(ctx, t, c, finishingRes, int64(half(finishing)))

	p.signal(syscall.SIGTERM)
	// The finishing writer completes its stream during the grace period;
	// the stalled one never does and is cut when the grace period ends.
	rest := finishing.data[half(finishing):]
	var ackErr error
	if err := finishingW.Send(&bspb.WriteRequest{WriteOffset: int64(half(finishing)), Data: rest, FinishWrite: true}); err != nil {
		ackErr = fmt.Errorf("sending the rest: %w", err)
	} else if resp, err := finishingW.CloseAndRecv(); err != nil {
		ackErr = err
	} else if resp.CommittedSize != finishing.digest.SizeBytes {
		ackErr = fmt.Errorf("committed_size %d, want %d", resp.CommittedSize, finishing.digest.SizeBytes)
	}
	t.Logf("write finished during shutdown: acknowledged=%v (%v)", ackErr == nil, ackErr)
	p.waitExit(0)
	if _, err := stalledW.CloseAndRecv(); err == nil {
		t.Errorf("the stalled write was acknowledged although it never finished")
	}

	p2 := startServe(t, data)
	c2 := dial(t, p2.GRPCAddr)
	missing, err := c2.findMissing(ctx, digestsOf(blobs))
	if err != nil {
		t.Fatal(err)
	}
	if !missing[stalled.digest.Hash] {
		t.Errorf("the write cut by shutdown is visible after restart")
	}
	if ackErr == nil {
		if missing[finishing.digest.Hash] {
			t.Errorf("the write acknowledged during shutdown is missing after restart")
		} else {
			verifyAll(ctx, t, c2, []testBlob{finishing})
		}
	} else if !missing[finishing.digest.Hash] {
		// Not acknowledged but present is allowed only if it is whole.
		verifyAll(ctx, t, c2, []testBlob{finishing})
	}
}

// waitCommitted polls QueryWriteStatus until the upload has at least n bytes.
func waitCommitted(ctx context.Context, t *testing.T, c *reapiClient, resource string, n int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		resp, err := c.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: resource})
		if err == nil && resp.CommittedSize >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("upload %s never reached %d bytes (last QueryWriteStatus: %v, %v)", resource, n, resp, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestCrashJournalReplay plays what a power loss may do to small uploads
// the server acknowledged through its upload journal and renamed into place
// without fsyncs: after a SIGKILL their blob files are deleted or emptied,
// and the restarted server must store every one again from the journal,
// with its bytes. Larger uploads are fsynced in place and stay untouched.
func TestCrashJournalReplay(t *testing.T) {
	ctx := t.Context()
	data := t.TempDir()
	blobs := randomBlobs(newRand(t), 60)

	p := startServe(t, data)
	if _, err := p.log.waitFor(ctx, p.done, `msg="cas: upload journal ready"`); err != nil {
		t.Fatal(err)
	}
	c := dial(t, p.GRPCAddr)
	if err := uploadAll(ctx, c, blobs); err != nil {
		t.Fatalf("uploading: %v", err)
	}
	p.kill()

	const journalMaxBlob = 256 << 10 // the cas package's limit
	damaged := 0
	for i, b := range blobs {
		if b.digest.SizeBytes > journalMaxBlob {
			continue
		}
		path := filepath.Join(data, "cas", "sha256", b.digest.Hash[:2], fmt.Sprintf("%s-%d", b.digest.Hash, b.digest.SizeBytes))
		var err error
		if i%2 == 0 {
			err = os.Remove(path)
		} else if err = os.Chmod(path, 0o644); err == nil {
			err = os.Truncate(path, 0)
		}
		if err != nil {
			t.Fatalf("damaging blob %d: %v", i, err)
		}
		damaged++
	}
	if damaged < 10 {
		t.Fatalf("only %d of the blobs are small enough to be journaled", damaged)
	}

	p2 := startServe(t, data)
	line, ok := p2.log.find(`msg="cas: disk store opened"`)
	if !ok {
		t.Fatal("the restarted server logged no disk store line")
	}
	if got := parseLogfmt(line)["restored_from_journal"]; got != strconv.Itoa(damaged) {
		t.Errorf("restored_from_journal=%s, want the %d blobs whose files were lost or emptied: %s", got, damaged, line)
	}
	verifyAll(ctx, t, dial(t, p2.GRPCAddr), blobs)
}
