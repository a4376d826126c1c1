// Package buck2workerpb is the Go code generated from Buck2's worker.proto
// (proto/buck2/worker.proto, vendored from facebook/buck2): the gRPC
// protocol Buck2 speaks to a local persistent worker over $WORKER_SOCKET.
// Regenerate with scripts/genproto.sh.
package buck2workerpb
