package reapi

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/precondition"
)

// toStatus turns an error from the layers below into a gRPC status error. It
// is called once, at the edge; errors that already carry a status keep it.
// The mapping is errcode's, shared with the executor's ExecuteResponse.status.
func toStatus(err error) error { return errcode.Error(err) }

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
