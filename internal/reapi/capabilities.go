package reapi

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	smpb "github.com/bazelbuild/remote-apis/build/bazel/semver"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
)

// Execution priorities (ExecutionPolicy.priority) that Hearth advertises. As
// REAPI says, lower runs sooner and 0 is the default. The Execution service
// rejects values outside the range.
const (
	MinExecutionPriority = -1000
	MaxExecutionPriority = 1000
)

// API versions advertised. 2.0 is still served (clients of that version use
// the deprecated output fields, which Hearth fills too), so it is both the
// deprecated and the lowest supported version.
const (
	lowAPIMinor  = 0
	highAPIMinor = 11
)

type capabilitiesServer struct {
	repb.UnimplementedCapabilitiesServer
	cfg Config
}

func newCapabilitiesServer(cfg Config) *capabilitiesServer {
	return &capabilitiesServer{cfg: cfg}
}

// GetCapabilities describes the server. Every instance name has the same
// capabilities; execution capabilities are always present, with exec_enabled
// telling a client whether this server runs actions, so a cache-only server
// says so explicitly instead of leaving the client to guess.
func (s *capabilitiesServer) GetCapabilities(ctx context.Context, req *repb.GetCapabilitiesRequest) (*repb.ServerCapabilities, error) {
	if err := validateInstanceName(req.GetInstanceName()); err != nil {
		return nil, err
	}
	return &repb.ServerCapabilities{
		CacheCapabilities: &repb.CacheCapabilities{
			DigestFunctions: append([]repb.DigestFunction_Value(nil), digest.Supported...),
			ActionCacheUpdateCapabilities: &repb.ActionCacheUpdateCapabilities{
				UpdateEnabled: true,
			},
			MaxBatchTotalSizeBytes: s.cfg.maxBatch(),
			// 0 (no limit) unless the store is bounded: a blob larger than
			// the whole store is refused with INVALID_ARGUMENT.
			MaxCasBlobSizeBytes: s.cfg.MaxCASBlobSizeBytes,
			// Actions never see a symlink leave their directory: input
			// symlinks with absolute targets are INVALID_ARGUMENT and an
			// action that creates an absolute output symlink fails with
			// FAILED_PRECONDITION, as REAPI prescribes for DISALLOWED. The
			// action cache still stores what clients upload.
			SymlinkAbsolutePathStrategy: repb.SymlinkAbsolutePathStrategy_DISALLOWED,
			// IDENTITY is always supported and, per the spec, not listed.
			SupportedCompressors:            []repb.Compressor_Value{repb.Compressor_ZSTD},
			SupportedBatchUpdateCompressors: []repb.Compressor_Value{repb.Compressor_ZSTD},
		},
		ExecutionCapabilities: &repb.ExecutionCapabilities{
			// The legacy single field must not be UNKNOWN and must be among
			// digest_functions.
			DigestFunction:  digest.SHA256,
			DigestFunctions: append([]repb.DigestFunction_Value(nil), digest.Supported...),
			ExecEnabled:     s.cfg.ExecEnabled,
			ExecutionPriorityCapabilities: &repb.PriorityCapabilities{
				Priorities: []*repb.PriorityCapabilities_PriorityRange{
					{MinPriority: MinExecutionPriority, MaxPriority: MaxExecutionPriority},
				},
			},
			SupportedNodeProperties: []string{inputtree.ToolInputProperty},
		},
		DeprecatedApiVersion: &smpb.SemVer{Major: 2, Minor: lowAPIMinor},
		LowApiVersion:        &smpb.SemVer{Major: 2, Minor: lowAPIMinor},
		HighApiVersion:       &smpb.SemVer{Major: 2, Minor: highAPIMinor},
	}, nil
}
