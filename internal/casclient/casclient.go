// Package casclient owns Hearth's client side of a remote REAPI server's
// storage: a cas.Store backed by the ContentAddressableStorage and ByteStream
// services, an actioncache.Store backed by the ActionCache service, and Dial,
// which opens the connection they share. `hearth worker` and `hearth run
// --remote` use them when the CAS is not local.
//
// gRPC status codes are turned back into the storage packages' sentinel
// errors (NOT_FOUND into cas.ErrNotFound or actioncache.ErrNotFound, and so
// on), wrapped with %w together with the original status, so callers test
// errors the same way whether a store is local or remote.
//
// Store and ActionCache retry what fails transiently (DefaultRetry, or
// WithRetry): unary calls whole, a ByteStream Read from the offset it
// reached, a ByteStream Write from the server's committed size or from 0
// under a new upload name (streamWriter says when each applies). On a
// DialAny connection the retry reaches the next server after a fail-over.
// A final error names the call and its attempts.
package casclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/grpcbulk"
)

// MaxMsgSize is the largest gRPC message Dial's connections send or accept.
// It matches the server's receive limit, which leaves room for a full batch
// call plus framing.
const MaxMsgSize = 16 << 20

// Client keepalive: a ping after KeepaliveTime without activity, and the
// connection is considered dead when no answer comes within
// KeepaliveTimeout. Pings are sent only while calls are in flight (the long
// executor session stream, a big upload), so a server must permit pings at
// least this often while streams are active: grpc-go's default server policy
// (one ping per 5 minutes) would close the connection with too_many_pings.
// `hearth server` permits one every 10s (keepalive.EnforcementPolicy).
const (
	KeepaliveTime    = 30 * time.Second
	KeepaliveTimeout = 20 * time.Second
)

// Transport sizes for Hearth's gRPC connections (the server uses the same).
// gRPC's defaults (32 KiB buffers, 64 KiB windows grown by BDP probing) cost
// a system call per 32 KiB and ramp up slowly; blob transfers move 1 MiB
// messages, so buffers of 1 MiB and windows of several MiB keep a
// ByteStream stream flowing. Fixed windows turn BDP probing off, which is
// right for the LAN and loopback links executors use.
const (
	TransportBufferSize = 1 << 20
	StreamWindowSize    = 4 << 20
	ConnWindowSize      = 16 << 20
)

// ErrBadTarget is wrapped by Dial when the target cannot be parsed.
var ErrBadTarget = errors.New("bad server address")

// Dial opens a client connection to a Hearth or other REAPI server. target
// is "grpc://host:port" or a bare "host:port" (plaintext: Hearth's default
// world is a loopback or trusted network), "grpcs://host:port" (TLS verified
// against the system roots) or "unix:///path/to/socket" (plaintext). The
// connection is established lazily on first use; ctx only bounds the
// validation done here, and is there so that Dial can become eager without
// changing its callers.
func Dial(ctx context.Context, target string) (*grpc.ClientConn, error) {
	return DialWith(ctx, target, DialOptions{})
}

// DialOptions refine Dial.
type DialOptions struct {
	// Timeout is given to every unary call that has no deadline of its own
	// (worker_api_endpoint.timeout). Streams (the executor session,
	// ByteStream transfers) are long by nature and unbounded.
	Timeout time.Duration
	// TLS replaces the system roots of a grpcs:// target (tls_config).
	TLS *tls.Config
	// Token, when set, is sent with every call as "authorization: Bearer
	// <Token>" (worker_api_endpoint.token_file, hearth run --token-file).
	Token string
	// Extra dial options, added last (e.g. metrics interceptors).
	Extra []grpc.DialOption
}

// bearer sends a token with every call. It does not insist on TLS: on
// loopback or a unix socket plaintext is fine, and off loopback the server
// refuses plaintext unless its operator chose --insecure.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// DialWith is Dial with options.
func DialWith(ctx context.Context, target string, o DialOptions) (*grpc.ClientConn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	addr, creds, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	if o.TLS != nil {
		if !strings.HasPrefix(target, "grpcs://") && !strings.HasPrefix(target, "https://") {
			return nil, fmt.Errorf("%w: %q: TLS settings need a grpcs:// target", ErrBadTarget, target)
		}
		creds = credentials.NewTLS(o.TLS)
	}
	conn, err := grpc.NewClient(addr, dialOptions(creds, o)...)
	if err != nil {
		return nil, fmt.Errorf("casclient: dial %q: %w", target, err)
	}
	return conn, nil
}

