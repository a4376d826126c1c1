// Package s3store benchmarks the CAS on S3 (the stores block: a local disk
// tier in front of an S3 bucket, with the Redis presence index) through a
// real `hearth server`, against minio-go talking to the same SeaweedFS
// server directly: ByteStream write and cold/warm read of 256 MiB, and
// FindMissingBlobs of 10,000 digests with a warm fast tier. Run with
//
//	go test -run '^$' -bench . -benchtime 1x -v ./bench/s3store
package s3store
