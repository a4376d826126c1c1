package errcode

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/scheduler"
)

func TestCode(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("collecting outputs: %w", err) }
	missing := &cas.MissingError{Digests: []digest.Digest{digest.Compute(digest.SHA256, []byte("x"))}}
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		// The REAPI text: an output of the wrong type is FAILED_PRECONDITION.
		// The Execution service used to say INVALID_ARGUMENT while the
		// executor said FAILED_PRECONDITION.
		{wrap(outputs.ErrUnexpectedType), codes.FailedPrecondition},
		{wrap(outputs.ErrAbsoluteSymlink), codes.FailedPrecondition},
		{wrap(missing), codes.FailedPrecondition},
		{scheduler.ErrUnschedulable, codes.FailedPrecondition},
		{wrap(outputs.ErrInvalid), codes.InvalidArgument},
		{wrap(inputtree.ErrInvalid), codes.InvalidArgument},
		{wrap(digest.ErrInvalid), codes.InvalidArgument},
		{cas.ErrMismatch, codes.InvalidArgument},
		{cas.ErrNotMessage, codes.InvalidArgument},
		{cas.ErrTooLarge, codes.InvalidArgument},
		{actioncache.ErrInvalid, codes.InvalidArgument},
		{scheduler.ErrTimeoutTooLong, codes.InvalidArgument},
		{wrap(runner.ErrCommandNotFound), codes.InvalidArgument},
		{runner.ErrNotExecutable, codes.InvalidArgument},
		{runner.ErrInvalidRequest, codes.InvalidArgument},
		{scheduler.ErrNotFound, codes.NotFound},
		{cas.ErrNotFound, codes.NotFound},
		{actioncache.ErrNotFound, codes.NotFound},
		{cas.ErrOutOfRange, codes.OutOfRange},
		{fmt.Errorf("s3 store \"cas\": %w", cas.ErrUnavailable), codes.Unavailable},
		{wrap(context.DeadlineExceeded), codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{status.Error(codes.Unavailable, "kept"), codes.Unavailable},
		{errors.New("disk on fire"), codes.Internal},
	} {
		if got := Code(tc.err); got != tc.want {
			t.Errorf("Code(%v) = %v, want %v", tc.err, got, tc.want)
		}
		if got := Proto(tc.err).GetCode(); got != int32(tc.want) {
			t.Errorf("Proto(%v).code = %v, want %v", tc.err, codes.Code(got), tc.want)
		}
		if got := status.Code(Error(tc.err)); got != tc.want {
			t.Errorf("Error(%v) code = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestMissingCarriesViolations(t *testing.T) {
	d := digest.Compute(digest.SHA256, []byte("x"))
	st := Status(fmt.Errorf("staging: %w", &cas.MissingError{Digests: []digest.Digest{d}}))
	for _, detail := range st.Details() {
		if pf, ok := detail.(*errdetails.PreconditionFailure); ok && len(pf.GetViolations()) == 1 &&
			pf.GetViolations()[0].GetSubject() == "blobs/"+d.Hash+"/1" {
			return
		}
	}
	t.Fatalf("status %v lacks the MISSING violation", st.Proto())
}
