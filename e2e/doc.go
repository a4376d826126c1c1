// Package e2e holds the end-to-end tests: they build the real hearth binary,
// start it as a child process on loopback ports with its own data directory,
// and drive it the way users do, with Bazel and with plain REAPI gRPC clients.
// Nothing is mocked; a test passes only if the shipped binary behaves.
//
// Bazel builds use the workspace in testdata/bazel/ws (with offline stubs for
// the repositories Bazel would otherwise download, see
// testdata/bazel/stubs/README.md). The package has no non-test code besides
// this comment.
package e2e
