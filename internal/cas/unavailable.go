package cas

import "errors"

// ErrUnavailable is returned (wrapped) by a store whose backing service (an
// S3 server, say) cannot be reached or is overloaded: the request may succeed
// if retried later, so the edge answers UNAVAILABLE. The wrapping message
// names the store.
var ErrUnavailable = errors.New("store unavailable")
