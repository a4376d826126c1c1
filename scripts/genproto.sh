#!/usr/bin/env bash
# Regenerates the Go code of every .proto under proto/ (internal/workerapi and
# the other *pb packages). The generated code is committed;
# this is only needed after editing a .proto. It needs protoc (Debian:
# protobuf-compiler), the Go plugins, and the googleapis protos that
# remote_execution.proto imports (taken from the npm package google-proto-files).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { apt-get update && apt-get install -y protobuf-compiler; }
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent google-proto-files >/dev/null && tar xzf google-proto-files-*.tgz)
ra=$(go list -m -f '{{.Dir}}' github.com/bazelbuild/remote-apis)
export PATH="$(go env GOPATH)/bin:$PATH"
protoc -I proto -I "$ra" -I "$tmp/package" -I /usr/include \
  --go_out=. --go_opt=module=github.com/hearth-build/hearth \
  --go-grpc_out=. --go-grpc_opt=module=github.com/hearth-build/hearth \
  proto/hearth/workerapi/v1/workerapi.proto proto/hearth/metadata/v1/metadata.proto proto/hearth/workerprotocol/v1/workerprotocol.proto
# Buck2's worker.proto is vendored unchanged, so it has no go_package option:
# the M flags name its Go package instead.
buck2pkg=github.com/hearth-build/hearth/internal/buck2worker/buck2workerpb
protoc -I proto \
  --go_out=. --go_opt=module=github.com/hearth-build/hearth --go_opt=Mbuck2/worker.proto=$buck2pkg \
  --go-grpc_out=. --go-grpc_opt=module=github.com/hearth-build/hearth --go-grpc_opt=Mbuck2/worker.proto=$buck2pkg \
  buck2/worker.proto
# buildbox's LocalCAS protocol (build/buildgrid/local_cas.proto) is vendored
# unchanged too: M flags name its Go package and those of its imports.
lcpkg=github.com/hearth-build/hearth/internal/localcas/localcaspb
lcmap="Mbuild/buildgrid/local_cas.proto=$lcpkg"
lcmap+=",Mbuild/bazel/remote/execution/v2/remote_execution.proto=github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
lcmap+=",Mgoogle/rpc/status.proto=google.golang.org/genproto/googleapis/rpc/status"
protoc -I proto -I "$ra" -I "$tmp/package" -I /usr/include \
  --go_out=. --go_opt=module=github.com/hearth-build/hearth --go_opt="$lcmap" \
  --go-grpc_out=. --go-grpc_opt=module=github.com/hearth-build/hearth --go-grpc_opt="$lcmap" \
  build/buildgrid/local_cas.proto

# The Remote Workers API (Bots, for buildbox-worker) is vendored unchanged
# from googleapis (proto/google/devtools/remoteworkers/NOTICE): its
# go_package names a genproto module Hearth does not use, so the M flags put it
# in Hearth's own package. Its google/api, google/rpc and protobuf imports
# keep their own go_package (genproto and protobuf, already in go.mod).
rwapipkg="github.com/hearth-build/hearth/internal/rwapi/rwapipb;rwapipb"
rwapi=google/devtools/remoteworkers/v1test2
rwapiM="M$rwapi/bots.proto=$rwapipkg,M$rwapi/worker.proto=$rwapipkg,M$rwapi/command.proto=$rwapipkg"
protoc -I proto -I "$tmp/package" -I /usr/include \
  --go_out=. --go_opt=module=github.com/hearth-build/hearth,"$rwapiM" \
  --go-grpc_out=. --go-grpc_opt=module=github.com/hearth-build/hearth,"$rwapiM" \
  $rwapi/bots.proto $rwapi/worker.proto $rwapi/command.proto
