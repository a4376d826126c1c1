// Package e2e holds the end-to-end tests: they build the real hearth binary,
// start it as child processes on loopback ports with their own data
// directories (`hearth serve`, or `hearth server` with `hearth worker`s),
// and drive it the way users do: with Bazel, with `hearth run`, and with
// plain REAPI gRPC clients. Nothing is mocked; a test passes only if the
// shipped binary behaves.
//
// Bazel builds use the workspace in testdata/bazel/ws, or one a test
// generates beside it, with offline stubs for the repositories Bazel would
// otherwise download (see testdata/bazel/stubs/README.md). The package has
// no non-test code besides this comment.
package e2e
