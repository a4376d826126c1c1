package s3store

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/grpcbulk"
	"github.com/hearth-build/hearth/internal/reapi"
	"github.com/hearth-build/hearth/internal/s3cas"
	"github.com/hearth-build/hearth/internal/s3test"
	"github.com/hearth-build/hearth/internal/tiered"
)

// BenchmarkByteStreamPath runs the ByteStream path in one process (the
// server's store stack as cmd/hearth composes it, gRPC on loopback with the
// server's transport settings, casclient as the client), so that
// -cpuprofile sees client, server and stores together:
//
//	go test -run '^$' -bench ByteStreamPath -benchtime 3x -cpuprofile cpu.out ./bench/s3store
func BenchmarkByteStreamPath(b *testing.B) {
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	s3 := s3test.Start(b)
	slow, err := s3cas.New(ctx, s3cas.Options{Endpoint: s3.Endpoint, Bucket: s3.Bucket, Prefix: prefix,
		AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey})
	if err != nil {
		b.Fatal(err)
	}
	newDisk := func(b *testing.B) *cas.Disk {
		d, err := cas.NewDisk(b.TempDir(), cas.DiskOptions{MaxBytes: 2 << 30, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	stack := func(base cas.Store) cas.Store {
		return cas.NewMetrics(cas.NewVerifying(cas.NewSmallBlobCache(base, 64<<10, 64<<20)), nil)
	}
	serve := func(b *testing.B, store cas.Store) *casclient.Store {
		srv := grpc.NewServer(append(grpcbulk.ServerOptions(), grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize),
			grpc.ReadBufferSize(256<<10), grpc.WriteBufferSize(casclient.TransportBufferSize),
			grpc.InitialWindowSize(casclient.StreamWindowSize), grpc.InitialConnWindowSize(casclient.ConnWindowSize))...)
		reapi.Register(srv, reapi.Config{CAS: store})
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go srv.Serve(l)
		b.Cleanup(srv.Stop)
		conn, err := casclient.Dial(ctx, "grpc://"+l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close() })
		return casclient.NewStore(conn, "")
	}
	blob := func(b *testing.B) ([]byte, digest.Digest) {
		data := make([]byte, blobSize)
		if _, err := rand.Read(data); err != nil {
			b.Fatal(err)
		}
		return data, digest.Compute(digest.SHA256, data)
	}
	write := func(b *testing.B, c *casclient.Store, data []byte, d digest.Digest) {
		w, err := c.Create(ctx, d)
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		if _, err := w.Write(data); err != nil {
			b.Fatal(err)
		}
		if err := w.Commit(); err != nil {
			b.Fatal(err)
		}
	}

	b.Run("read/disk", func(b *testing.B) {
		disk := newDisk(b)
		c := serve(b, stack(disk))
		data, d := blob(b)
		if err := cas.Put(ctx, disk, d, data); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(blobSize)
		reportCPU(b)
		for b.Loop() {
			if err := readVia(ctx, c, d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read/cold", func(b *testing.B) {
		t := tiered.New(newDisk(b), slow, nil, quiet)
		b.Cleanup(t.Wait)
		c := serve(b, stack(t))
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			clk.stop()
			data, d := blob(b)
			if err := cas.Put(ctx, slow, d, data); err != nil {
				b.Fatal(err)
			}
			// The previous read's background fill, if any, is done:
			// each read is measured alone.
			t.Wait()
			stop := profile(b, "read-cold")
			clk.start()
			if err := readVia(ctx, c, d); err != nil {
				b.Fatal(err)
			}
			clk.stop()
			stop()
			clk.start()
		}
	})
	// The cold read's legs without gRPC: the baseline (one minio-go GET
	// stream), the slow tier's own read, and the tiered read with its fill.
	putSlow := func(b *testing.B, clk *cpuClock) digest.Digest {
		clk.stop()
		defer clk.start()
		data, d := blob(b)
		if err := cas.Put(ctx, slow, d, data); err != nil {
			b.Fatal(err)
		}
		return d
	}
	b.Run("s3/get", func(b *testing.B) {
		mc := s3.Client()
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			d := putSlow(b, clk)
			o, err := mc.GetObject(ctx, s3.Bucket, slow.Key(d), minio.GetObjectOptions{})
			if err != nil {
				b.Fatal(err)
			}
			err = copyN(o, blobSize)
			o.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("s3/open", func(b *testing.B) {
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			d := putSlow(b, clk)
			if err := readStore(ctx, slow, d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("tiered/cold", func(b *testing.B) {
		t := tiered.New(newDisk(b), slow, nil, quiet)
		b.Cleanup(t.Wait)
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			d := putSlow(b, clk)
			clk.stop()
			t.Wait()
			clk.start()
			if err := readStore(ctx, t, d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("write/disk", func(b *testing.B) {
		disk := newDisk(b)
		c := serve(b, stack(disk))
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			clk.stop()
			data, d := blob(b)
			clk.start()
			write(b, c, data, d)
		}
	})
	b.Run("write/tiered", func(b *testing.B) {
		t := tiered.New(newDisk(b), slow, nil, quiet)
		b.Cleanup(t.Wait)
		c := serve(b, stack(t))
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			clk.stop()
			data, d := blob(b)
			clk.start()
			write(b, c, data, d)
		}
	})
	b.Run("write/slowonly", func(b *testing.B) {
		small, err := cas.NewDisk(b.TempDir(), cas.DiskOptions{MaxBytes: 1 << 20, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		c := serve(b, stack(tiered.New(small, slow, nil, quiet)))
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			clk.stop()
			data, d := blob(b)
			clk.start()
			write(b, c, data, d)
		}
	})
	b.Run("s3/put", func(b *testing.B) {
		b.SetBytes(blobSize)
		clk := reportCPU(b)
		for range b.N {
			clk.stop()
			data, d := blob(b)
			clk.start()
			if err := cas.Put(ctx, slow, d, data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// profile writes a CPU profile of what runs until stop to
// $HEARTH_PROFILE_DIR/name-N.prof, if that is set: profiles of the timed
// parts only, which go tool pprof merges (go tool pprof -top bin dir/*.prof).
// -cpuprofile would include the setup (random bytes, uploads) and the
// background fills between reads.
func profile(b *testing.B, name string) (stop func()) {
	dir := os.Getenv("HEARTH_PROFILE_DIR")
	if dir == "" {
		return func() {}
	}
	f, err := os.CreateTemp(dir, name+"-*.prof")
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// cpuClock follows b's timer and reports, at the end of b, how many cores
// this process and SeaweedFS used per timed wall second: on two shared
// cores a throughput is a CPU budget, and this says whose.
type cpuClock struct {
	b                *testing.B
	m                *cpuMeter
	last             cpuSample
	running          bool
	wall, self, weed time.Duration
}

func reportCPU(b *testing.B) *cpuClock {
	c := &cpuClock{b: b, m: newCPUMeter()}
	c.start()
	b.Cleanup(func() {
		c.stop()
		if c.wall > 0 {
			b.ReportMetric(c.self.Seconds()/c.wall.Seconds(), "cores-self")
			b.ReportMetric(c.weed.Seconds()/c.wall.Seconds(), "cores-weed")
		}
	})
	return c
}

func (c *cpuClock) start() {
	c.b.StartTimer()
	c.last, c.running = c.m.sample(), true
}

func (c *cpuClock) stop() {
	c.b.StopTimer()
	if !c.running {
		return
	}
	now := c.m.sample()
	c.wall += now.at.Sub(c.last.at)
	c.self += now.self - c.last.self
	c.weed += now.weed - c.last.weed
	c.running = false
}

// readStore reads d from s the way ByteStream's Read does: exactly its
// bytes, through an io.LimitReader, in 256 KiB reads.
func readStore(ctx context.Context, s cas.Store, d digest.Digest) error {
	r, err := s.Open(ctx, d, 0)
	if err != nil {
		return err
	}
	defer r.Close()
	buf := make([]byte, 256<<10)
	var n int64
	lr := io.LimitReader(r, d.Size)
	for {
		k, err := io.ReadFull(lr, buf)
		n += int64(k)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if n != d.Size {
		return fmt.Errorf("read %d bytes, want %d", n, d.Size)
	}
	return nil
}
