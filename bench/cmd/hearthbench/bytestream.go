package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
)

// Scenario bytestream: one large blob written to and read back from the
// server with ByteStream over loopback, against cp of the same file on the
// same disk. The server's peak memory is sampled during both transfers.
//
// Both sides move the bytes file → file: cp reads the source and writes a
// copy; the upload reads the source in the client and the server writes the
// blob; the download has the server read the blob and the client write a
// file, as Bazel does with an output. The page cache is dropped before each,
// so every read comes from the disk.

// Goals from the issue: at least half of cp's throughput, and the server's
// memory independent of the blob size.
const (
	byteStreamGoalRatio = 0.5
	byteStreamGoalRSS   = 100 << 20
)

func runByteStream(ctx context.Context, b *bench) (*result, error) {
	size := int64(b.opts.size)
	dir, err := b.scratch("bytestream")
	if err != nil {
		return nil, err
	}
	src := filepath.Join(dir, "source.bin")
	b.logger.Info("bytestream: writing the source file", "bytes", size)
	d, err := writeRandomFile(src, size)
	if err != nil {
		return nil, err
	}
	var (
		write, read, writeSync, readSync comparison
		writePeak, readPeak, hwm, idle   int64
		cpCPU, wServer, wClient          []float64 // seconds per GiB
		rServer, rClient                 []float64
	)
	perGiB := func(d time.Duration) float64 { return d.Seconds() / (float64(size) / (1 << 30)) }
	for round := range b.opts.rounds {
		b.logger.Info("bytestream: round", "round", round+1)
		rd, err := byteStreamRound(ctx, b, round, filepath.Join(dir, fmt.Sprintf("round%d", round)), src, d)
		if err != nil {
			return nil, err
		}
		write.add(rd.write, rd.cp)
		read.add(rd.read, rd.cp)
		writeSync.add(rd.write, rd.cpSync)
		readSync.add(rd.read, rd.cpSync)
		writePeak, readPeak = max(writePeak, rd.writePeak), max(readPeak, rd.readPeak)
		hwm, idle = max(hwm, rd.mem.Peak), max(idle, rd.idle)
		cpCPU = append(cpCPU, perGiB(rd.cpCPU))
		wServer, wClient = append(wServer, perGiB(rd.writeServer)), append(wClient, perGiB(rd.writeClient))
		rServer, rClient = append(rServer, perGiB(rd.readServer)), append(rClient, perGiB(rd.readClient))
	}

	r := &result{}
	name := "ByteStream " + formatBytes(size)
	for _, m := range []struct {
		what      string
		cp, cpSyn *comparison
	}{{"write (upload) MiB/s", &write, &writeSync}, {"read (download) MiB/s", &read, &readSync}} {
		rw := m.cp.row(name, m.what, "cp", mibFormat)
		rw.Goal, rw.Met = fmt.Sprintf("≥ %.2f× cp", byteStreamGoalRatio), metText(m.cp.ratio() >= byteStreamGoalRatio)
		r.add(rw)
		r.add(m.cpSyn.row(name, m.what, "cp + fsync", mibFormat))
	}
	for _, m := range []struct {
		what           string
		server, client []float64
	}{{"CPU s/GiB, write (server; client)", wServer, wClient}, {"CPU s/GiB, read (server; client)", rServer, rClient}} {
		r.add(row{Scenario: name, Measure: m.what,
			Hearth:   fmt.Sprintf("%.2f; %.2f", median(m.server), median(m.client)),
			Baseline: fmt.Sprintf("cp: %.2f", median(cpCPU)), Ratio: ratio(median(m.server)+median(m.client), median(cpCPU))})
	}
	for _, m := range []struct {
		what string
		rss  int64
	}{{"server peak RSS during write", writePeak}, {"server peak RSS during read", readPeak}, {"server VmHWM (whole life)", hwm}} {
		r.add(row{Scenario: name, Measure: m.what, Hearth: formatBytes(m.rss),
			Baseline: "idle server: " + formatBytes(idle), Ratio: ratio(float64(m.rss), float64(idle)),
			Goal: "< " + formatBytes(byteStreamGoalRSS), Met: metText(m.rss < byteStreamGoalRSS)})
	}
	r.note("%s; each round starts a server on an empty data directory; the server fsyncs the blob before acknowledging the write, cp does not (the cp + fsync rows show the difference)", b.cacheNote())
	r.note("client: casclient (1 MiB WriteRequest chunks); the download is written to a file without fsync, like cp's copy, and checked against the digest afterwards")
	r.note("RSS: highest over the rounds, sampled every 10 ms from /proc/PID/status VmRSS; VmHWM is the kernel's peak since the server started")
	return r, nil
}

// byteStreamSample is one round's measurements: throughputs in MiB/s and
// memory in bytes.
type byteStreamSample struct {
	// CPU: cp's (as a child of this process); the server's and this
	// process's (the client) during the write and the read.
	cpCPU                    time.Duration
	writeServer, writeClient time.Duration
	readServer, readClient   time.Duration

	cp, cpSync, write, read   float64
	idle, writePeak, readPeak int64
	mem                       procMemory
}

