package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/auth"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/testcerts"
)

// Scenario access: what TLS and a bearer token cost. Each round starts two
// `hearth serve` processes on empty data directories, one plaintext and one
// with --config-server (TLS with a generated certificate, and auth with one
// token), and measures both back to back with the same client code:
// Execute latency of /bin/true actions one at a time, then a ByteStream
// upload and download of one blob. The page cache is left warm (the blob
// was just written): the transfer's own cost is what TLS changes, and a
// cold disk would hide it.

// Goals from the issue: TLS + token adds at most 10% to the Execute p50 and
// takes at most 15% off ByteStream throughput.
const (
	accessGoalP50        = 1.10
	accessGoalThroughput = 0.85
)

func runAccess(ctx context.Context, b *bench) (*result, error) {
	o := b.opts
	dir, err := b.scratch("access")
	if err != nil {
		return nil, err
	}
	ca, err := testcerts.NewCA(dir, "hearthbench")
	if err != nil {
		return nil, err
	}
	cert, err := ca.Server("server")
	if err != nil {
		return nil, err
	}
	token := auth.NewToken()
	cfgPath := filepath.Join(dir, "server.json5")
	cfg := fmt.Sprintf(`{
  tls: {cert_file: %q, key_file: %q},
  auth: {principals: [{name: "bench", token_sha256: %q, grants: [{rights: ["read", "write", "ac-write", "execute"]}]}]},
}`, cert.CertFile, cert.KeyFile, auth.HashToken(token))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	secure := casclient.DialOptions{TLS: &tls.Config{RootCAs: ca.Pool()}, Token: token}

	src := filepath.Join(dir, "source.bin")
	size := int64(o.accessSize)
	d, err := writeRandomFile(src, size)
	if err != nil {
		return nil, err
	}
	var p50, write, read, cpuAction, cpuWrite, cpuRead comparison
	for round := range o.rounds {
		b.logger.Info("access: round", "round", round+1)
		rdir := filepath.Join(dir, fmt.Sprintf("round%d", round))
		// Which side goes first alternates, so that neither always
		// meets the other's dirty pages being written back.
		var plain, tlsTok accessSample
		for i := range 2 {
			var err error
			if (i+round)%2 == 0 {
				plain, err = accessRound(ctx, b, filepath.Join(rdir, "plain"), "grpc", casclient.DialOptions{}, src, d)
			} else {
				tlsTok, err = accessRound(ctx, b, filepath.Join(rdir, "tls"), "grpcs", secure, src, d, "--config-server", cfgPath)
			}
			if err != nil {
				return nil, err
			}
		}
		p50.add(tlsTok.p50.Seconds(), plain.p50.Seconds())
		cpuAction.add(tlsTok.cpuAction.Seconds(), plain.cpuAction.Seconds())
		cpuWrite.add(tlsTok.cpuWriteGiB.Seconds(), plain.cpuWriteGiB.Seconds())
		cpuRead.add(tlsTok.cpuReadGiB.Seconds(), plain.cpuReadGiB.Seconds())
		write.add(tlsTok.write, plain.write)
		read.add(tlsTok.read, plain.read)
		if err := os.RemoveAll(rdir); err != nil {
			return nil, err
		}
	}
	r := &result{}
	name := "TLS + token vs plaintext"
	rw := p50.row(name, "Execute /bin/true p50 latency, 1 client", "plaintext", secondsFormat)
	rw.Goal, rw.Met = fmt.Sprintf("≤ %.2f×", accessGoalP50), metText(p50.ratio() <= accessGoalP50)
	r.add(rw)
	for _, m := range []struct {
		what string
		c    *comparison
	}{{"ByteStream write " + formatBytes(size) + " MiB/s", &write}, {"ByteStream read " + formatBytes(size) + " MiB/s", &read}} {
		rw := m.c.row(name, m.what, "plaintext", mibFormat)
		rw.Goal, rw.Met = fmt.Sprintf("≥ %.2f×", accessGoalThroughput), metText(m.c.ratio() >= accessGoalThroughput)
		r.add(rw)
	}
	r.add(cpuAction.row(name, "CPU per Execute (server + client)", "plaintext", secondsFormat))
	r.add(cpuWrite.row(name, "CPU s per GiB written (server + client)", "plaintext", func(v float64) string { return fmt.Sprintf("%.2f", v) }))
	r.add(cpuRead.row(name, "CPU s per GiB read (server + client)", "plaintext", func(v float64) string { return fmt.Sprintf("%.2f", v) }))
	r.note("per round: a plaintext hearth serve and one with TLS (ECDSA P-256 certificate, TLS 1.3) and a bearer token checked by the auth interceptors, each on an empty data directory, in alternating order; %d actions one after another for latency (each with its own digest, skip_cache_lookup), then one %s blob uploaded and read back with casclient", o.execLatency, formatBytes(size))
	r.note("page cache warm for the transfers (the source file was just written): TLS's cost is in the transfer, not the disk")
	return r, nil
}

