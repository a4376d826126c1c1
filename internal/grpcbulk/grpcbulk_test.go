package grpcbulk

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestPool(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256, 257, 4096, 16 << 10, 256<<10 + 5, 1 << 22, 1<<22 + 1} {
		bp := Pool.Get(n)
		if len(*bp) != n || cap(*bp) < n {
			t.Fatalf("Get(%d): len %d cap %d", n, len(*bp), cap(*bp))
		}
		Pool.Put(bp)
		// Whatever the pool kept, what it hands out next is big enough.
		if bp := Pool.Get(n); len(*bp) != n || cap(*bp) < n {
			t.Fatalf("Get(%d) after Put: len %d cap %d", n, len(*bp), cap(*bp))
		}
	}
	// A buffer of an odd capacity goes to the class below it, and a
	// larger request is never served from it.
	odd := make([]byte, 3000)
	Pool.Put(&odd)
	for range 10 {
		if bp := Pool.Get(4000); cap(*bp) < 4000 {
			t.Fatalf("Get(4000) returned a buffer of capacity %d", cap(*bp))
		}
	}
}

// TestSendChunkWire: a SendChunk's bytes through the codec are exactly a
// proto-marshalled ReadResponse.
func TestSendChunkWire(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 300_000} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		want, err := proto.Marshal(&bspb.ReadResponse{Data: data})
		if err != nil {
			t.Fatal(err)
		}
		c := NewSendChunk(n)
		copy(c.Data, data)
		out, err := codec{}.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := out.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: the codec's encoding differs from proto's", n)
		}
		if c.Data != nil {
			t.Fatalf("%d bytes: Data still set after the hand-over", n)
		}
		out.Free()
	}
}

// split cuts b into buffers of at most k bytes, as frames arrive.
func split(b []byte, k int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(k, len(b))
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:n])))
		b = b[n:]
	}
	return s
}

// TestRecvChunk: whatever valid encoding of a ReadResponse a server sends,
// split into frames anywhere (the header too), RecvChunk yields its data.
func TestRecvChunk(t *testing.T) {
	data := make([]byte, 70_000)
	for i := range data {
		data[i] = byte(i * 13)
	}
	plain, _ := proto.Marshal(&bspb.ReadResponse{Data: data})
	// Unknown field 3 (varint) before the data.
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 42)
	unknown = append(unknown, plain...)
	// Two data fields: the last one wins.
	twice := append(protowire.AppendBytes(protowire.AppendTag(nil, dataField, protowire.BytesType), []byte("old")), plain...)
	for _, tc := range []struct {
		name string
		wire []byte
		want []byte
	}{
		{"plain", plain, data},
		{"empty message", nil, nil},
		{"unknown field", unknown, data},
		{"data twice", twice, data},
	} {
		for _, k := range []int{1, 2, 3, 16 << 10, 1 << 20} {
			var c RecvChunk
			if err := (codec{}).Unmarshal(split(tc.wire, k), &c); err != nil {
				t.Fatalf("%s, frames of %d: %v", tc.name, k, err)
			}
			if c.Len() != len(tc.want) {
				t.Fatalf("%s, frames of %d: Len %d, want %d", tc.name, k, c.Len(), len(tc.want))
			}
			got, err := io.ReadAll(&c)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("%s, frames of %d: read %d bytes (%v), want the data", tc.name, k, len(got), err)
			}
		}
	}
	var c RecvChunk
	if err := (codec{}).Unmarshal(split([]byte{0x52, 0x05, 1}, 1), &c); err == nil {
		t.Fatal("a truncated message was accepted")
	}
}

// streamer sends blob chunk by chunk as SendChunks.
type streamer struct {
	bspb.UnimplementedByteStreamServer
	blob  []byte
	chunk int
}

func (s *streamer) Read(_ *bspb.ReadRequest, stream bspb.ByteStream_ReadServer) error {
	for off := 0; off < len(s.blob); off += s.chunk {
		c := NewSendChunk(s.chunk)
		n := copy(c.Data, s.blob[off:])
		c.Truncate(n)
		if err := stream.SendMsg(c); err != nil {
			return err
		}
	}
	return nil
}

func serve(t *testing.T, s bspb.ByteStreamServer, opts ...grpc.ServerOption) bspb.ByteStreamClient {
	t.Helper()
	srv := grpc.NewServer(opts...)
	bspb.RegisterByteStreamServer(srv, s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), append(DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return bspb.NewByteStreamClient(conn)
}

// TestStreams: concurrent reads of different blobs through real gRPC, the
// server with and without the codec, the client with RecvChunk and with
// plain proto, all get their own bytes (a buffer reused before the
// transport wrote it, or a frame released before it was read, would show
// here, and under -race).
func TestStreams(t *testing.T) {
	for _, withCodec := range []bool{true, false} {
		blobs := make([][]byte, 6)
		for i := range blobs {
			blobs[i] = make([]byte, 3<<20+i*1000)
			r := rand.New(rand.NewPCG(uint64(i), 1))
			for j := range blobs[i] {
				blobs[i][j] = byte(r.Uint32())
			}
		}
		var opts []grpc.ServerOption
		if withCodec {
			opts = ServerOptions()
		}
		clients := make([]bspb.ByteStreamClient, len(blobs))
		for i := range blobs {
			clients[i] = serve(t, &streamer{blob: blobs[i], chunk: 256 << 10}, opts...)
		}
		var wg sync.WaitGroup
		for i := range blobs {
			for _, chunked := range []bool{true, false} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got, err := readAll(clients[i], chunked)
					if err != nil {
						t.Errorf("codec %v, blob %d, RecvChunk %v: %v", withCodec, i, chunked, err)
						return
					}
					if !bytes.Equal(got, blobs[i]) {
						t.Errorf("codec %v, blob %d, RecvChunk %v: received different bytes", withCodec, i, chunked)
					}
				}()
			}
		}
		wg.Wait()
	}
}

func readAll(c bspb.ByteStreamClient, chunked bool) ([]byte, error) {
	var opts []grpc.CallOption
	if chunked {
		opts = ReadCallOptions()
	}
	stream, err := c.Read(context.Background(), &bspb.ReadRequest{}, opts...)
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		if !chunked {
			resp, err := stream.Recv()
			if err == io.EOF {
				return out, nil
			}
			if err != nil {
				return out, err
			}
			out = append(out, resp.Data...)
			continue
		}
		var ch RecvChunk
		if err := stream.RecvMsg(&ch); err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, err
		}
		// Small reads, so that frames are released one by one.
		buf := make([]byte, 10_000)
		for {
			n, err := ch.Read(buf)
			out = append(out, buf[:n]...)
			if err == io.EOF {
				break
			}
		}
	}
}