// dialOptions are the options of every connection Dial opens.
func dialOptions(creds credentials.TransportCredentials, o DialOptions) []grpc.DialOption {
	timeout := o.Timeout
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithReadBufferSize(TransportBufferSize), grpc.WithWriteBufferSize(TransportBufferSize),
		grpc.WithInitialWindowSize(StreamWindowSize), grpc.WithInitialConnWindowSize(ConnWindowSize),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMsgSize), grpc.MaxCallSendMsgSize(MaxMsgSize)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
	}
	// The transport's buffers are not zeroed: zeroing them was 12 % of a
	// large read's CPU (see grpcbulk).
	opts = append(opts, grpcbulk.DialOptions()...)
	if o.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(o.Token)))
	}
	if timeout > 0 {
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
			if _, ok := ctx.Deadline(); !ok {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			return invoker(ctx, method, req, reply, cc, callOpts...)
		}))
	}
	return append(opts, o.Extra...)
}

// parseTarget splits a Dial target into a gRPC target and its credentials.
func parseTarget(target string) (string, credentials.TransportCredentials, error) {
	scheme, rest, hasScheme := strings.Cut(target, "://")
	if !hasScheme {
		scheme, rest = "", target
	}
	var creds credentials.TransportCredentials
	switch scheme {
	case "", "grpc":
		creds = insecure.NewCredentials()
	case "grpcs":
		creds = credentials.NewClientTLSFromCert(nil, "")
	case "unix":
		if !strings.HasPrefix(rest, "/") {
			return "", nil, fmt.Errorf("%w: %q: a unix socket address needs an absolute path (unix:///path)", ErrBadTarget, target)
		}
		return target, insecure.NewCredentials(), nil
	default:
		return "", nil, fmt.Errorf("%w: %q: scheme %q is not supported (use grpc://, grpcs:// or unix://)", ErrBadTarget, target, scheme)
	}
	host, port, ok := cutPort(rest)
	if !ok || host == "" || strings.ContainsAny(rest, "/?#@") {
		return "", nil, fmt.Errorf("%w: %q: expected host:port", ErrBadTarget, target)
	}
	for _, c := range port {
		if c < '0' || c > '9' {
			return "", nil, fmt.Errorf("%w: %q: port %q is not a number", ErrBadTarget, target, port)
		}
	}
	// "passthrough" would skip DNS resolution's load balancing; "dns" is
	// grpc.NewClient's default and resolves every address of the host.
	return "dns:///" + rest, creds, nil
}

// cutPort splits "host:port" and "[v6]:port".
func cutPort(s string) (host, port string, ok bool) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || i == len(s)-1 {
		return "", "", false
	}
	host, port = s[:i], s[i+1:]
	if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") {
		return "", "", false
	}
	if !strings.HasPrefix(host, "[") && strings.Contains(host, ":") {
		return "", "", false // an IPv6 address needs brackets
	}
	return host, port, true
}

// op names what failed, for error messages and for choosing the sentinel of
// an INVALID_ARGUMENT answer.
type op int

const (
	opRead op = iota
	opWrite
	opOther
)

// fromStatus wraps err, the error of a call, with the sentinel its gRPC code
// stands for, keeping err (and so its status) in the chain.
func fromStatus(o op, what string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	switch status.Code(err) {
	case codes.NotFound:
		sentinel = cas.ErrNotFound
	case codes.OutOfRange:
		sentinel = cas.ErrOutOfRange
	case codes.InvalidArgument:
		// A write the server rejects is one whose bytes did not hash to
		// its digest (or a blob too large, reported the same way); other
		// calls are rejected for a malformed digest.
		if o == opWrite {
			sentinel = cas.ErrMismatch
		} else {
			sentinel = digest.ErrInvalid
		}
	case codes.Canceled:
		sentinel = context.Canceled
	case codes.DeadlineExceeded:
		sentinel = context.DeadlineExceeded
	}
	if sentinel == nil || errors.Is(err, sentinel) {
		return fmt.Errorf("casclient: %s: %w", what, err)
	}
	return fmt.Errorf("casclient: %s: %w: %w", what, sentinel, err)
}

// acFromStatus is fromStatus for the action cache, whose misses are
// actioncache.ErrNotFound.
func acFromStatus(what string, err error) error {
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("casclient: %s: %w: %w", what, actioncache.ErrNotFound, err)
	}
	return fromStatus(opOther, what, err)
}
