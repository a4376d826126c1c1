package casclient

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/hearth-build/hearth/internal/rpcretry"
)

// DefaultRetry is how a Store and an ActionCache retry their calls unless
// given WithRetry: 5 retries after 0.1, 0.16, 0.26, 0.41 and 0.66 s (1.6 s in
// all), long enough for a DialAny connection to move to the next replica
// after the one it used went away, short enough that a server that is down
// for good is reported within two seconds.
//
// Every call Store and ActionCache make is idempotent (blobs are content
// addressed; storing an action result again stores the same result), so a
// retry is always safe; what decides is whether another attempt can
// succeed:
//   - UNAVAILABLE (the server went away, the connection broke, no server
//     is reachable yet) is retried: the next attempt may reach another
//     replica, or the same one back.
//   - DEADLINE_EXCEEDED is retried only when it is an attempt's own
//     deadline (rpcretry.Policy.Timeout, DialOptions.Timeout) that passed:
//     a hung server is worth another try, but once the caller's context has
//     ended nothing is retried.
//   - RESOURCE_EXHAUSTED is not: Hearth answers it for a blob its store can
//     never hold and gRPC for a message over the size limit, both
//     permanent, and an overloaded server's RESOURCE_EXHAUSTED is better
//     left to the caller's own back-off than hammered five times.
//   - ABORTED is retried by ByteStream Write only (see streamWriter): it is
//     a Hearth server's answer to a resumed upload whose previous stream it
//     has not yet let go of.
//   - Everything else (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
//     PERMISSION_DENIED, UNAUTHENTICATED, OUT_OF_RANGE, INTERNAL, ...) is
//     final.
var DefaultRetry = rpcretry.Policy{
	Limit: 5,
	Delay: 100 * time.Millisecond,
	Codes: []codes.Code{codes.Unavailable, codes.DeadlineExceeded},
}

// Option refines NewStore and NewActionCache.
type Option func(*options)

type options struct {
	retry rpcretry.Policy
}

// WithRetry replaces DefaultRetry (`hearth run` passes its --retry-*
// flags). The zero Policy retries nothing.
func WithRetry(p rpcretry.Policy) Option {
	return func(o *options) { o.retry = p }
}

func newOptions(opts []Option) options {
	o := options{retry: DefaultRetry}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// do runs call, retrying it as p says, each attempt in its own context
// (bounded by p.Timeout). It returns the last error and the number of
// attempts made. The context is marked rpcretry.SelfRetried, so that
// retrying interceptors on the same connection leave the call alone.
func do(ctx context.Context, p rpcretry.Policy, what string, call func(ctx context.Context) error) (int, error) {
	ctx = rpcretry.SelfRetried(ctx)
	for n := 0; ; n++ {
		actx, cancel := p.Attempt(ctx)
		err := call(actx)
		cancel()
		if err == nil || !p.Again(ctx, what, n, err) {
			return n + 1, err
		}
	}
}

// tried names a call and, when there was more than one, its attempts, for
// the final error of a retried call.
func tried(what string, attempts int) string {
	if attempts <= 1 {
		return what
	}
	return fmt.Sprintf("%s (%d attempts)", what, attempts)
}
