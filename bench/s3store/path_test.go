package s3store

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
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
		srv := grpc.NewServer(grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize),
			grpc.ReadBufferSize(256<<10), grpc.WriteBufferSize(casclient.TransportBufferSize),
			grpc.InitialWindowSize(casclient.StreamWindowSize), grpc.InitialConnWindowSize(casclient.ConnWindowSize))
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
		for range b.N {
			b.StopTimer()
			data, d := blob(b)
			if err := cas.Put(ctx, slow, d, data); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := readVia(ctx, c, d); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("write/disk", func(b *testing.B) {
		disk := newDisk(b)
		c := serve(b, stack(disk))
		b.SetBytes(blobSize)
		for range b.N {
			b.StopTimer()
			data, d := blob(b)
			b.StartTimer()
			write(b, c, data, d)
		}
	})
	b.Run("write/tiered", func(b *testing.B) {
		t := tiered.New(newDisk(b), slow, nil, quiet)
		b.Cleanup(t.Wait)
		c := serve(b, stack(t))
		b.SetBytes(blobSize)
		for range b.N {
			b.StopTimer()
			data, d := blob(b)
			b.StartTimer()
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
		for range b.N {
			b.StopTimer()
			data, d := blob(b)
			b.StartTimer()
			write(b, c, data, d)
		}
	})
	b.Run("s3/put", func(b *testing.B) {
		b.SetBytes(blobSize)
		for range b.N {
			b.StopTimer()
			data, d := blob(b)
			b.StartTimer()
			if err := cas.Put(ctx, slow, d, data); err != nil {
				b.Fatal(err)
			}
		}
	})
	_ = fmt.Sprint
}
