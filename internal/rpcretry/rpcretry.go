// Package rpcretry owns the retry and per-attempt deadline policy of
// outgoing gRPC calls, with the semantics of buildbox's clients (the
// --retry-limit, --retry-delay, --retry-on-code and --request-timeout flags a
// buildbox-worker passes to its runner): a call that fails with a retryable
// code is attempted again up to Limit more times, waiting Delay before the
// first retry and 1.6 times longer before each next one, and every attempt
// has its own deadline of Timeout.
//
// Unary calls are retried whole. A stream is retried while it opens, and a
// server-streaming call (ByteStream.Read) also when it fails before its
// first response, by replaying its one request; once a response has arrived,
// or for a client-streaming call once it opened, a failure is the caller's:
// the data already exchanged is not buffered for a replay.
//
// A client that knows how to resume its own calls (casclient resumes a
// ByteStream Read at the offset it reached and a Write at the server's
// committed size) drives the same Policy itself with Attempt and Again, and
// marks its calls with SelfRetried so that the interceptors of a connection
// it shares do not retry them a second time.
package rpcretry

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Backoff is the factor between consecutive retry delays (buildbox's).
const Backoff = 1.6

// Policy says how outgoing calls are retried and bounded. The zero Policy
// neither retries nor bounds.
type Policy struct {
	// Limit is the number of retries after the first attempt.
	Limit int
	// Delay is the wait before the first retry.
	Delay time.Duration
	// Codes are the retryable status codes; empty means UNAVAILABLE.
	Codes []codes.Code
	// Timeout bounds each attempt of each call (a stream's whole life);
	// zero means no bound beyond the caller's context.
	Timeout time.Duration
	// Logger gets a warning per retry; nil means slog.Default().
	Logger *slog.Logger
}

// ParseCode turns a gRPC status code name (UNAVAILABLE, "internal", ...)
// into its code.
func ParseCode(name string) (codes.Code, error) {
	var c codes.Code
	// codes.Code's UnmarshalJSON takes the quoted upper-case name.
	if err := c.UnmarshalJSON([]byte(`"` + strings.ToUpper(strings.TrimSpace(name)) + `"`)); err != nil || c == codes.OK {
		return 0, fmt.Errorf("%q is not a gRPC status code name (e.g. UNAVAILABLE, INTERNAL)", name)
	}
	return c, nil
}

// DialOptions are the interceptors that apply p to a connection's calls.
func (p Policy) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(p.unary), grpc.WithChainStreamInterceptor(p.stream)}
}

func (p Policy) retryable(err error) bool {
	c := status.Code(err)
	if len(p.Codes) == 0 {
		return c == codes.Unavailable
	}
	return slices.Contains(p.Codes, c)
}

// delay is the wait before retry number n (0-based).
func (p Policy) delay(n int) time.Duration {
	return time.Duration(float64(p.Delay) * math.Pow(Backoff, float64(n)))
}

