// Package actioncache owns the action cache: ActionResults stored by instance
// name and Action digest, durable on disk, and only ever handed out while every
// blob they reference is still in the CAS.
package actioncache

import (
	"context"
	"errors"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
)

// ErrNotFound is returned (wrapped) when no usable result is stored.
var ErrNotFound = errors.New("action result not found")

// Store holds ActionResults. Instance names are separate namespaces, and so
// are digest functions.
type Store interface {
	Get(ctx context.Context, instance string, action digest.Digest) (*repb.ActionResult, error)
	Put(ctx context.Context, instance string, action digest.Digest, result *repb.ActionResult) error
}
