package reapi

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/outputs"
)

// The Execution service and the executor classify an error the same way: an
// output of the wrong type is FAILED_PRECONDITION in both (the REAPI text on
// output_files and output_directories). reapi used to say INVALID_ARGUMENT.
func TestStatusAgreesWithExecutor(t *testing.T) {
	err := fmt.Errorf("collecting: %w: output file \"o\" is a directory", outputs.ErrUnexpectedType)
	server := status.Code(toStatus(err))
	executor := codes.Code(builder.StatusOf(err).GetCode())
	if server != codes.FailedPrecondition || executor != codes.FailedPrecondition {
		t.Fatalf("wrong-type output: reapi %v, executor %v; want FAILED_PRECONDITION from both", server, executor)
	}
}
