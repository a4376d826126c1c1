package storage

import (
	"context"
	"io"
	"net"
	"testing"

	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/casclient"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/reapi"
)

// The happy path of a large ByteStream upload and download to a real
// loopback REAPI server on a disk CAS: what casclient's retry machinery (the
// replay window a Write keeps, a Read's offset bookkeeping) costs when
// nothing fails.
const streamBlob = 32 << 20

// serveCAS starts the REAPI service on a verifying disk CAS and returns the
// server's store and a casclient store talking to it over loopback gRPC.
func serveCAS(b *testing.B) (server cas.Store, client *casclient.Store) {
	disk, err := cas.NewDisk(b.TempDir(), cas.DiskOptions{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	server = cas.NewVerifying(disk)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize))
	reapi.Register(srv, reapi.Config{CAS: server})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	b.Cleanup(srv.Stop)
	conn, err := casclient.Dial(context.Background(), "grpc://"+l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return server, casclient.NewStore(conn, "")
}

// pattern is n bytes that do not compress to nothing, different per seed.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7+i>>9) ^ seed
	}
	return p
}

func BenchmarkByteStreamWrite(b *testing.B) {
	server, client := serveCAS(b)
	ctx := context.Background()
	b.SetBytes(streamBlob)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		data := pattern(streamBlob, byte(i))
		data[0], data[1] = byte(i), byte(i>>8) // a new blob each time
		d := digest.Compute(digest.SHA256, data)
		b.StartTimer()
		if err := cas.Put(ctx, client, d, data); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if missing, err := server.FindMissing(ctx, []digest.Digest{d}); err != nil || len(missing) != 0 {
			b.Fatalf("after the upload the server misses %v (%v)", missing, err)
		}
		b.StartTimer()
	}
}

func BenchmarkByteStreamRead(b *testing.B) {
	server, client := serveCAS(b)
	ctx := context.Background()
	data := pattern(streamBlob, 1)
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(ctx, server, d, data); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(streamBlob)
	for b.Loop() {
		r, err := client.Open(ctx, d, 0)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, r, buf)
		r.Close()
		if err != nil || n != streamBlob {
			b.Fatalf("read %d of %d bytes: %v", n, streamBlob, err)
		}
	}
}
