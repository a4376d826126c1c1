// Package storage benchmarks the storage packages on their own, on real
// files and a real loopback gRPC server: the disk CAS (FindMissing over a
// large index, small durable Puts), ByteStream upload and download through
// casclient against the REAPI service, and staging an input tree into an
// action directory from the file cache. Run them with
//
//	go test -run '^$' -bench . ./bench/storage
//
// There are no tests here: benchmarks are not timed unit tests.
package storage
