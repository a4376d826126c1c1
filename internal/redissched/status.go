package redissched

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// unavailable is the status of an operation whose leases lapsed too often,
// as internal/scheduler reports an executor that went away MaxAttempts times.
func unavailable(attempts int) *status.Status {
	return &status.Status{
		Code:    int32(code.Code_UNAVAILABLE),
		Message: fmt.Sprintf("action was started %d times and each time its executor stopped renewing its lease", attempts),
	}
}
