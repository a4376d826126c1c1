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
	// Two identical stores: one opened in-process for the baseline, a copy
	// for the server, since two stores must never share a directory.
	inprocDir, serverDir := filepath.Join(dir, "inproc"), filepath.Join(dir, "server")
	b.logger.Info("findmissing: storing blobs", "blobs", o.fmStored)
	disk, err := cas.NewDisk(filepath.Join(inprocDir, "cas"), cas.DiskOptions{Logger: quietLogger()})
	if err != nil {
		return nil, err
	}
	stored, err := storeSmallBlobs(ctx, disk, o.fmStored, "findmissing", 32)
	if err != nil {
		return nil, err
	}
	if err := runQuiet(ctx, dir, "cp", "-a", inprocDir, serverDir); err != nil {
		return nil, err
	}
	reqs, wantMissing := findMissingRequests(stored, o.fmClients, o.fmDigests)

	srv, err := b.startHearth(ctx, serverDir, filepath.Join(dir, "hearth.log"))
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
	inprocCall := func(ctx context.Context, client, i int) (int, error) {
		ds := reqs[client][i%requestsPerClient]
		missing, err := disk.FindMissing(ctx, ds)
		if err != nil {
			return 0, err
		}
		if got, want := len(missing), wantMissing[client][i%requestsPerClient]; got != want {
			return 0, fmt.Errorf("in-process FindMissing: %d missing, want %d", got, want)
		}
		return len(ds), nil
	}
	remoteCall := func(ctx context.Context, client, i int) (int, error) {
		req := protoReqs[client][i%requestsPerClient]
		resp, err := clients[client].FindMissingBlobs(ctx, req)
		if err != nil {
			return 0, err
		}
		if got, want := len(resp.GetMissingBlobDigests()), wantMissing[client][i%requestsPerClient]; got != want {
			return 0, fmt.Errorf("FindMissingBlobs: %d missing, want %d", got, want)
		}
		return len(req.GetBlobDigests()), nil
	}

	var (
		cmp      comparison
		calls    int
		cpu      time.Duration // the server's
		client   time.Duration // this process's, during the server's turns
		rpcTimes []float64     // seconds per call, per round
	)
	for round := range o.rounds {
		b.logger.Info("findmissing: round", "round", round+1)
		inproc, err := measureFor(ctx, o.fmClients, o.fmDuration, inprocCall)
		if err != nil {
			return nil, err
		}
		cpu0, err := readCPUTimes(srv.PID())
		if err != nil {
			return nil, err
		}
		own0 := ownCPU()
		stopProfile := b.profile(srv, fmt.Sprintf("findmissing-%d", round))
		remote, err := measureFor(ctx, o.fmClients, o.fmDuration, remoteCall)
		stopProfile()
		if err != nil {
			return nil, err
		}
		client += ownCPU().sub(own0).Self
		cpu1, err := readCPUTimes(srv.PID())
		if err != nil {
			return nil, err
		}
		cmp.add(remote.rate(), inproc.rate())
		calls += remote.calls
		cpu += cpu1.sub(cpu0).Self
		rpcTimes = append(rpcTimes, remote.elapsed.Seconds()*float64(o.fmClients)/float64(remote.calls))
	}
	if err := srv.stop(); err != nil {
		return nil, err
	}

	r := &result{}
	name := fmt.Sprintf("FindMissingBlobs ×%s", formatCount(float64(o.fmDigests)))
	rw := cmp.row(name, fmt.Sprintf("digests/s, %d clients", o.fmClients), "in-process cas.Disk.FindMissing", countFormat)
	rw.Goal, rw.Met = "≥ "+formatCount(findMissingGoal), metText(median(cmp.hearth) >= findMissingGoal)
	r.add(rw)
	perCall := func(d time.Duration) string { return formatDuration(d / time.Duration(max(1, calls))) }
	r.add(row{Scenario: name, Measure: "time per call; server CPU per call; client CPU per call",
		Hearth: fmt.Sprintf("%s; %s; %s", secondsFormat(median(rpcTimes)), perCall(cpu), perCall(client))})
	r.note("store of %s small blobs; each request has %s digests, half present and half missing, shuffled; %d clients with a connection each, %s per side per round",
		formatCount(float64(o.fmStored)), formatCount(float64(o.fmDigests)), o.fmClients, o.fmDuration)
	r.note("client and server share the machine's cores, so the client's proto encoding and decoding are part of the cost")
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
