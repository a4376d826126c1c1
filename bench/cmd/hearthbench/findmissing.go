package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// Scenario findmissing: FindMissingBlobs requests of many digests, half of
// them present, from concurrent clients with a connection each. The
// baseline is the disk store's own FindMissing called in-process on the same
// store with the same digests and concurrency: the ratio is what the gRPC
// edge (transport, proto decoding, validation, the verifying and metrics
// wrappers) costs on top of the index lookups.

const findMissingGoal = 500_000 // digests/s

// requestsPerClient is how many different requests each client cycles
// through, so that no two consecutive calls are identical.
const requestsPerClient = 4

func runFindMissing(ctx context.Context, b *bench) (*result, error) {
	o := b.opts
	dir, err := b.scratch("findmissing")
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(dir, "data")
	b.logger.Info("findmissing: storing blobs", "blobs", o.fmStored)
	disk, err := cas.NewDisk(filepath.Join(dataDir, "cas"), cas.DiskOptions{Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	stored, err := storeSmallBlobs(ctx, disk, o.fmStored, "findmissing", 32)
	if err != nil {
		return nil, err
	}
	reqs, wantMissing := findMissingRequests(stored, o.fmClients, o.fmDigests)

	// Baseline first, then the store is dropped: the server opens the same
	// directory, and two stores must never share one.
	b.logger.Info("findmissing: in-process baseline")
	inproc, err := measureFor(ctx, o.fmClients, o.fmDuration, func(ctx context.Context, client, i int) (int, error) {
		ds := reqs[client][i%requestsPerClient]
		missing, err := disk.FindMissing(ctx, ds)
		if err != nil {
			return 0, err
		}
		if len(missing) != wantMissing[client][i%requestsPerClient] {
			return 0, fmt.Errorf("in-process FindMissing: %d missing, want %d", len(missing), wantMissing[client][i%requestsPerClient])
		}
		return len(ds), nil
	})
	if err != nil {
		return nil, err
	}
	disk = nil

	srv, err := b.startHearth(ctx, dataDir, filepath.Join(dir, "hearth.log"))
	if err != nil {
		return nil, err
	}
	defer srv.kill()
	clients := make([]repb.ContentAddressableStorageClient, o.fmClients)
	protoReqs := make([][]*repb.FindMissingBlobsRequest, o.fmClients)
	for c := range clients {
		conn, err := srv.dial(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		clients[c] = repb.NewContentAddressableStorageClient(conn)
		for _, ds := range reqs[c] {
			req := &repb.FindMissingBlobsRequest{DigestFunction: repb.DigestFunction_SHA256}
			for _, d := range ds {
				req.BlobDigests = append(req.BlobDigests, d.Proto())
			}
			protoReqs[c] = append(protoReqs[c], req)
		}
	}
	b.logger.Info("findmissing: hearth serve")
	cpu0, err := readCPUTimes(srv.PID())
	if err != nil {
		return nil, err
	}
	remote, err := measureFor(ctx, o.fmClients, o.fmDuration, func(ctx context.Context, client, i int) (int, error) {
		req := protoReqs[client][i%requestsPerClient]
		resp, err := clients[client].FindMissingBlobs(ctx, req)
		if err != nil {
			return 0, err
		}
		if got, want := len(resp.GetMissingBlobDigests()), wantMissing[client][i%requestsPerClient]; got != want {
			return 0, fmt.Errorf("FindMissingBlobs: %d missing, want %d", got, want)
		}
		return len(req.GetBlobDigests()), nil
	})
	if err != nil {
		return nil, err
	}
	cpu1, err := readCPUTimes(srv.PID())
	if err != nil {
		return nil, err
	}
	if err := srv.stop(); err != nil {
		return nil, err
	}

	r := &result{}
	name := fmt.Sprintf("FindMissingBlobs ×%s", formatCount(float64(o.fmDigests)))
	v, base := remote.rate(), inproc.rate()
	r.add(row{Scenario: name, Measure: fmt.Sprintf("digests/s, %d clients", o.fmClients), Hearth: formatCount(v),
		Baseline: "in-process cas.Disk.FindMissing: " + formatCount(base), Ratio: ratio(v, base),
		Goal: "≥ " + formatCount(findMissingGoal), Met: metText(v >= findMissingGoal)})
	r.add(row{Scenario: name, Measure: "server CPU per request", Hearth: formatDuration(cpu1.sub(cpu0).Self / time.Duration(max(1, remote.calls))),
		Baseline: fmt.Sprintf("%d requests in %s", remote.calls, formatDuration(remote.elapsed))})
	r.note("store of %s small blobs; each request has %s digests, half present and half missing, shuffled; %d connections",
		formatCount(float64(o.fmStored)), formatCount(float64(o.fmDigests)), o.fmClients)
	r.note("client and server share the machine's cores, so the client's proto encoding is part of the cost")
	return r, nil
}

// storeSmallBlobs puts n distinct small blobs into s with the given
// concurrency and returns their digests.
func storeSmallBlobs(ctx context.Context, s cas.Store, n int, tag string, workers int) ([]digest.Digest, error) {
	ds := make([]digest.Digest, n)
	var next atomic.Int64
	err := parallel(ctx, workers, func(ctx context.Context, _ int) error {
		for {
			i := int(next.Add(1) - 1)
			if i >= n {
				return nil
			}
			data := fmt.Appendf(nil, "hearthbench %s blob %d", tag, i)
			ds[i] = digest.Compute(digest.SHA256, data)
			if err := cas.Put(ctx, s, ds[i], data); err != nil {
				return err
			}
		}
	})
	return ds, err
}

// findMissingRequests builds requestsPerClient requests of perRequest digests
// for each client: half sampled from stored, half never stored, shuffled. It
// also returns how many of each are missing.
func findMissingRequests(stored []digest.Digest, clients, perRequest int) ([][][]digest.Digest, [][]int) {
	rng := rand.New(rand.NewPCG(1, 2))
	reqs := make([][][]digest.Digest, clients)
	missing := make([][]int, clients)
	for c := range clients {
		for k := range requestsPerClient {
			ds := make([]digest.Digest, 0, perRequest)
			for j := range perRequest {
				if j%2 == 0 {
					ds = append(ds, stored[rng.IntN(len(stored))])
				} else {
					ds = append(ds, digest.Compute(digest.SHA256, fmt.Appendf(nil, "hearthbench absent %d %d %d", c, k, j)))
				}
			}
			rng.Shuffle(len(ds), func(a, b int) { ds[a], ds[b] = ds[b], ds[a] })
			reqs[c] = append(reqs[c], ds)
			missing[c] = append(missing[c], perRequest/2)
		}
	}
	return reqs, missing
}

// throughput is the outcome of measureFor.
type throughput struct {
	items   int // what the calls reported doing (digests, blobs)
	calls   int
	elapsed time.Duration
}

func (t throughput) rate() float64 { return perSecond(float64(t.items), t.elapsed) }

// measureFor runs call in a loop on each of clients goroutines until d has
// passed, then waits for the calls in flight. call gets its client number
// and its own call count, and returns the items it handled.
func measureFor(ctx context.Context, clients int, d time.Duration, call func(ctx context.Context, client, i int) (int, error)) (throughput, error) {
	var (
		mu    sync.Mutex
		total throughput
	)
	start := time.Now()
	err := parallel(ctx, clients, func(ctx context.Context, c int) error {
		items, calls := 0, 0
		for time.Since(start) < d {
			n, err := call(ctx, c, calls)
			if err != nil {
				return err
			}
			items += n
			calls++
		}
		mu.Lock()
		total.items += items
		total.calls += calls
		mu.Unlock()
		return nil
	})
	total.elapsed = time.Since(start)
	return total, err
}
