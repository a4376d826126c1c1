package workerproto_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/workerproto"
)

// fuzzMaxSize keeps each fuzz iteration cheap while still exercising the
// limit.
const fuzzMaxSize = 1 << 16

// fuzzRead decodes every message in data and checks the reader's contract:
// it stops with io.EOF, io.ErrUnexpectedEOF or ErrMalformed and nothing
// else (the input is in memory, so there are no I/O errors), and every
// message it returns survives a round trip through the same protocol.
func fuzzRead(t *testing.T, p workerproto.Protocol, data []byte) {
	rr := workerproto.NewResponseReader(p, bytes.NewReader(data), fuzzMaxSize)
	// Each successful Read consumes at least one byte, so this terminates.
	const maxRoundTrips = 4
	for i := range len(data) + 1 {
		resp, err := rr.Read()
		if err != nil {
			if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, workerproto.ErrMalformed) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if i >= maxRoundTrips {
			continue // keep iterations cheap on inputs holding many messages
		}
		var buf bytes.Buffer
		if err := workerproto.NewResponseWriter(p, &buf).Write(resp); err != nil {
			t.Fatalf("re-encoding %v: %v", resp, err)
		}
		again, err := workerproto.NewResponseReader(p, &buf, 0).Read()
		if err != nil || !proto.Equal(again, resp) {
			t.Fatalf("round trip of %v gave %v, %v", resp, again, err)
		}
	}
	t.Fatal("reader returned more messages than there are bytes")
}

func FuzzReadProtoResponse(f *testing.F) {
	for _, resp := range sampleResponses()[:3] {
		var buf bytes.Buffer
		if err := workerproto.NewResponseWriter(workerproto.Proto, &buf).Write(resp); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte{})
	f.Add([]byte{0x80})
	f.Add([]byte{0x05, 'a', 'b'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{0x02, 0x08, 0x01, 0x02, 0x10, 0x03})
	f.Add([]byte("\x07garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRead(t, workerproto.Proto, data)
	})
}

func FuzzReadJSONResponse(f *testing.F) {
	for _, resp := range sampleResponses()[:3] {
		var buf bytes.Buffer
		if err := workerproto.NewResponseWriter(workerproto.JSON, &buf).Write(resp); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte(""))
	f.Add([]byte("  \n"))
	f.Add([]byte(`{"exit_code":1,"request_id":2}{"exitCode":3}`))
	f.Add([]byte(`{"x":[{"y":"}\""}],"output":"\u00e9"}`))
	f.Add([]byte(`{"a":[1}`))
	f.Add([]byte("banner\n{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRead(t, workerproto.JSON, data)
	})
}

// Requests get the same treatment on the worker's side.
func TestRequestReaderErrorClasses(t *testing.T) {
	inputs := []string{"", "\x03\x0a\x01", "\x02\xff\xff", `{"arguments":["a"`, `{"arguments":"a"}`, "hello\n"}
	for _, p := range bothProtocols {
		for _, in := range inputs {
			_, err := workerproto.NewRequestReader(p, bytes.NewReader([]byte(in)), 0).Read()
			if err == nil {
				t.Errorf("%v: Read(%q) succeeded", p, in)
				continue
			}
			if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, workerproto.ErrMalformed) {
				t.Errorf("%v: Read(%q) error class %v", p, in, err)
			}
		}
	}
}
