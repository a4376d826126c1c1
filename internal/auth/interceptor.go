package auth

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// UnaryInterceptor checks every unary call against the policy before its
// handler runs.
func (p *Policy) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		r, pr, err := p.start(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if r.public {
			return handler(ctx, req)
		}
		m, _ := req.(proto.Message)
		if err := p.authorize(pr, r, m); err != nil {
			return nil, err
		}
		return handler(withPrincipal(ctx, pr), req)
	}
}

// StreamInterceptor checks every stream before its handler runs. For a
// stream whose first message names the instance (Execute, ByteStream Read
// and Write, GetTree, WaitExecution), it reads that message first and hands
// it to the handler as the stream's first message, so a refused Write has
// not written a byte.
func (p *Policy) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		r, pr, err := p.start(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		if r.public {
			return handler(srv, ss)
		}
		wrapped := &checkedStream{ServerStream: ss, ctx: withPrincipal(ss.Context(), pr)}
		if r.first == nil {
			if err := p.authorize(pr, r, nil); err != nil {
				return err
			}
			return handler(srv, wrapped)
		}
		first := r.first()
		if err := ss.RecvMsg(first); err != nil {
			if errors.Is(err, io.EOF) {
				return status.Error(codes.InvalidArgument, "the stream ended before its first request")
			}
			return err
		}
		if err := p.authorize(pr, r, first); err != nil {
			return err
		}
		wrapped.first = first
		return handler(srv, wrapped)
	}
}

// start looks up the method's rule and authenticates the caller (unless
// the method is public).
func (p *Policy) start(ctx context.Context, method string) (rule, *Principal, error) {
	r, ok := rules[method]
	if !ok {
		return rule{}, nil, status.Errorf(codes.PermissionDenied, "method %s is not covered by Hearth's access policy", method)
	}
	if r.public {
		return r, nil, nil
	}
	var authz []string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		authz = md.Get("authorization")
	}
	pr, err := p.authenticate(authz, verifiedChains(ctx))
	if err != nil {
		return rule{}, nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return r, pr, nil
}

// authorize checks the rule's right on the instance req names.
func (p *Policy) authorize(pr *Principal, r rule, req proto.Message) error {
	if r.instance == nil {
		if pr.Allowed(r.right, "") {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "principal %q lacks the %q right", pr.Name, r.right.String())
	}
	instance, known := "", false
	if req != nil {
		instance, known = r.instance(p, req)
	}
	if known && pr.Allowed(r.right, instance) {
		return nil
	}
	if !known && pr.allowedSomewhere(r.right) {
		return nil
	}
	return status.Error(codes.PermissionDenied, deniedMessage(pr, r.right, instance, known))
}

func deniedMessage(pr *Principal, right Right, instance string, known bool) string {
	if !known {
		return fmt.Sprintf("principal %q lacks the %q right on every instance", pr.Name, right.String())
	}
	return fmt.Sprintf("principal %q lacks the %q right on instance %q", pr.Name, right.String(), instance)
}

// verifiedChains returns the verified certificate chains of the call's TLS
// connection (none without TLS or without a client certificate).
func verifiedChains(ctx context.Context) [][]*x509.Certificate {
	pe, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := pe.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return info.State.VerifiedChains
}

// checkedStream carries the principal in its context and, for streams
// checked on their first message, replays that message.
type checkedStream struct {
	grpc.ServerStream
	ctx   context.Context
	first proto.Message
}

func (s *checkedStream) Context() context.Context { return s.ctx }

func (s *checkedStream) RecvMsg(m any) error {
	if s.first != nil {
		first := s.first
		s.first = nil
		dst, ok := m.(proto.Message)
		if !ok {
			return status.Errorf(codes.Internal, "auth: stream message %T is not a proto message", m)
		}
		proto.Reset(dst)
		proto.Merge(dst, first)
		return nil
	}
	return s.ServerStream.RecvMsg(m)
}
