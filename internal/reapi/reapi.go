// Package reapi owns the gRPC edge of the Remote Execution API v2: one file per
// service. Each service validates every field it receives, calls the storage
// and scheduling packages, and turns their errors into gRPC statuses exactly
// once, here (see status.go).
package reapi

import (
	"cloud.google.com/go/longrunning/autogen/longrunningpb"
	"google.golang.org/grpc"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// DefaultMaxBatchTotalSizeBytes is advertised in Capabilities and enforced on
// batch calls. It stays under gRPC's default 4 MiB message limit of clients,
// leaving room for the request's own framing.
const DefaultMaxBatchTotalSizeBytes = 4<<20 - 64<<10

// MaxRecvMsgSize is what the server accepts in one message: a full batch plus
// generous framing. Servers built around these services must set it.
const MaxRecvMsgSize = 16 << 20

// Config is what the services need.
type Config struct {
	CAS cas.Store // should verify digests: cas.NewVerifying(...)
	// ActionCache should be wrapped with actioncache.NewCompletenessChecking
	// so that GetActionResult only returns results whose blobs all exist.
	ActionCache actioncache.Store
	// MaxBatchTotalSizeBytes bounds BatchUpdateBlobs/BatchReadBlobs; 0 means
	// DefaultMaxBatchTotalSizeBytes.
	MaxBatchTotalSizeBytes int64
	// MaxCASBlobSizeBytes is advertised as max_cas_blob_size_bytes (0: no
	// limit); set it to the store's bound when there is one.
	MaxCASBlobSizeBytes int64
	// ExecEnabled is advertised in ExecutionCapabilities.exec_enabled: true
	// when this server also runs the Execution service.
	ExecEnabled bool
	// Scheduler, when set, enables the Execution and Operations services.
	Scheduler *scheduler.Scheduler
}

func (c Config) maxBatch() int64 {
	if c.MaxBatchTotalSizeBytes > 0 {
		return c.MaxBatchTotalSizeBytes
	}
	return DefaultMaxBatchTotalSizeBytes
}

// Register adds the storage services (Capabilities, CAS, ByteStream,
// ActionCache) to s, and Execution and Operations when cfg.Scheduler is set.
func Register(s *grpc.Server, cfg Config) {
	repb.RegisterCapabilitiesServer(s, newCapabilitiesServer(cfg))
	repb.RegisterContentAddressableStorageServer(s, newCASServer(cfg))
	repb.RegisterActionCacheServer(s, newActionCacheServer(cfg))
	bspb.RegisterByteStreamServer(s, newByteStreamServer(cfg))
	if cfg.Scheduler != nil {
		repb.RegisterExecutionServer(s, newExecutionServer(cfg))
		longrunningpb.RegisterOperationsServer(s, newOperationsServer(cfg))
	}
}
