package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/hearth-build/hearth/internal/digest"
)

// Scenario batchupdate: many small blobs uploaded with BatchUpdateBlobs,
// packed up to the server's advertised max_batch_total_size_bytes, against
// writing the same files with plain Go loops. The server makes every blob
// durable (fsync the file, rename, fsync the directory) before answering, so
// the loops come in three kinds: no fsync at all, the server's durable
// sequence one file at a time, and that sequence on as many goroutines as
// the server writes blobs of one batch at once.

// serverBatchParallelism mirrors internal/reapi's batchParallelism: how many
// blobs of one BatchUpdateBlobs call the server stores at once.
const serverBatchParallelism = 8

type blob struct {
	d    digest.Digest
	data []byte
}

func runBatchUpdate(ctx context.Context, b *bench) (*result, error) {
	o := b.opts
	dir, err := b.scratch("batchupdate")
	if err != nil {
		return nil, err
	}
	blobs := randomBlobs(o.batchBlobs, int(o.batchBlobSize))
	loops := []batchLoop{
		{"Go loop, no fsync", 1, false},
		{"Go loop, write+fsync+rename+fsync dir", 1, true},
		{fmt.Sprintf("same on %d goroutines", serverBatchParallelism), serverBatchParallelism, true},
	}
	cmps := make([]comparison, len(loops))
	var last batchSample
	for round := range o.rounds {
		b.logger.Info("batchupdate: round", "round", round+1)
		roundDir := filepath.Join(dir, fmt.Sprintf("round%d", round))
		if last, err = batchUpdateRound(ctx, b, roundDir, blobs, loops); err != nil {
			return nil, err
		}
		for i := range loops {
			cmps[i].add(last.rate, last.loopRates[i])
		}
		if err := os.RemoveAll(roundDir); err != nil {
			return nil, err
		}
	}
	r := &result{}
	name := fmt.Sprintf("BatchUpdateBlobs %s × %s", formatCount(float64(len(blobs))), formatBytes(int64(o.batchBlobSize)))
	for i, l := range loops {
		r.add(cmps[i].row(name, "blobs/s", l.name, countFormat))
	}
	r.note("%d calls of up to %s (the advertised max_batch_total_size_bytes), %d at a time, to a new server per round; the server fsyncs every blob and its directory before answering and stores up to %d blobs of a call at once",
		last.calls, formatBytes(last.limit), o.batchClients, serverBatchParallelism)
	r.note("the loops write the same bytes to files named by hash in one directory; the durable loops write a temp file, fsync it, rename it and fsync the directory, as the server does")
	return r, nil
}

// batchLoop is one of the baselines.
type batchLoop struct {
	name    string
	workers int
	durable bool
}

// batchSample is one round's outcome.
type batchSample struct {
	loopRates []float64 // blobs/s of each loop
	rate      float64   // blobs/s of the server
	calls     int       // BatchUpdateBlobs calls made
	limit     int64     // the server's max_batch_total_size_bytes
}

// batchUpdateRound measures each loop and then the server (data in dir).
func batchUpdateRound(ctx context.Context, b *bench, dir string, blobs []blob, loops []batchLoop) (batchSample, error) {
	var bs batchSample
	for i, l := range loops {
		out := filepath.Join(dir, fmt.Sprintf("loop%d", i))
		unix.Sync()
		start := time.Now()
		if err := writeFilesLoop(ctx, out, blobs, l.workers, l.durable); err != nil {
			return bs, err
		}
		bs.loopRates = append(bs.loopRates, perSecond(float64(len(blobs)), time.Since(start)))
	}

	srv, err := b.startHearth(ctx, filepath.Join(dir, "data"), filepath.Join(b.work, "batchupdate", filepath.Base(dir)+"-hearth.log"))
	if err != nil {
		return bs, err
	}
	defer srv.kill()
	conn, err := srv.dial(ctx)
	if err != nil {
		return bs, err
	}
	defer conn.Close()
	caps, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
	if err != nil {
		return bs, err
	}
	bs.limit = caps.GetCacheCapabilities().GetMaxBatchTotalSizeBytes()
	reqs := packBatches(blobs, bs.limit)
	bs.calls = len(reqs)
	client := repb.NewContentAddressableStorageClient(conn)
	unix.Sync()
	var next atomic.Int64
	stopProfile := b.profile(srv, "batchupdate-"+filepath.Base(dir))
	start := time.Now()
	err = parallel(ctx, b.opts.batchClients, func(ctx context.Context, _ int) error {
		for {
			i := int(next.Add(1) - 1)
			if i >= len(reqs) {
				return nil
			}
			resp, err := client.BatchUpdateBlobs(ctx, reqs[i])
			if err != nil {
				return fmt.Errorf("BatchUpdateBlobs of %d blobs: %w", len(reqs[i].GetRequests()), err)
			}
			for _, r := range resp.GetResponses() {
				if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
					return fmt.Errorf("BatchUpdateBlobs: blob %s: %s %s", r.GetDigest().GetHash(), c, r.GetStatus().GetMessage())
				}
			}
		}
	})
	took := time.Since(start)
	stopProfile()
	if err != nil {
		return bs, err
	}
	bs.rate = perSecond(float64(len(blobs)), took)
	return bs, srv.stop()
}

// randomBlobs returns n distinct incompressible blobs of size bytes.
func randomBlobs(n, size int) []blob {
	rng := rand.NewChaCha8([32]byte{3})
	blobs := make([]blob, n)
	for i := range blobs {
		data := make([]byte, size)
		rng.Read(data)
		blobs[i] = blob{d: digest.Compute(digest.SHA256, data), data: data}
	}
	return blobs
}

// packBatches groups blobs into BatchUpdateBlobs requests whose data adds up
// to at most limit bytes.
func packBatches(blobs []blob, limit int64) []*repb.BatchUpdateBlobsRequest {
	var (
		out  []*repb.BatchUpdateBlobsRequest
		cur  *repb.BatchUpdateBlobsRequest
		size int64
	)
	for _, bl := range blobs {
		if cur == nil || size+bl.d.Size > limit {
			cur = &repb.BatchUpdateBlobsRequest{DigestFunction: repb.DigestFunction_SHA256}
			out = append(out, cur)
			size = 0
		}
		cur.Requests = append(cur.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: bl.d.Proto(), Data: bl.data})
		size += bl.d.Size
	}
	return out
}

// writeFilesLoop writes each blob to dir/{hash} on workers goroutines. A
// durable write goes through a temp file that is fsynced and renamed, then
// the directory is fsynced.
func writeFilesLoop(ctx context.Context, dir string, blobs []blob, workers int, durable bool) error {
	tmpDir := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return err
	}
	var next atomic.Int64
	return parallel(ctx, workers, func(ctx context.Context, _ int) error {
		for ctx.Err() == nil {
			i := int(next.Add(1) - 1)
			if i >= len(blobs) {
				return nil
			}
			path := filepath.Join(dir, blobs[i].d.Hash)
			if !durable {
				if err := os.WriteFile(path, blobs[i].data, 0o444); err != nil {
					return err
				}
				continue
			}
			if err := writeDurably(tmpDir, path, blobs[i].data); err != nil {
				return err
			}
		}
		return ctx.Err()
	})
}

func writeDurably(tmpDir, path string, data []byte) error {
	f, err := os.CreateTemp(tmpDir, "w-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	return fsyncPath(filepath.Dir(path))
}
