// Package precondition owns REAPI's encoding of missing blobs: a
// FAILED_PRECONDITION status carrying a PreconditionFailure with one violation
// of type "MISSING" and subject "blobs/{digest_function/}{hash}/{size}" per
// blob (the function segment only for BLAKE3, as in ByteStream names). The Execution
// service returns it when it finds blobs missing before an action is queued,
// and executors put it in ExecuteResponse.status when blobs vanish later.
package precondition

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// Missing returns the status for the blobs of me, each listed once.
func Missing(me *cas.MissingError) *status.Status {
	pf := &errdetails.PreconditionFailure{}
	seen := map[digest.Digest]bool{}
	for _, d := range me.Digests {
		if seen[d] {
			continue
		}
		seen[d] = true
		pf.Violations = append(pf.Violations, &errdetails.PreconditionFailure_Violation{
			Type:        "MISSING",
			Subject:     "blobs/" + d.ResourcePath(),
			Description: "the blob is not in the CAS; upload it and retry",
		})
	}
	st := status.New(codes.FailedPrecondition, me.Error())
	if withDetails, err := st.WithDetails(pf); err == nil {
		return withDetails
	}
	return st
}

// MissingProto is Missing as a google.rpc.Status message.
func MissingProto(me *cas.MissingError) *spb.Status { return Missing(me).Proto() }
