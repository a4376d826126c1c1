package reapi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/precondition"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// toStatus turns an error from the layers below into a gRPC status error. It
// is called once, at the edge; errors that already carry a status keep it.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if me := asMissing(err); me != nil {
		return missingStatus(me)
	}
	code := codes.Internal
	switch {
	case errors.Is(err, scheduler.ErrUnschedulable):
		code = codes.FailedPrecondition
	case errors.Is(err, scheduler.ErrTimeoutTooLong), errors.Is(err, inputtree.ErrInvalid),
		errors.Is(err, outputs.ErrInvalid), errors.Is(err, outputs.ErrUnexpectedType):
		code = codes.InvalidArgument
	case errors.Is(err, scheduler.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, digest.ErrInvalid), errors.Is(err, cas.ErrMismatch), errors.Is(err, cas.ErrNotMessage):
		code = codes.InvalidArgument
	case errors.Is(err, actioncache.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, cas.ErrTooLarge):
		// REAPI: uploads over max_cas_blob_size_bytes are INVALID_ARGUMENT;
		// a blob larger than the whole store is the same permanent refusal
		// (RESOURCE_EXHAUSTED would invite a retry that cannot succeed).
		code = codes.InvalidArgument
	case errors.Is(err, cas.ErrOutOfRange):
		code = codes.OutOfRange
	case errors.Is(err, cas.ErrNotFound), errors.Is(err, actioncache.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

// invalidf returns an INVALID_ARGUMENT status naming the bad value.
func invalidf(format string, args ...any) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}

// asMissing returns the *cas.MissingError inside err, or nil.
func asMissing(err error) *cas.MissingError {
	var me *cas.MissingError
	if errors.As(err, &me) {
		return me
	}
	return nil
}

// missingStatus is REAPI's answer to missing blobs, so the client knows
// exactly what to upload.
func missingStatus(me *cas.MissingError) error {
	return precondition.Missing(me).Err()
}
