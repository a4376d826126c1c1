package grpcbulk

import (
	"errors"
	"fmt"
	"io"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	protoapi "google.golang.org/protobuf/proto"
)

// dataField is ReadResponse.data's field number (10), read from the
// descriptor so that a change of the proto cannot go unnoticed.
var dataField = (&bspb.ReadResponse{}).ProtoReflect().Descriptor().Fields().ByName("data").Number()

// protoCodec is gRPC's own proto codec, which codec delegates to.
var protoCodec = encoding.GetCodecV2(proto.Name)

// codec is gRPC's proto codec, except for a *SendChunk (marshalled as a
// header and the chunk's own buffer) and a *RecvChunk (unmarshalled by
// keeping the frames).
type codec struct{}

func (codec) Name() string { return proto.Name }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if c, ok := v.(*SendChunk); ok && c.buf != nil {
		return c.marshal(), nil
	}
	return protoCodec.Marshal(v)
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	if c, ok := v.(*RecvChunk); ok {
		return c.unmarshal(data)
	}
	return protoCodec.Unmarshal(data, v)
}

// SendChunk is one ReadResponse whose data buffer is handed to gRPC by
// SendMsg: the sender must not touch it afterwards. Through ServerOptions'
// codec the transport writes the buffer itself (no marshalled copy) and
// returns it to Pool once written; through any other codec it is
// marshalled as the ReadResponse it embeds, and the buffer is left to the
// garbage collector. Either way a new chunk is needed for the next message,
// which is what makes the hand-over safe: gRPC's transport writes after
// SendMsg has returned.
type SendChunk struct {
	*bspb.ReadResponse
	buf *[]byte // nil once handed over
}

// NewSendChunk returns a chunk whose Data is n bytes from Pool (not
// zeroed: fill it, then Truncate to what was filled).
func NewSendChunk(n int) *SendChunk {
	bp := Pool.Get(n)
	return &SendChunk{ReadResponse: &bspb.ReadResponse{Data: *bp}, buf: bp}
}

// Truncate keeps the first n bytes of Data.
func (c *SendChunk) Truncate(n int) {
	c.Data = c.Data[:n]
	*c.buf = (*c.buf)[:n]
}

// Release returns the buffer of a chunk that will not be sent.
func (c *SendChunk) Release() {
	if c.buf != nil {
		Pool.Put(c.buf)
		c.buf, c.Data = nil, nil
	}
}

// marshal hands the buffer over: the wire bytes are the tag and length of
// field data, then the buffer. Data is cleared so that nothing reads the
// buffer after the transport has returned it to the pool.
func (c *SendChunk) marshal() mem.BufferSlice {
	bp := c.buf
	c.buf, c.Data = nil, nil
	if len(*bp) == 0 {
		Pool.Put(bp) // proto3 does not encode an empty bytes field
		return nil
	}
	hdr := protowire.AppendTag(make([]byte, 0, 16), dataField, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(len(*bp)))
	return mem.BufferSlice{mem.SliceBuffer(hdr), mem.NewBuffer(bp, Pool)}
}

// ReadCallOptions are the call options of a ByteStream Read whose
// responses are received with RecvChunk. They work on any connection.
func ReadCallOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.ForceCodecV2(codec{})}
}

// RecvChunk receives one ReadResponse (stream.RecvMsg, on a call made with
// ReadCallOptions) as the gRPC frame buffers that hold its data, read out
// with Read: one copy, into the caller's buffer, instead of proto's two
// (reassembling the message, copying the bytes field). Close releases what
// was not read; a RecvChunk can receive again once empty or closed.
type RecvChunk struct {
	r mem.Reader
}

var errNotChunk = errors.New("grpcbulk: not the encoding of one data field")

// unmarshal keeps data's buffers when the message is the one data field
// servers send (tag, length, bytes); any other valid encoding goes through
// proto (the last data field wins, unknown fields are ignored).
func (c *RecvChunk) unmarshal(data mem.BufferSlice) error {
	c.r.Reset(data) // takes its own references; gRPC frees data after this
	if c.r.Remaining() == 0 {
		return nil // an empty message: no data
	}
	err := c.skipHeader()
	if err == nil {
		return nil
	}
	c.r.Close()
	var resp bspb.ReadResponse
	buf := data.Materialize()
	if perr := protoapi.Unmarshal(buf, &resp); perr != nil {
		return fmt.Errorf("grpcbulk: ReadResponse: %w", perr)
	}
	c.r.Reset(mem.BufferSlice{mem.SliceBuffer(resp.Data)})
	return nil
}

// skipHeader reads the tag and length of a data field and checks that the
// field's bytes are exactly the rest of the message.
func (c *RecvChunk) skipHeader() error {
	tag, err := c.varint()
	if err != nil {
		return err
	}
	num, typ := protowire.DecodeTag(tag)
	if num != dataField || typ != protowire.BytesType {
		return errNotChunk
	}
	n, err := c.varint()
	if err != nil {
		return err
	}
	if n != uint64(c.r.Remaining()) {
		return errNotChunk
	}
	return nil
}

func (c *RecvChunk) varint() (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, errNotChunk
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, errNotChunk
}

// Len is the number of bytes not read yet.
func (c *RecvChunk) Len() int { return c.r.Remaining() }

// Read copies out received bytes, releasing each frame once read; io.EOF
// once the chunk is empty.
func (c *RecvChunk) Read(p []byte) (int, error) {
	if c.r.Remaining() == 0 {
		return 0, io.EOF
	}
	return c.r.Read(p)
}

// Close releases the bytes not read.
func (c *RecvChunk) Close() { c.r.Close() }
