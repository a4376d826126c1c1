package casclient

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/digest"
)

// ActionCache is an actioncache.Store on a remote server.
type ActionCache struct {
	ac repb.ActionCacheClient
}

var _ actioncache.Store = (*ActionCache)(nil)

// NewActionCache returns an actioncache.Store that keeps results on the
// server at the other end of conn. Unlike NewStore it takes no instance
// name: actioncache.Store passes one with every call, and that one is used.
func NewActionCache(conn grpc.ClientConnInterface) *ActionCache {
	return &ActionCache{ac: repb.NewActionCacheClient(conn)}
}

// Get fetches the result of action with GetActionResult, without inlining
// anything. A miss wraps actioncache.ErrNotFound.
func (c *ActionCache) Get(ctx context.Context, instance string, action digest.Digest) (*repb.ActionResult, error) {
	res, err := c.ac.GetActionResult(ctx, &repb.GetActionResultRequest{
		InstanceName:   instance,
		ActionDigest:   action.Proto(),
		DigestFunction: action.Function,
	})
	if err != nil {
		return nil, acFromStatus("GetActionResult "+action.String(), err)
	}
	return res, nil
}

// Put stores result as the result of action with UpdateActionResult.
func (c *ActionCache) Put(ctx context.Context, instance string, action digest.Digest, result *repb.ActionResult) error {
	_, err := c.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
		InstanceName:   instance,
		ActionDigest:   action.Proto(),
		ActionResult:   result,
		DigestFunction: action.Function,
	})
	if err != nil {
		return acFromStatus("UpdateActionResult "+action.String(), err)
	}
	return nil
}
