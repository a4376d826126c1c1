package casclient

import (
	"context"
	"io"
	"testing"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// The happy path of a large ByteStream upload and download to a real
// loopback server: what the retry machinery (the replay window a Write
// keeps, a Read's offset bookkeeping) costs when nothing fails.
const benchBlob = 32 << 20

func BenchmarkByteStreamWrite(b *testing.B) {
	srv := startServer(b)
	conn, err := Dial(context.Background(), "grpc://"+srv.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	store := NewStore(conn, "")
	b.SetBytes(benchBlob)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		data := pattern(benchBlob, byte(i))
		data[0], data[1] = byte(i), byte(i>>8) // a new blob each time
		d := digest.Compute(digest.SHA256, data)
		b.StartTimer()
		if err := cas.Put(context.Background(), store, d, data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkByteStreamRead(b *testing.B) {
	srv := startServer(b)
	conn, err := Dial(context.Background(), "grpc://"+srv.addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	store := NewStore(conn, "")
	data := pattern(benchBlob, 1)
	d := digest.Compute(digest.SHA256, data)
	if err := cas.Put(context.Background(), srv.cas, d, data); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	b.SetBytes(benchBlob)
	for i := 0; i < b.N; i++ {
		r, err := store.Open(context.Background(), d, 0)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyBuffer(io.Discard, r, buf); err != nil {
			b.Fatal(err)
		}
		r.Close()
	}
}
