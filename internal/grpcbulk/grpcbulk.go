// Package grpcbulk owns the gRPC plumbing of bulk byte transfers, the
// ByteStream reads that move blobs of hundreds of MiB: a buffer pool that
// does not zero what it hands out, a server side that sends a ReadResponse's
// data without copying it into a marshalled message, and a client side that
// keeps the received frames instead of copying them twice into a message.
//
// Why. A profile of a 256 MiB ByteStream read (server and casclient in one
// process) had, besides the system calls and the copies a read needs,
// 12 % of the CPU in grpc-go's default buffer pool zeroing buffers it had
// just taken back (it clears a buffer's whole capacity, 1 MiB for a 256 KiB
// message), and three avoidable whole-blob copies: the server's proto
// marshal of each message, and on the client the message's reassembly from
// its 16 KiB frames plus proto's copy of the bytes field. On two shared
// cores the read is a CPU budget, so each of them was throughput.
//
// Everything here is wire compatible: the bytes on the wire are those of a
// proto-marshalled ReadResponse, and a client receives any valid encoding
// (unknown fields, a repeated data field) through the ordinary proto path.
package grpcbulk

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
)

// Pool is a mem.BufferPool that does not zero buffers: gRPC writes every
// byte of a buffer it takes from the pool before reading it (frames are
// read into it with io.ReadFull, messages marshalled over it; checked
// against grpc-go 1.84, which ships such a pool internally for the same
// reason), and so do this package's users.
var Pool mem.BufferPool = &dirtyPool{}

const (
	minPoolExp = 8  // 256 B: smaller buffers are not pooled by gRPC either
	maxPoolExp = 22 // 4 MiB: larger ones are allocated and dropped
)

// dirtyPool keeps one sync.Pool per power of two; a buffer goes back to the
// largest class its capacity covers, so any buffer taken from a class is at
// least that class's size.
type dirtyPool struct {
	classes [maxPoolExp - minPoolExp + 1]sync.Pool
}

func (p *dirtyPool) Get(n int) *[]byte {
	if n > 1<<maxPoolExp {
		b := make([]byte, n)
		return &b
	}
	e := minPoolExp
	if n > 1<<minPoolExp {
		e = bits.Len(uint(n - 1)) // the smallest 1<<e ≥ n
	}
	if bp, ok := p.classes[e-minPoolExp].Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, 1<<e)
	return &b
}

func (p *dirtyPool) Put(bp *[]byte) {
	c := cap(*bp)
	if c < 1<<minPoolExp {
		return
	}
	e := min(maxPoolExp, bits.Len(uint(c))-1) // largest 1<<e ≤ c
	p.classes[e-minPoolExp].Put(bp)
}

// ServerOptions are the options of a server whose ByteStream reads send
// with SendChunk: the codec that takes SendChunk's buffer without copying
// (every other message is marshalled by gRPC's proto codec), and Pool for
// the transport.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec{}), experimental.BufferPool(Pool)}
}

// DialOptions are the options of a client connection: Pool for the
// transport. (The receive codec is a per-call option, ReadCallOptions, so
// that a client works on any connection.)
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{experimental.WithBufferPool(Pool)}
}
