package reapi

import (
	"context"
	"slices"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
)

func TestGetCapabilities(t *testing.T) {
	for _, tc := range []struct {
		name     string
		opts     func(*Config)
		maxBatch int64
		exec     bool
		maxBlob  int64
	}{
		{"defaults", func(*Config) {}, DefaultMaxBatchTotalSizeBytes, false, 0},
		{"configured", func(c *Config) {
			c.MaxBatchTotalSizeBytes = 1 << 20
			c.ExecEnabled = true
			c.MaxCASBlobSizeBytes = 5 << 30
		}, 1 << 20, true, 5 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, _ := startServer(t, tc.opts)
			caps, err := repb.NewCapabilitiesClient(conn).GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{InstanceName: "main"})
			if err != nil {
				t.Fatal(err)
			}
			cc := caps.GetCacheCapabilities()
			if cc.GetMaxCasBlobSizeBytes() != tc.maxBlob {
				t.Errorf("max_cas_blob_size_bytes = %d, want %d", cc.GetMaxCasBlobSizeBytes(), tc.maxBlob)
			}
			both := []repb.DigestFunction_Value{repb.DigestFunction_SHA256, repb.DigestFunction_BLAKE3}
			if !slices.Equal(cc.GetDigestFunctions(), both) {
				t.Errorf("cache digest_functions = %v, want %v", cc.GetDigestFunctions(), both)
			}
			if !cc.GetActionCacheUpdateCapabilities().GetUpdateEnabled() {
				t.Error("action cache update not enabled")
			}
			if cc.GetMaxBatchTotalSizeBytes() != tc.maxBatch {
				t.Errorf("max_batch_total_size_bytes = %d, want %d", cc.GetMaxBatchTotalSizeBytes(), tc.maxBatch)
			}
			if cc.GetSymlinkAbsolutePathStrategy() != repb.SymlinkAbsolutePathStrategy_DISALLOWED {
				t.Errorf("symlink strategy = %v", cc.GetSymlinkAbsolutePathStrategy())
			}
			zstdOnly := []repb.Compressor_Value{repb.Compressor_ZSTD}
			if !slices.Equal(cc.GetSupportedCompressors(), zstdOnly) || !slices.Equal(cc.GetSupportedBatchUpdateCompressors(), zstdOnly) {
				t.Errorf("compressors = %v / %v, want ZSTD (IDENTITY implied)", cc.GetSupportedCompressors(), cc.GetSupportedBatchUpdateCompressors())
			}

			ec := caps.GetExecutionCapabilities()
			if ec.GetDigestFunction() != repb.DigestFunction_SHA256 || !slices.Equal(ec.GetDigestFunctions(), both) {
				t.Errorf("execution digest functions = %v / %v", ec.GetDigestFunction(), ec.GetDigestFunctions())
			}
			if ec.GetExecEnabled() != tc.exec {
				t.Errorf("exec_enabled = %v, want %v", ec.GetExecEnabled(), tc.exec)
			}
			if !slices.Contains(ec.GetSupportedNodeProperties(), "bazel_tool_input") {
				t.Errorf("supported_node_properties = %v, want bazel_tool_input", ec.GetSupportedNodeProperties())
			}
			pr := ec.GetExecutionPriorityCapabilities().GetPriorities()
			if len(pr) != 1 || pr[0].GetMinPriority() >= 0 || pr[0].GetMaxPriority() <= 0 {
				t.Errorf("execution priorities = %v, want one range around 0", pr)
			}

			for field, v := range map[string][2]int32{
				"low":        {caps.GetLowApiVersion().GetMajor(), caps.GetLowApiVersion().GetMinor()},
				"deprecated": {caps.GetDeprecatedApiVersion().GetMajor(), caps.GetDeprecatedApiVersion().GetMinor()},
				"high":       {caps.GetHighApiVersion().GetMajor(), caps.GetHighApiVersion().GetMinor()},
			} {
				want := [2]int32{2, 0}
				if field == "high" {
					want = [2]int32{2, 11}
				}
				if v != want {
					t.Errorf("%s_api_version = %v, want %v", field, v, want)
				}
			}
		})
	}
}

func TestGetCapabilitiesRejectsBadInstanceNames(t *testing.T) {
	conn, _ := startServer(t)
	client := repb.NewCapabilitiesClient(conn)
	for _, name := range []string{"blobs", "a/uploads/b", "/lead", "trail/", "a//b", "x/compressed-blobs", "actionResults"} {
		_, err := client.GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{InstanceName: name})
		wantCode(t, err, codes.InvalidArgument)
	}
	for _, name := range []string{"", "main", "team/project", "a.b-c_d"} {
		if _, err := client.GetCapabilities(context.Background(), &repb.GetCapabilitiesRequest{InstanceName: name}); err != nil {
			t.Errorf("instance %q: %v", name, err)
		}
	}
}
