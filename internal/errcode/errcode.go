// Package errcode owns the one mapping from Hearth's sentinel errors to gRPC
// status codes. Every edge that turns an error into a status uses it: the
// REAPI services (reapi), an action's ExecuteResponse.status (builder, and
// through it `hearth run`), and the executor's external runner, so that the
// same failure gets the same code whichever path an action takes.
package errcode

import (
	"context"
	"errors"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/precondition"
	"github.com/hearth-build/hearth/internal/runner"
	"github.com/hearth-build/hearth/internal/scheduler"
)

// rule maps errors wrapping any of errs to code.
type rule struct {
	code codes.Code
	errs []error
}

// table is checked in order; the first rule with a match decides. Anything
// else is INTERNAL.
var table = []rule{
	// REAPI, Command.output_files and output_directories: an output of the
	// wrong kind (a directory named as an output file, a path through a
	// symlink) "will return a FAILED_PRECONDITION": the action ran, but its
	// result cannot be described as the Command asked.
	{codes.FailedPrecondition, []error{outputs.ErrUnexpectedType, outputs.ErrAbsoluteSymlink, scheduler.ErrUnschedulable}},
	// A malformed request: retrying it unchanged cannot succeed. A blob
	// larger than the whole store is the same permanent refusal as REAPI's
	// INVALID_ARGUMENT for uploads over max_cas_blob_size_bytes
	// (RESOURCE_EXHAUSTED would invite a retry).
	{codes.InvalidArgument, []error{
		inputtree.ErrInvalid, outputs.ErrInvalid, digest.ErrInvalid, cas.ErrMismatch, cas.ErrNotMessage, cas.ErrTooLarge,
		actioncache.ErrInvalid, scheduler.ErrTimeoutTooLong,
		runner.ErrCommandNotFound, runner.ErrNotExecutable, runner.ErrInvalidRequest,
	}},
	{codes.NotFound, []error{scheduler.ErrNotFound, cas.ErrNotFound, actioncache.ErrNotFound}},
	{codes.OutOfRange, []error{cas.ErrOutOfRange}},
	// A store's backing service (S3) is unreachable: a retry may succeed.
	{codes.Unavailable, []error{cas.ErrUnavailable}},
	{codes.DeadlineExceeded, []error{context.DeadlineExceeded}},
	{codes.Canceled, []error{context.Canceled}},
}

// Code returns the gRPC code for err: OK for nil, the code of a status it
// already carries, FAILED_PRECONDITION for missing blobs, else the table's.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	var me *cas.MissingError
	if errors.As(err, &me) {
		return codes.FailedPrecondition
	}
	for _, r := range table {
		for _, e := range r.errs {
			if errors.Is(err, e) {
				return r.code
			}
		}
	}
	return codes.Internal
}

// Status returns err as a gRPC status (nil for nil). Errors that already
// carry a status keep it; missing blobs get REAPI's PreconditionFailure
// details, so the client knows what to upload.
func Status(err error) *status.Status {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	var me *cas.MissingError
	if errors.As(err, &me) {
		return precondition.Missing(me)
	}
	return status.New(Code(err), err.Error())
}

// Error returns err as a gRPC status error, for a service's return value.
func Error(err error) error {
	if err == nil {
		return nil
	}
	return Status(err).Err()
}

// Proto returns err as a google.rpc.Status, as ExecuteResponse.status and
// `hearth run`'s error-status file carry it: code OK for nil.
func Proto(err error) *spb.Status {
	if err == nil {
		return &spb.Status{Code: int32(codes.OK)}
	}
	return Status(err).Proto()
}