type accessSample struct {
	p50         time.Duration
	write, read float64 // MiB/s
	// CPU of server + client: per action in the latency phase, per GiB
	// in the transfers.
	cpuAction               time.Duration
	cpuWriteGiB, cpuReadGiB time.Duration
}

// accessRound measures one server started with extraArgs and reached with
// scheme and dialOpts.
func accessRound(ctx context.Context, b *bench, dir, scheme string, dialOpts casclient.DialOptions, src string, d digest.Digest, extraArgs ...string) (accessSample, error) {
	var s accessSample
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return s, err
	}
	srv, err := b.startHearthWith(ctx, filepath.Join(dir, "data"), filepath.Join(dir, "hearth.log"), scheme, dialOpts, extraArgs...)
	if err != nil {
		return s, err
	}
	defer srv.kill()
	conn, err := srv.dial(ctx)
	if err != nil {
		return s, err
	}
	defer conn.Close()
	n := b.opts.execLatency
	actions, err := uploadTrueActions(ctx, repb.NewContentAddressableStorageClient(conn), executeWarmup+n)
	if err != nil {
		return s, err
	}
	client := repb.NewExecutionClient(conn)
	run := func(first int) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error { return executeAction(ctx, client, actions[first+i]) }
	}
	if _, err := latencies(ctx, executeWarmup, run(0)); err != nil {
		return s, err
	}
	stopProfile := b.profile(srv, "access-latency-"+scheme+"-"+filepath.Base(filepath.Dir(dir)))
	cpu := measureCPU(srv.PID())
	lat, err := latencies(ctx, n, run(executeWarmup))
	stopProfile()
	if err != nil {
		return s, err
	}
	s.p50 = percentile(lat, 0.5)
	srvCPU, cliCPU := cpu()
	s.cpuAction = (srvCPU + cliCPU) / time.Duration(n)
	perGiB := func(t time.Duration) time.Duration {
		return time.Duration(float64(t) * float64(1<<30) / float64(d.Size))
	}

	store := casclient.NewStore(conn, "")
	cpu = measureCPU(srv.PID())
	start := time.Now()
	if err := upload(ctx, store, d, src); err != nil {
		return s, fmt.Errorf("ByteStream write: %w", err)
	}
	s.write = mibPerSecond(d.Size, time.Since(start))
	srvCPU, cliCPU = cpu()
	s.cpuWriteGiB = perGiB(srvCPU + cliCPU)
	down := filepath.Join(dir, "download.bin")
	cpu = measureCPU(srv.PID())
	start = time.Now()
	if err := download(ctx, store, d, down); err != nil {
		return s, fmt.Errorf("ByteStream read: %w", err)
	}
	s.read = mibPerSecond(d.Size, time.Since(start))
	srvCPU, cliCPU = cpu()
	s.cpuReadGiB = perGiB(srvCPU + cliCPU)
	if err := verifyFile(down, d); err != nil {
		return s, err
	}
	return s, srv.stop()
}
