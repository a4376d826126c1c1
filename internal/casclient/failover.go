package casclient

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// failoverScheme names the resolver DialAny gives each of its connections
// (resolvers given with grpc.WithResolvers are private to the connection).
const failoverScheme = "hearth-servers"

// FailoverBackoff is how a DialAny connection retries once every server has
// failed: from 100 ms growing to at most 10 s, as the executor's own session
// reconnects, instead of gRPC's default that grows to two minutes and would
// leave a worker idle long after a replica came back.
var FailoverBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 10 * time.Second}

// DialAny opens one connection over several servers that serve the same
// state (`hearth server` replicas sharing scheduler state in Redis): it uses
// the first server in targets that accepts a connection and, when that
// connection fails or the server goes away, the next one that does, in
// order (gRPC's pick_first policy). Every call made on the connection
// follows — the executor session, CAS and action cache calls — so a worker
// moves to another replica as a whole. Calls in flight on a connection that
// breaks fail (UNAVAILABLE); new calls go to the next server, and Store's
// and ActionCache's retries (DefaultRetry) are such new calls.
//
// targets are grpc://host:port or all grpcs://host:port (one TLS setting
// serves them all); a single target of any form Dial accepts is DialWith.
func DialAny(ctx context.Context, targets []string, o DialOptions) (*grpc.ClientConn, error) {
	switch len(targets) {
	case 0:
		return nil, fmt.Errorf("%w: no server address", ErrBadTarget)
	case 1:
		return DialWith(ctx, targets[0], o)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var (
		addrs   []resolver.Address
		secure  bool
		creds   credentials.TransportCredentials
		present = map[string]string{}
	)
	for i, target := range targets {
		scheme, _, _ := strings.Cut(target, "://")
		if scheme != "grpc" && scheme != "grpcs" {
			return nil, fmt.Errorf("%w: %q: with several servers each must be grpc://host:port or grpcs://host:port", ErrBadTarget, target)
		}
		addr, c, err := parseTarget(target)
		if err != nil {
			return nil, err
		}
		hostPort := strings.TrimPrefix(addr, "dns:///")
		if prev, dup := present[hostPort]; dup {
			return nil, fmt.Errorf("%w: %q names the same server as %q", ErrBadTarget, target, prev)
		}
		present[hostPort] = target
		if i == 0 {
			secure, creds = scheme == "grpcs", c
		} else if (scheme == "grpcs") != secure {
			return nil, fmt.Errorf("%w: %q: every server must use TLS (grpcs://) or none (grpc://), as %q does", ErrBadTarget, target, targets[0])
		}
		host, _, _ := net.SplitHostPort(hostPort)
		// ServerName is the TLS name checked against each server's
		// certificate (and the :authority sent to it).
		addrs = append(addrs, resolver.Address{Addr: hostPort, ServerName: host})
	}
	if o.TLS != nil {
		if !secure {
			return nil, fmt.Errorf("%w: %q: TLS settings need grpcs:// targets", ErrBadTarget, targets[0])
		}
		creds = credentials.NewTLS(o.TLS)
	}
	r := manual.NewBuilderWithScheme(failoverScheme)
	eps := make([]resolver.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = resolver.Endpoint{Addresses: []resolver.Address{a}}
	}
	r.InitialState(resolver.State{Endpoints: eps, Addresses: addrs})
	opts := append(dialOptions(creds, o),
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"pick_first": {}}]}`),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: FailoverBackoff, MinConnectTimeout: 5 * time.Second}),
	)
	conn, err := grpc.NewClient(failoverScheme+":///servers", opts...)
	if err != nil {
		return nil, fmt.Errorf("casclient: dial %q: %w", targets, err)
	}
	return conn, nil
}