// byteStreamRound copies src with cp, then uploads and downloads it through
// a new server whose data lives in dir; everything it writes is removed.
func byteStreamRound(ctx context.Context, b *bench, round int, dir, src string, d digest.Digest) (rd byteStreamSample, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return rd, err
	}
	defer os.RemoveAll(dir)
	size := d.Size
	// Baseline: cp, then cp followed by an fsync of the copy, since the
	// server makes every blob durable before it acknowledges it.
	cpy := filepath.Join(dir, "copy.bin")
	b.coldCache()
	own0 := ownCPU()
	start := time.Now()
	if err := runQuiet(ctx, dir, "cp", src, cpy); err != nil {
		return rd, err
	}
	rd.cp = mibPerSecond(size, time.Since(start))
	rd.cpCPU = ownCPU().sub(own0).Children
	if err := fsyncPath(cpy); err != nil {
		return rd, err
	}
	rd.cpSync = mibPerSecond(size, time.Since(start))
	if err := os.Remove(cpy); err != nil {
		return rd, err
	}

	srv, err := b.startHearth(ctx, filepath.Join(dir, "data"), filepath.Join(b.work, "bytestream", filepath.Base(dir)+"-hearth.log"))
	if err != nil {
		return rd, err
	}
	defer srv.kill()
	conn, err := srv.dial(ctx)
	if err != nil {
		return rd, err
	}
	defer conn.Close()
	store := casclient.NewStore(conn, "")
	idle, err := readProcMemory(srv.PID())
	if err != nil {
		return rd, err
	}
	rd.idle = idle.RSS

	b.coldCache()
	sampler := sampleRSS(srv.PID(), 10*time.Millisecond)
	stopProfile := b.profile(srv, fmt.Sprintf("bytestream-write-%d", round))
	cpu := measureCPU(srv.PID())
	start = time.Now()
	err = upload(ctx, store, d, src)
	took := time.Since(start)
	rd.writeServer, rd.writeClient = cpu()
	stopProfile()
	rd.writePeak = sampler.stop()
	if err != nil {
		return rd, fmt.Errorf("ByteStream write: %w", err)
	}
	rd.write = mibPerSecond(size, took)

	down := filepath.Join(dir, "download.bin")
	b.coldCache()
	sampler = sampleRSS(srv.PID(), 10*time.Millisecond)
	stopProfile = b.profile(srv, fmt.Sprintf("bytestream-read-%d", round))
	cpu = measureCPU(srv.PID())
	start = time.Now()
	err = download(ctx, store, d, down)
	took = time.Since(start)
	rd.readServer, rd.readClient = cpu()
	stopProfile()
	rd.readPeak = sampler.stop()
	if err != nil {
		return rd, fmt.Errorf("ByteStream read: %w", err)
	}
	rd.read = mibPerSecond(size, took)
	if rd.mem, err = readProcMemory(srv.PID()); err != nil {
		return rd, err
	}
	if err := srv.stop(); err != nil {
		return rd, err
	}
	if err := verifyFile(down, d); err != nil {
		return rd, fmt.Errorf("ByteStream read returned the wrong bytes: %w", err)
	}
	return rd, nil
}

// writeRandomFile writes size incompressible bytes to path and returns
// their SHA-256 digest.
func writeRandomFile(path string, size int64) (digest.Digest, error) {
	f, err := os.Create(path)
	if err != nil {
		return digest.Digest{}, err
	}
	defer f.Close()
	h := digest.NewHasher(digest.SHA256)
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		chunk := buf[:min(int64(len(buf)), left)]
		rng.Read(chunk)
		h.Write(chunk)
		if _, err := f.Write(chunk); err != nil {
			return digest.Digest{}, err
		}
		left -= int64(len(chunk))
	}
	if err := f.Close(); err != nil {
		return digest.Digest{}, err
	}
	return digest.New(digest.SHA256, fmt.Sprintf("%x", h.Sum(nil)), size)
}

// upload writes the file at path to the server as the blob d.
func upload(ctx context.Context, store *casclient.Store, d digest.Digest, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w, err := store.Create(ctx, d)
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := io.Copy(w, f); err != nil {
		return err
	}
	return w.Commit()
}

// download reads the blob d from the server into a new file at path. It
// checks only the size: hashing in the timed loop would charge the client's
// CPU to the transfer (cp hashes nothing); verifyFile checks the bytes after.
func download(ctx context.Context, store *casclient.Store, d digest.Digest, path string) error {
	r, err := store.Open(ctx, d, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(f, r)
	if err != nil {
		return err
	}
	if n != d.Size {
		return fmt.Errorf("downloaded %d bytes of %s", n, d)
	}
	return f.Close()
}

// verifyFile checks that the file at path has the digest d.
func verifyFile(path string, d digest.Digest) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := digest.NewHasher(d.Function)
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if got := fmt.Sprintf("%x", h.Sum(nil)); n != d.Size || got != d.Hash {
		return fmt.Errorf("%s holds %d bytes hashing to %s, want %s", path, n, got, d)
	}
	return nil
}
