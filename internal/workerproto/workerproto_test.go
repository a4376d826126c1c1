package workerproto_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/workerproto"
	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

var bothProtocols = []workerproto.Protocol{workerproto.Proto, workerproto.JSON}

func TestParseProtocol(t *testing.T) {
	tests := []struct {
		in      string
		want    workerproto.Protocol
		wantErr bool
	}{
		{in: "proto", want: workerproto.Proto},
		{in: "PROTO", want: workerproto.Proto},
		{in: "json", want: workerproto.JSON},
		{in: "Json", want: workerproto.JSON},
		{in: "", wantErr: true},
		{in: "xml", wantErr: true},
		{in: " proto", wantErr: true},
		{in: "protobuf", wantErr: true},
	}
	for _, tc := range tests {
		got, err := workerproto.ParseProtocol(tc.in)
		if tc.wantErr {
			if !errors.Is(err, workerproto.ErrUnknownProtocol) {
				t.Errorf("ParseProtocol(%q) error = %v, want ErrUnknownProtocol", tc.in, err)
			} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.in)) {
				t.Errorf("ParseProtocol(%q) error %q does not name the value", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseProtocol(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		// String gives back a name that parses to the same protocol.
		if again, err := workerproto.ParseProtocol(got.String()); err != nil || again != got {
			t.Errorf("ParseProtocol(%v.String()) = %v, %v", got, again, err)
		}
	}
	if s := workerproto.Protocol(9).String(); s != "Protocol(9)" {
		t.Errorf("Protocol(9).String() = %q", s)
	}
}

func sampleRequests() []*pb.WorkRequest {
	return []*pb.WorkRequest{
		{},
		{Arguments: []string{"--out=a.txt", "--content=line one\nline two", "ünïcödé", ""}},
		{
			Arguments:  []string{"-c", "x.c"},
			Inputs:     []*pb.Input{{Path: "src/x.c", Digest: []byte("e3b0c44298fc1c149afbf4c8996fb924")}, {Path: "tool", Digest: []byte{0, 1, 0xff}}},
			RequestId:  42,
			Verbosity:  10,
			SandboxDir: "sandbox/42",
		},
		{RequestId: 42, Cancel: true},
		{RequestId: -7},
	}
}

func sampleResponses() []*pb.WorkResponse {
	return []*pb.WorkResponse{
		{},
		{ExitCode: 1, Output: "error: x.c:1: \"quoted\" {braces} [brackets]\n\ttab"},
		{RequestId: 42, WasCancelled: true},
		{ExitCode: -1, Output: strings.Repeat("long output ", 20000), RequestId: 2147483647},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, p := range bothProtocols {
		for _, oneByte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/oneByte=%v", p, oneByte), func(t *testing.T) {
				var buf bytes.Buffer
				w := workerproto.NewRequestWriter(p, &buf)
				want := sampleRequests()
				for _, req := range want {
					if err := w.Write(req); err != nil {
						t.Fatalf("Write: %v", err)
					}
				}
				var r io.Reader = &buf
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				rr := workerproto.NewRequestReader(p, r, 0)
				for i, w := range want {
					got, err := rr.Read()
					if err != nil {
						t.Fatalf("Read %d: %v", i, err)
					}
					if !proto.Equal(got, w) {
						t.Fatalf("Read %d = %v, want %v", i, got, w)
					}
				}
				if got, err := rr.Read(); err != io.EOF {
					t.Fatalf("Read after last message = %v, %v; want io.EOF", got, err)
				}
			})
		}
	}
}

func TestResponseRoundTrip(t *testing.T) {
	for _, p := range bothProtocols {
		for _, oneByte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/oneByte=%v", p, oneByte), func(t *testing.T) {
				var buf bytes.Buffer
				w := workerproto.NewResponseWriter(p, &buf)
				want := sampleResponses()
				for _, resp := range want {
					if err := w.Write(resp); err != nil {
						t.Fatalf("Write: %v", err)
					}
				}
				var r io.Reader = &buf
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				rr := workerproto.NewResponseReader(p, r, 0)
				for i, w := range want {
					got, err := rr.Read()
					if err != nil {
						t.Fatalf("Read %d: %v", i, err)
					}
					if !proto.Equal(got, w) {
						t.Fatalf("Read %d = %.200v, want %.200v", i, got, w)
					}
				}
				if got, err := rr.Read(); err != io.EOF {
					t.Fatalf("Read after last message = %v, %v; want io.EOF", got, err)
				}
			})
		}
	}
}

