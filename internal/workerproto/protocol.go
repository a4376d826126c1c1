// Package workerproto owns the wire framing of Bazel's persistent worker
// protocol: how WorkRequest and WorkResponse messages travel over a worker
// process's stdin and stdout, in either of the two encodings Bazel defines.
//
//   - Proto: each message is preceded by its length as a base-128 varint.
//   - JSON: each message is one protojson object. Writers put exactly one
//     object on a line (camelCase field names, default values omitted), which
//     is what line-oriented workers expect. Readers are lenient the way
//     Bazel's is: they accept a stream of objects separated by any whitespace
//     (or none), both camelCase and original proto field names, and ignore
//     unknown fields.
//
// Both sides are here: Hearth uses RequestWriter and ResponseReader to talk to
// a worker; RequestReader and ResponseWriter implement the worker's side (for
// the test worker and for tests).
//
// Readers never panic and never hold more than about twice the bytes that
// actually arrived for one message, and never more than maxSize: a declared
// length or a JSON object beyond maxSize is rejected before it is read. Every
// malformed input yields an error wrapping ErrMalformed. Anything a worker
// prints on stdout that is not a message - a startup banner, a stray log
// line - is malformed input too: a worker must keep its logs on stderr, and
// the caller is expected to discard such a worker and fall back to running
// the action without it. Note that on the proto channel stray text is read
// as a length prefix, so it may also surface as a wait for bytes that never
// come; callers bound every read with a deadline.
package workerproto

import (
	"errors"
	"fmt"
	"io"
	"strings"

	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// Protocol is the encoding of messages on a worker's stdin and stdout. The
// zero value is Proto, Bazel's default.
type Protocol int

const (
	// Proto frames binary protobuf messages with varint length prefixes.
	Proto Protocol = iota
	// JSON writes one protojson object per line.
	JSON
)

// DefaultMaxMessageSize bounds a single message when a reader is created
// with maxSize <= 0. It matches the largest output a worker could sensibly
// report for one action while keeping a misbehaving worker from exhausting
// memory.
const DefaultMaxMessageSize = 64 << 20

var (
	// ErrMalformed is wrapped by every error caused by bytes that are not a
	// valid message: bad framing, undecodable content, an oversized message,
	// or text that is not a message at all (such as a startup banner).
	ErrMalformed = errors.New("workerproto: malformed worker protocol message")
	// ErrUnknownProtocol is wrapped when a protocol name or value is neither
	// proto nor JSON.
	ErrUnknownProtocol = errors.New("workerproto: unknown worker protocol")
)

// ParseProtocol parses "proto" or "json" (in any letter case), the values
// Bazel uses for requires-worker-protocol.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "proto":
		return Proto, nil
	case "json":
		return JSON, nil
	}
	return 0, fmt.Errorf("%w %q: want \"proto\" or \"json\"", ErrUnknownProtocol, s)
}

// String returns "proto" or "json", the names ParseProtocol accepts.
func (p Protocol) String() string {
	switch p {
	case Proto:
		return "proto"
	case JSON:
		return "json"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// RequestWriter sends WorkRequests to a worker's stdin. Write is safe for
// concurrent use; each message reaches the underlying writer in a single
// Write call, so concurrent messages never interleave.
type RequestWriter interface {
	Write(req *pb.WorkRequest) error
}

// ResponseReader reads WorkResponses from a worker's stdout. It returns
// io.EOF when the stream ends cleanly between messages, an error wrapping
// io.ErrUnexpectedEOF when it ends inside one, and an error wrapping
// ErrMalformed for anything that is not a valid message. It is not safe for
// concurrent use, and it buffers: nothing else may read the same stream.
type ResponseReader interface {
	Read() (*pb.WorkResponse, error)
}

// RequestReader is the worker's side of RequestWriter, with the same error
// contract as ResponseReader.
type RequestReader interface {
	Read() (*pb.WorkRequest, error)
}

// ResponseWriter is the worker's side of ResponseReader, with the same
// concurrency guarantee as RequestWriter.
type ResponseWriter interface {
	Write(resp *pb.WorkResponse) error
}

// NewRequestWriter returns a writer of requests to w in protocol p. With an
// unknown protocol every Write fails with ErrUnknownProtocol.
func NewRequestWriter(p Protocol, w io.Writer) RequestWriter {
	return requestWriter{newEncoder(p, w)}
}

// NewResponseReader returns a reader of responses from r in protocol p,
// rejecting any message larger than maxSize bytes (DefaultMaxMessageSize
// when maxSize <= 0). With an unknown protocol every Read fails with
// ErrUnknownProtocol.
func NewResponseReader(p Protocol, r io.Reader, maxSize int) ResponseReader {
	return responseReader{newDecoder(p, r, maxSize)}
}

// NewRequestReader returns a reader of requests from r, as a worker reads
// its stdin. maxSize is as for NewResponseReader.
func NewRequestReader(p Protocol, r io.Reader, maxSize int) RequestReader {
	return requestReader{newDecoder(p, r, maxSize)}
}

// NewResponseWriter returns a writer of responses to w, as a worker writes
// its stdout.
func NewResponseWriter(p Protocol, w io.Writer) ResponseWriter {
	return responseWriter{newEncoder(p, w)}
}

type requestWriter struct{ enc encoder }

func (w requestWriter) Write(req *pb.WorkRequest) error {
	if req == nil {
		return errors.New("workerproto: writing a nil WorkRequest")
	}
	if err := w.enc.encode(req); err != nil {
		return fmt.Errorf("workerproto: writing WorkRequest %d: %w", req.GetRequestId(), err)
	}
	return nil
}

type responseWriter struct{ enc encoder }

func (w responseWriter) Write(resp *pb.WorkResponse) error {
	if resp == nil {
		return errors.New("workerproto: writing a nil WorkResponse")
	}
	if err := w.enc.encode(resp); err != nil {
		return fmt.Errorf("workerproto: writing WorkResponse %d: %w", resp.GetRequestId(), err)
	}
	return nil
}

type responseReader struct{ dec decoder }

func (r responseReader) Read() (*pb.WorkResponse, error) {
	resp := new(pb.WorkResponse)
	if err := r.dec.decode(resp); err != nil {
		return nil, err
	}
	return resp, nil
}

type requestReader struct{ dec decoder }

func (r requestReader) Read() (*pb.WorkRequest, error) {
	req := new(pb.WorkRequest)
	if err := r.dec.decode(req); err != nil {
		return nil, err
	}
	return req, nil
}
