package metrics

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// GRPCServer registers gRPC server metrics on reg and returns the server
// options that record them: hearth_grpc_server_started_total,
// _handled_total{grpc_service, grpc_method, grpc_type, grpc_code},
// _msg_received_total, _msg_sent_total and the
// hearth_grpc_server_handling_seconds histogram.
func GRPCServer(reg prometheus.Registerer) (*grpcprom.ServerMetrics, []grpc.ServerOption) {
	m := grpcprom.NewServerMetrics(
		grpcprom.WithServerCounterOptions(grpcprom.WithNamespace("hearth")),
		grpcprom.WithServerHandlingTimeHistogram(grpcprom.WithHistogramNamespace("hearth"), grpcprom.WithHistogramBuckets(durationBuckets)),
	)
	m = register(reg, m)
	return m, []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.StreamServerInterceptor()),
	}
}

// GRPCClient registers gRPC client metrics on reg (hearth_grpc_client_…, the
// same shape as the server's) and returns the dial options that record them.
func GRPCClient(reg prometheus.Registerer) []grpc.DialOption {
	m := register(reg, grpcprom.NewClientMetrics(
		grpcprom.WithClientCounterOptions(grpcprom.WithNamespace("hearth")),
		grpcprom.WithClientHandlingTimeHistogram(grpcprom.WithHistogramNamespace("hearth"), grpcprom.WithHistogramBuckets(durationBuckets)),
	))
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(m.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(m.StreamClientInterceptor()),
	}
}