// JSON requests go out one object per line with camelCase names, which is
// what line-oriented workers (and Bazel's own JSON readers) expect.
func TestJSONWriterOneObjectPerLine(t *testing.T) {
	var buf bytes.Buffer
	w := workerproto.NewRequestWriter(workerproto.JSON, &buf)
	reqs := sampleRequests()
	for _, req := range reqs {
		if err := w.Write(req); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(buf.String(), "\n")
	if len(lines) != len(reqs)+1 || lines[len(lines)-1] != "" {
		t.Fatalf("want %d newline-terminated lines, got %q", len(reqs), buf.String())
	}
	third := lines[2]
	for _, name := range []string{`"requestId"`, `"sandboxDir"`, `"arguments"`, `"inputs"`, `"digest"`} {
		if !strings.Contains(third, name) {
			t.Errorf("JSON request %s lacks %s", third, name)
		}
	}
	if strings.Contains(third, "request_id") || strings.Contains(third, "sandbox_dir") {
		t.Errorf("JSON request %s uses proto field names", third)
	}
	if strings.TrimSpace(lines[0]) != "{}" {
		t.Errorf("empty request written as %q, want {} (defaults omitted)", lines[0])
	}
}

func TestJSONReaderLenience(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []*pb.WorkResponse
	}{
		{
			name: "camelCase",
			in:   `{"exitCode":1,"output":"x","requestId":3,"wasCancelled":true}` + "\n",
			want: []*pb.WorkResponse{{ExitCode: 1, Output: "x", RequestId: 3, WasCancelled: true}},
		},
		{
			name: "proto names",
			in:   `{"exit_code":1,"output":"x","request_id":3,"was_cancelled":true}`,
			want: []*pb.WorkResponse{{ExitCode: 1, Output: "x", RequestId: 3, WasCancelled: true}},
		},
		{
			name: "unknown fields of every shape",
			in:   `{"exitCode":2,"future":{"nested":[1,2,{"a":"}]"}]},"flag":true,"n":null,"s":"x"}`,
			want: []*pb.WorkResponse{{ExitCode: 2}},
		},
		{
			name: "back to back without separator",
			in:   `{"exitCode":1}{"exitCode":2}`,
			want: []*pb.WorkResponse{{ExitCode: 1}, {ExitCode: 2}},
		},
		{
			name: "pretty printed across lines with blank lines between",
			in:   "\n{\n  \"exitCode\": 1,\r\n\t\"output\": \"a\"\n}\n\n   {\"exitCode\":2}\n\n",
			want: []*pb.WorkResponse{{ExitCode: 1, Output: "a"}, {ExitCode: 2}},
		},
		{
			name: "braces quotes and escapes inside strings",
			in:   `{"output":"a } \" { ] [ \\\\ \\"}{"output":"\u00e9\n"}`,
			want: []*pb.WorkResponse{{Output: `a } " { ] [ \\ \`}, {Output: "é\n"}},
		},
		{
			name: "empty object is a default response",
			in:   `{}`,
			want: []*pb.WorkResponse{{}},
		},
		{
			name: "numbers as strings, as protojson allows",
			in:   `{"requestId":"3","exitCode":-1}`,
			want: []*pb.WorkResponse{{RequestId: 3, ExitCode: -1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rr := workerproto.NewResponseReader(workerproto.JSON, iotest.OneByteReader(strings.NewReader(tc.in)), 0)
			for i, want := range tc.want {
				got, err := rr.Read()
				if err != nil {
					t.Fatalf("Read %d: %v", i, err)
				}
				if !proto.Equal(got, want) {
					t.Fatalf("Read %d = %v, want %v", i, got, want)
				}
			}
			if _, err := rr.Read(); err != io.EOF {
				t.Fatalf("Read after last message: %v, want io.EOF", err)
			}
		})
	}
}

// Unknown fields from a newer protocol version are skipped on the proto
// channel too.
func TestProtoReaderSkipsUnknownFields(t *testing.T) {
	body, err := proto.Marshal(&pb.WorkResponse{ExitCode: 5, Output: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	body = protowire.AppendTag(body, 99, protowire.BytesType)
	body = protowire.AppendBytes(body, []byte("from the future"))
	body = protowire.AppendTag(body, 100, protowire.VarintType)
	body = protowire.AppendVarint(body, 7)
	frame := protowire.AppendVarint(nil, uint64(len(body)))
	frame = append(frame, body...)

	got, err := workerproto.NewResponseReader(workerproto.Proto, bytes.NewReader(frame), 0).Read()
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, &pb.WorkResponse{ExitCode: 5, Output: "ok"}) {
		t.Fatalf("got %v", got)
	}
}

func frame(body []byte) []byte {
	return append(protowire.AppendVarint(nil, uint64(len(body))), body...)
}

func TestReadErrors(t *testing.T) {
	type kind int
	const (
		eof kind = iota
		unexpectedEOF
		malformed
	)
	invalidUTF8 := protowire.AppendTag(nil, 2, protowire.BytesType)
	invalidUTF8 = protowire.AppendBytes(invalidUTF8, []byte{0xff, 0xfe})
	tests := []struct {
		name    string
		p       workerproto.Protocol
		in      string
		maxSize int
		want    kind
		// wantText must appear in the error message.
		wantText string
	}{
		{name: "empty stream", p: workerproto.Proto, in: "", want: eof},
		{name: "inside length prefix", p: workerproto.Proto, in: "\x80\x80", want: unexpectedEOF},
		{name: "inside body", p: workerproto.Proto, in: "\x05ab", want: unexpectedEOF, wantText: "2 of 5"},
		{name: "length prefix overflows", p: workerproto.Proto, in: strings.Repeat("\xff", 10) + "\x01", want: malformed},
		{name: "tenth prefix byte too big", p: workerproto.Proto, in: strings.Repeat("\xff", 9) + "\x02", want: malformed},
		{name: "length over limit", p: workerproto.Proto, in: string(frame(make([]byte, 101))), maxSize: 100, want: malformed, wantText: "101"},
		{name: "huge length prefix", p: workerproto.Proto, in: string(protowire.AppendVarint(nil, 1<<62)), want: malformed},
		{name: "invalid wire type", p: workerproto.Proto, in: string(frame([]byte{0x07, 0x01})), want: malformed},
		{name: "field number zero", p: workerproto.Proto, in: string(frame([]byte{0x00, 0x01})), want: malformed},
		{name: "invalid UTF-8 in output", p: workerproto.Proto, in: string(frame(invalidUTF8)), want: malformed},

		{name: "empty stream", p: workerproto.JSON, in: "", want: eof},
		{name: "whitespace only", p: workerproto.JSON, in: " \n\t\r\n", want: eof},
		{name: "startup banner", p: workerproto.JSON, in: "Starting worker v1.2\n{\"exitCode\":0}\n", want: malformed, wantText: `"Starting worker v1.2"`},
		{name: "array", p: workerproto.JSON, in: "[1]", want: malformed},
		{name: "string", p: workerproto.JSON, in: `"x"`, want: malformed},
		{name: "truncated", p: workerproto.JSON, in: `{"exitCode":1`, want: unexpectedEOF},
		{name: "truncated in string", p: workerproto.JSON, in: `{"output":"abc}`, want: unexpectedEOF},
		{name: "wrong type", p: workerproto.JSON, in: `{"exitCode":"many"}`, want: malformed},
		{name: "unquoted names", p: workerproto.JSON, in: `{exitCode:1}`, want: malformed},
		{name: "mismatched brackets", p: workerproto.JSON, in: `{"a":[1}` + strings.Repeat(" ", 10), want: malformed},
		{name: "over limit", p: workerproto.JSON, in: `{"output":"` + strings.Repeat("x", 100) + `"}`, maxSize: 50, want: malformed, wantText: "50"},
		{name: "duplicate field", p: workerproto.JSON, in: `{"exitCode":1,"exit_code":2}`, want: malformed},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%v/%s", tc.p, tc.name), func(t *testing.T) {
			got, err := workerproto.NewResponseReader(tc.p, strings.NewReader(tc.in), tc.maxSize).Read()
			if got != nil {
				t.Errorf("Read returned a message %v with error %v", got, err)
			}
			switch tc.want {
			case eof:
				if err != io.EOF {
					t.Fatalf("error = %v, want io.EOF", err)
				}
			case unexpectedEOF:
				if !errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, workerproto.ErrMalformed) {
					t.Fatalf("error = %v, want io.ErrUnexpectedEOF", err)
				}
			case malformed:
				if !errors.Is(err, workerproto.ErrMalformed) {
					t.Fatalf("error = %v, want ErrMalformed", err)
				}
			}
			if tc.wantText != "" && !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("error %q does not mention %q", err, tc.wantText)
			}
		})
	}
}

// A length prefix that promises a lot of bytes costs memory only for the
// bytes that actually arrive.
func TestLyingLengthPrefixDoesNotAllocateDeclaredSize(t *testing.T) {
	declared := uint64(60 << 20) // under the default limit
	in := append(protowire.AppendVarint(nil, declared), "short"...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := workerproto.NewResponseReader(workerproto.Proto, bytes.NewReader(in), 0).Read()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("error = %v, want io.ErrUnexpectedEOF", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("reading a 5-byte body declared as %d bytes allocated %d bytes", declared, grew)
	}
}

func TestReadPassesThroughIOErrors(t *testing.T) {
	boom := errors.New("pipe broke")
	for _, p := range bothProtocols {
		_, err := workerproto.NewResponseReader(p, iotest.ErrReader(boom), 0).Read()
		if !errors.Is(err, boom) || errors.Is(err, workerproto.ErrMalformed) {
			t.Errorf("%v: error = %v, want the reader's error", p, err)
		}
		// The same error inside a message.
		partial := map[workerproto.Protocol]string{workerproto.Proto: "\x05a", workerproto.JSON: `{"a":`}[p]
		r := io.MultiReader(strings.NewReader(partial), iotest.ErrReader(boom))
		_, err = workerproto.NewResponseReader(p, r, 0).Read()
		if !errors.Is(err, boom) {
			t.Errorf("%v: mid-message error = %v, want the reader's error", p, err)
		}
	}
}

func TestUnknownProtocolAndNilMessages(t *testing.T) {
	bad := workerproto.Protocol(7)
	if err := workerproto.NewRequestWriter(bad, io.Discard).Write(&pb.WorkRequest{}); !errors.Is(err, workerproto.ErrUnknownProtocol) {
		t.Errorf("Write with unknown protocol: %v", err)
	}
	if err := workerproto.NewResponseWriter(bad, io.Discard).Write(&pb.WorkResponse{}); !errors.Is(err, workerproto.ErrUnknownProtocol) {
		t.Errorf("Write with unknown protocol: %v", err)
	}
	if _, err := workerproto.NewResponseReader(bad, strings.NewReader("{}"), 0).Read(); !errors.Is(err, workerproto.ErrUnknownProtocol) {
		t.Errorf("Read with unknown protocol: %v", err)
	}
	if _, err := workerproto.NewRequestReader(bad, strings.NewReader("{}"), 0).Read(); !errors.Is(err, workerproto.ErrUnknownProtocol) {
		t.Errorf("Read with unknown protocol: %v", err)
	}
	for _, p := range bothProtocols {
		var buf bytes.Buffer
		if err := workerproto.NewRequestWriter(p, &buf).Write(nil); err == nil {
			t.Errorf("%v: writing a nil request succeeded", p)
		}
		if err := workerproto.NewResponseWriter(p, &buf).Write(nil); err == nil {
			t.Errorf("%v: writing a nil response succeeded", p)
		}
		if buf.Len() != 0 {
			t.Errorf("%v: nil writes wrote %q", p, buf.String())
		}
	}
}

// A multiplex worker writes responses from many goroutines; each must reach
// the stream whole.
func TestConcurrentWritesDoNotInterleave(t *testing.T) {
	for _, p := range bothProtocols {
		t.Run(p.String(), func(t *testing.T) {
			pr, pw := io.Pipe()
			w := workerproto.NewResponseWriter(p, pw)
			const n = 50
			var wg sync.WaitGroup
			for i := 1; i <= n; i++ {
				wg.Go(func() {
					resp := &pb.WorkResponse{RequestId: int32(i), Output: strings.Repeat(fmt.Sprint(i), 5000)}
					if err := w.Write(resp); err != nil {
						t.Errorf("Write %d: %v", i, err)
					}
				})
			}
			go func() { wg.Wait(); pw.Close() }()
			rr := workerproto.NewResponseReader(p, pr, 0)
			seen := map[int32]bool{}
			for {
				resp, err := rr.Read()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if want := strings.Repeat(fmt.Sprint(resp.RequestId), 5000); resp.Output != want || seen[resp.RequestId] {
					t.Fatalf("response %d garbled or repeated", resp.RequestId)
				}
				seen[resp.RequestId] = true
			}
			if len(seen) != n {
				t.Fatalf("read %d responses, want %d", len(seen), n)
			}
		})
	}
}
