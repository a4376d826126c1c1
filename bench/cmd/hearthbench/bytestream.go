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

	// Baseline: cp, then cp followed by an fsync of the copy, since the
	// server makes every blob durable before it acknowledges it.
	b.coldCache()
	start := time.Now()
	if err := runQuiet(ctx, dir, "cp", src, "copy.bin"); err != nil {
		return nil, err
	}
	cpTime := time.Since(start)
	if err := fsyncPath(filepath.Join(dir, "copy.bin")); err != nil {
		return nil, err
	}
	cpSyncTime := time.Since(start)
	if err := os.Remove(filepath.Join(dir, "copy.bin")); err != nil {
		return nil, err
	}

	srv, err := b.startHearth(ctx, filepath.Join(dir, "data"), filepath.Join(dir, "hearth.log"))
	if err != nil {
		return nil, err
	}
	defer srv.kill()
	conn, err := srv.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	store := casclient.NewStore(conn, "")
	idle, err := readProcMemory(srv.PID())
	if err != nil {
		return nil, err
	}

	b.coldCache()
	sampler := sampleRSS(srv.PID(), 10*time.Millisecond)
	start = time.Now()
	err = upload(ctx, store, d, src)
	writeTime := time.Since(start)
	writePeak := sampler.stop()
	if err != nil {
		return nil, fmt.Errorf("ByteStream write: %w", err)
	}

	b.coldCache()
	sampler = sampleRSS(srv.PID(), 10*time.Millisecond)
	start = time.Now()
	err = download(ctx, store, d, filepath.Join(dir, "download.bin"))
	readTime := time.Since(start)
	readPeak := sampler.stop()
	if err != nil {
		return nil, fmt.Errorf("ByteStream read: %w", err)
	}
	mem, err := readProcMemory(srv.PID())
	if err != nil {
		return nil, err
	}
	if err := srv.stop(); err != nil {
		return nil, err
	}
	if err := verifyFile(filepath.Join(dir, "download.bin"), d); err != nil {
		return nil, fmt.Errorf("ByteStream read returned the wrong bytes: %w", err)
	}

	r := &result{}
	name := "ByteStream " + formatBytes(size)
	cp := mibPerSecond(size, cpTime)
	cpSync := mibPerSecond(size, cpSyncTime)
	for _, m := range []struct {
		what string
		t    time.Duration
	}{{"write (upload)", writeTime}, {"read (download)", readTime}} {
		v := mibPerSecond(size, m.t)
		r.add(row{Scenario: name, Measure: m.what + " MiB/s", Hearth: fmt.Sprintf("%.0f", v),
			Baseline: fmt.Sprintf("cp: %.0f", cp), Ratio: ratio(v, cp),
			Goal: fmt.Sprintf("≥ %.2f× cp", byteStreamGoalRatio), Met: metText(v >= byteStreamGoalRatio*cp)})
		r.add(row{Scenario: name, Measure: m.what + " MiB/s", Hearth: fmt.Sprintf("%.0f", v),
			Baseline: fmt.Sprintf("cp + fsync: %.0f", cpSync), Ratio: ratio(v, cpSync)})
	}
	for _, m := range []struct {
		what string
		rss  int64
	}{{"server peak RSS during write", writePeak}, {"server peak RSS during read", readPeak}, {"server VmHWM (whole life)", mem.Peak}} {
		r.add(row{Scenario: name, Measure: m.what, Hearth: formatBytes(m.rss),
			Baseline: "idle server: " + formatBytes(idle.RSS), Ratio: ratio(float64(m.rss), float64(idle.RSS)),
			Goal: "< " + formatBytes(byteStreamGoalRSS), Met: metText(m.rss < byteStreamGoalRSS)})
	}
	r.note("%s; the server fsyncs the blob before acknowledging the write, cp does not (the cp + fsync row shows the difference)", b.cacheNote())
	r.note("client: casclient (1 MiB WriteRequest chunks); the download is written to a file without fsync, like cp's copy")
	r.note("RSS sampled every 10 ms from /proc/PID/status VmRSS; VmHWM is the kernel's peak since the server started")
	return r, nil
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