// again reports whether attempt n (0-based) that failed with err is to be
// retried, after waiting its delay; false if the caller's ctx ended first.
func (p Policy) again(ctx context.Context, method string, n int, err error) bool {
	if err == nil || n >= p.Limit || !p.retryable(err) || ctx.Err() != nil {
		return false
	}
	d := p.delay(n)
	logger := p.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger.Warn("gRPC call failed, retrying", "method", method, "attempt", n+1, "attempts", p.Limit+1, "code", status.Code(err).String(), "err", status.Convert(err).Message(), "retry_in", d)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// attempt is the context of one attempt: the caller's, bounded by Timeout.
func (p Policy) attempt(ctx context.Context) (context.Context, context.CancelFunc) {
	if p.Timeout > 0 {
		return context.WithTimeout(ctx, p.Timeout)
	}
	return context.WithCancel(ctx)
}

// selfRetried marks the context of a call whose caller retries it.
type selfRetried struct{}

// SelfRetried marks ctx's calls as retried (and bounded) by their caller:
// the interceptors of DialOptions pass them through untouched, so that a
// call is never retried by two layers (the attempts would multiply).
func SelfRetried(ctx context.Context) context.Context {
	return context.WithValue(ctx, selfRetried{}, true)
}

func isSelfRetried(ctx context.Context) bool {
	v, _ := ctx.Value(selfRetried{}).(bool)
	return v
}

// Retryable reports whether err's status code is one p retries.
func (p Policy) Retryable(err error) bool { return err != nil && p.retryable(err) }

// Attempt returns the context of one attempt of a call: ctx bounded by
// Timeout. The caller cancels it when the attempt is over.
func (p Policy) Attempt(ctx context.Context) (context.Context, context.CancelFunc) {
	return p.attempt(ctx)
}

// Again reports whether attempt n (0-based) of the call named what, which
// failed with err, is to be retried: err's code is retryable, retries are
// left and ctx is live. It logs the retry and waits its delay first; false
// if ctx ended meanwhile.
func (p Policy) Again(ctx context.Context, what string, n int, err error) bool {
	return p.again(ctx, what, n, err)
}

func (p Policy) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if isSelfRetried(ctx) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	for n := 0; ; n++ {
		actx, cancel := p.attempt(ctx)
		err := invoker(actx, method, req, reply, cc, opts...)
		cancel()
		if !p.again(ctx, method, n, err) {
			return err
		}
	}
}

func (p Policy) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if isSelfRetried(ctx) {
		return streamer(ctx, desc, cc, method, opts...)
	}
	s := &retryStream{p: p, ctx: ctx, desc: desc, cc: cc, method: method, streamer: streamer, opts: opts}
	var err error
	for s.n = 0; ; s.n++ {
		if err = s.open(); err == nil {
			return s, nil
		}
		if !p.again(ctx, method, s.n, err) {
			return nil, err
		}
	}
}

// retryStream is one call's stream; for a server-streaming call it keeps
// the request so that it can replay it on a new stream while no response
// has arrived.
type retryStream struct {
	grpc.ClientStream
	p        Policy
	ctx      context.Context
	cancel   context.CancelFunc
	desc     *grpc.StreamDesc
	cc       *grpc.ClientConn
	method   string
	streamer grpc.Streamer
	opts     []grpc.CallOption
	n        int // attempts so far, minus one

	req        any  // the server-streaming call's request, once sent
	closedSend bool // CloseSend was called
	received   bool // a response arrived: no more replays
}

func (s *retryStream) open() error {
	actx, cancel := s.p.attempt(s.ctx)
	cs, err := s.streamer(actx, s.desc, s.cc, s.method, s.opts...)
	if err != nil {
		cancel()
		return err
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.ClientStream, s.cancel = cs, cancel
	return nil
}

func (s *retryStream) replayable() bool {
	return s.desc.ServerStreams && !s.desc.ClientStreams && !s.received
}

func (s *retryStream) SendMsg(m any) error {
	if s.replayable() {
		s.req = m
	}
	return s.ClientStream.SendMsg(m)
}

func (s *retryStream) CloseSend() error {
	s.closedSend = true
	return s.ClientStream.CloseSend()
}

func (s *retryStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	for err != nil && s.replayable() && s.req != nil && s.p.again(s.ctx, s.method, s.n, err) {
		s.n++
		err = s.reopen()
		if err == nil {
			err = s.ClientStream.RecvMsg(m)
		}
	}
	if err == nil {
		s.received = true
	} else {
		// The stream is over (io.EOF or a failure): release its attempt's
		// timer.
		s.cancel()
	}
	return err
}

// reopen opens a new stream and resends the request (and CloseSend).
func (s *retryStream) reopen() error {
	if err := s.open(); err != nil {
		return err
	}
	if err := s.ClientStream.SendMsg(s.req); err != nil {
		return err
	}
	if s.closedSend {
		return s.ClientStream.CloseSend()
	}
	return nil
}
