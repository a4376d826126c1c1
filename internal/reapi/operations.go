package reapi

import (
	"context"

	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// operationsServer exposes execution operations through the standard
// google.longrunning.Operations service, for tools that poll or cancel.
type operationsServer struct {
	longrunningpb.UnimplementedOperationsServer
	cfg Config
}

func newOperationsServer(cfg Config) *operationsServer { return &operationsServer{cfg: cfg} }

func (s *operationsServer) GetOperation(_ context.Context, req *longrunningpb.GetOperationRequest) (*longrunningpb.Operation, error) {
	if req.GetName() == "" {
		return nil, invalidf("name is empty")
	}
	op, err := s.cfg.Scheduler.Get(req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	st, _ := op.Watch()
	p, err := operationProto(st)
	return p, toStatus(err)
}

func (s *operationsServer) CancelOperation(_ context.Context, req *longrunningpb.CancelOperationRequest) (*emptypb.Empty, error) {
	if req.GetName() == "" {
		return nil, invalidf("name is empty")
	}
	if err := s.cfg.Scheduler.Cancel(req.GetName()); err != nil {
		return nil, toStatus(err)
	}
	return &emptypb.Empty{}, nil
}

func (s *operationsServer) ListOperations(context.Context, *longrunningpb.ListOperationsRequest) (*longrunningpb.ListOperationsResponse, error) {
	return nil, status.Error(codes.Unimplemented, "listing operations is not supported; use GetOperation with a name returned by Execute")
}
