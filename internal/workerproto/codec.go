package workerproto

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// encoder writes whole messages; decoder reads them. The message types only
// differ in the wrappers in protocol.go, so the framing is written once.
type encoder interface {
	encode(m proto.Message) error
}

type decoder interface {
	decode(m proto.Message) error
}

func newEncoder(p Protocol, w io.Writer) encoder {
	switch p {
	case Proto:
		return &frameEncoder{w: w, marshal: marshalDelimited}
	case JSON:
		return &frameEncoder{w: w, marshal: marshalJSONLine}
	}
	return badProtocol{p}
}

func newDecoder(p Protocol, r io.Reader, maxSize int) decoder {
	if maxSize <= 0 {
		maxSize = DefaultMaxMessageSize
	}
	switch p {
	case Proto:
		return &protoDecoder{r: bufio.NewReader(r), maxSize: maxSize}
	case JSON:
		return &jsonDecoder{r: bufio.NewReader(r), maxSize: maxSize}
	}
	return badProtocol{p}
}

// badProtocol stands in for a codec of an unknown protocol so that the
// constructors need not return errors for a programming mistake that must
// nevertheless not panic.
type badProtocol struct{ p Protocol }

func (b badProtocol) encode(proto.Message) error {
	return fmt.Errorf("%w: %v", ErrUnknownProtocol, b.p)
}

func (b badProtocol) decode(proto.Message) error {
	return fmt.Errorf("%w: %v", ErrUnknownProtocol, b.p)
}

// frameEncoder marshals a message into one buffer and writes it with a
// single Write under a lock: a multiplex worker (or Hearth sending a cancel
// while a request is in flight) may write from several goroutines, and a
// message split across Writes could interleave with another.
type frameEncoder struct {
	mu      sync.Mutex
	w       io.Writer
	marshal func(proto.Message) ([]byte, error)
}

func (e *frameEncoder) encode(m proto.Message) error {
	frame, err := e.marshal(m)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	_, err = e.w.Write(frame)
	return err
}

func marshalDelimited(m proto.Message) ([]byte, error) {
	size := proto.Size(m)
	frame := protowire.AppendVarint(make([]byte, 0, protowire.SizeVarint(uint64(size))+size), uint64(size))
	return proto.MarshalOptions{}.MarshalAppend(frame, m)
}

func marshalJSONLine(m proto.Message) ([]byte, error) {
	// protojson never emits a raw newline unless asked for multi-line
	// output (newlines inside strings are escaped), so the terminating
	// newline is the only one on the line.
	b, err := protojson.MarshalOptions{}.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// protoDecoder reads varint-length-prefixed messages.
type protoDecoder struct {
	r       *bufio.Reader
	maxSize int
}

func (d *protoDecoder) decode(m proto.Message) error {
	size, err := readVarint(d.r)
	if err != nil {
		return err
	}
	if size > uint64(d.maxSize) {
		return fmt.Errorf("%w: length prefix declares %d bytes, over the limit of %d", ErrMalformed, size, d.maxSize)
	}
	body, err := readGrowing(d.r, int(size))
	if err != nil {
		return err
	}
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, m); err != nil {
		return fmt.Errorf("%w: decoding %d-byte proto message: %v", ErrMalformed, size, err)
	}
	return nil
}

// readVarint reads a length prefix: io.EOF if the stream ends before its
// first byte, io.ErrUnexpectedEOF inside it, ErrMalformed if it is longer
// than any uint64.
func readVarint(r io.ByteReader) (uint64, error) {
	var x uint64
	for i := range protowire.SizeVarint(^uint64(0)) {
		c, err := r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if i == 0 {
					return 0, io.EOF
				}
				return 0, fmt.Errorf("workerproto: stream ended inside a length prefix: %w", io.ErrUnexpectedEOF)
			}
			return 0, fmt.Errorf("workerproto: reading length prefix: %w", err)
		}
		if i == 9 && c > 1 {
			break // bits beyond the 64th
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, nil
		}
	}
	return 0, fmt.Errorf("%w: length prefix overflows 64 bits", ErrMalformed)
}

