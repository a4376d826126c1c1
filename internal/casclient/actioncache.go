package casclient

import (
	"context"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/rpcretry"
)

// ActionCache is an actioncache.Store on a remote server.
type ActionCache struct {
	ac    repb.ActionCacheClient
	retry rpcretry.Policy
}

var _ actioncache.Store = (*ActionCache)(nil)

// NewActionCache returns an actioncache.Store that keeps results on the
// server at the other end of conn. Unlike NewStore it takes no instance
// name: actioncache.Store passes one with every call, and that one is used.
// Calls are retried as DefaultRetry says unless WithRetry says otherwise.
func NewActionCache(conn grpc.ClientConnInterface, opts ...Option) *ActionCache {
	return &ActionCache{ac: repb.NewActionCacheClient(conn), retry: newOptions(opts).retry}
}

// Get fetches the result of action with GetActionResult, without inlining
// anything. A miss wraps actioncache.ErrNotFound.
func (c *ActionCache) Get(ctx context.Context, instance string, action digest.Digest) (*repb.ActionResult, error) {
	req := &repb.GetActionResultRequest{
		InstanceName:   instance,
		ActionDigest:   action.Proto(),
		DigestFunction: action.Function,
	}
	what := "GetActionResult " + action.String()
	var res *repb.ActionResult
	n, err := do(ctx, c.retry, what, func(ctx context.Context) (err error) {
		res, err = c.ac.GetActionResult(ctx, req)
		return err
	})
	if err != nil {
		return nil, acFromStatus(tried(what, n), err)
	}
	return res, nil
}

// Put stores result as the result of action with UpdateActionResult. A
// retry after a lost answer stores the same result again, which changes
// nothing.
func (c *ActionCache) Put(ctx context.Context, instance string, action digest.Digest, result *repb.ActionResult) error {
	req := &repb.UpdateActionResultRequest{
		InstanceName:   instance,
		ActionDigest:   action.Proto(),
		ActionResult:   result,
		DigestFunction: action.Function,
	}
	what := "UpdateActionResult " + action.String()
	n, err := do(ctx, c.retry, what, func(ctx context.Context) error {
		_, err := c.ac.UpdateActionResult(ctx, req)
		return err
	})
	if err != nil {
		return acFromStatus(tried(what, n), err)
	}
	return nil
}