// readGrowing reads exactly n bytes, growing its buffer only as bytes
// arrive, so a lying length prefix followed by a short stream costs memory
// in proportion to what was sent, not to what was declared.
func readGrowing(r io.Reader, n int) ([]byte, error) {
	const firstChunk = 64 << 10
	buf := make([]byte, 0, min(n, firstChunk))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, 2*cap(buf)))
			copy(grown, buf)
			buf = grown
		}
		got, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+got]
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("workerproto: stream ended after %d of %d message bytes: %w", len(buf), n, io.ErrUnexpectedEOF)
			}
			return nil, fmt.Errorf("workerproto: reading message: %w", err)
		}
	}
	return buf, nil
}

// jsonDecoder reads a stream of JSON objects. It finds the extent of one
// object itself (tracking strings and bracket nesting) so that it can bound
// the bytes it buffers and never reads past the end of the object: a
// standard streaming JSON decoder buffers without limit and reads ahead.
type jsonDecoder struct {
	r       *bufio.Reader
	maxSize int
}

func (d *jsonDecoder) decode(m proto.Message) error {
	first, err := d.skipSpace()
	if err != nil {
		return err
	}
	if first != '{' {
		return fmt.Errorf("%w: expected a JSON object, got %s (a worker must write only responses to stdout; logs belong on stderr)",
			ErrMalformed, d.garbageSnippet(first))
	}
	obj, err := d.readObject()
	if err != nil {
		return err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(obj, m); err != nil {
		return fmt.Errorf("%w: decoding %d-byte JSON message: %v", ErrMalformed, len(obj), err)
	}
	return nil
}

// skipSpace returns the first byte that is not JSON whitespace, or io.EOF
// when the stream ends first: whitespace between messages is not a message.
func (d *jsonDecoder) skipSpace() (byte, error) {
	for {
		c, err := d.r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, io.EOF
			}
			return 0, fmt.Errorf("workerproto: reading JSON message: %w", err)
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c, nil
	}
}

// garbageSnippet quotes the start of the offending line for the error
// message, so that a user can recognise what the worker printed.
func (d *jsonDecoder) garbageSnippet(first byte) string {
	const maxSnippet = 80
	snippet := []byte{first}
	for len(snippet) < maxSnippet && first != '\n' {
		c, err := d.r.ReadByte()
		if err != nil || c == '\n' {
			break
		}
		snippet = append(snippet, c)
	}
	return strconv.Quote(string(snippet))
}

// readObject reads the rest of an object whose '{' was already consumed and
// returns the whole object. Bracket mismatches are reported as soon as they
// are seen rather than after waiting for more input.
func (d *jsonDecoder) readObject() ([]byte, error) {
	obj := []byte{'{'}
	open := []byte{'}'} // closers expected, innermost last
	inString, escaped := false, false
	for len(open) > 0 {
		c, err := d.r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("workerproto: stream ended after %d bytes of a JSON message: %w", len(obj), io.ErrUnexpectedEOF)
			}
			return nil, fmt.Errorf("workerproto: reading JSON message: %w", err)
		}
		if len(obj) >= d.maxSize {
			return nil, fmt.Errorf("%w: JSON message longer than the limit of %d bytes", ErrMalformed, d.maxSize)
		}
		obj = append(obj, c)
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{':
			open = append(open, '}')
		case '[':
			open = append(open, ']')
		case '}', ']':
			if open[len(open)-1] != c {
				return nil, fmt.Errorf("%w: unbalanced %q at byte %d of a JSON message ending %s", ErrMalformed, c, len(obj), strconv.Quote(string(obj[max(0, len(obj)-80):])))
			}
			open = open[:len(open)-1]
		}
	}
	return obj, nil
}
