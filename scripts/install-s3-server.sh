#!/usr/bin/env bash
# Installs the S3-compatible server behind the tests of the S3 CAS
# (internal/s3test): SeaweedFS's `weed`, built from the Go module proxy (the
# only source this machine may fetch it from) into a cached tools directory,
# ~/.cache/hearth-tools/seaweedfs-<version>/weed. Idempotent: an existing
# binary of the pinned version is left alone. The build is large (about 40
# minutes on two shared cores, 160 MB binary), hence the cache.
#
# Why SeaweedFS and not Ceph's radosgw: radosgw needs a running Ceph cluster
# (monitor, manager, OSDs, keyrings) before it serves a bucket — many
# processes, root-ish setup and tens of seconds per test; `weed mini` is one
# unprivileged process on loopback that serves S3 in about 4 s from a temp dir.
# MinIO's server repository is archived, so it is not an option either.
set -euo pipefail

SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
dir="${HEARTH_TOOLS_DIR:-$HOME/.cache/hearth-tools}/seaweedfs-$SEAWEEDFS_VERSION"

if [[ -x "$dir/weed" ]] && "$dir/weed" version >/dev/null 2>&1; then
  exit 0
fi
echo "install-s3-server: building github.com/seaweedfs/seaweedfs/weed@$SEAWEEDFS_VERSION into $dir (slow: tens of minutes)"
mkdir -p "$dir.tmp"
# Built as the main module inside its own (read-only) module-cache copy:
# `go install pkg@version` refuses a module whose go.mod has replace
# directives, and SeaweedFS's has (a deleted upstream replaced by its fork),
# so the module is fetched first and built where its go.mod and go.sum apply.
src="$(cd / && GOFLAGS=-mod=mod go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "$src" || ! -d "$src/weed" ]]; then
  echo "install-s3-server: could not fetch github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION from the Go module proxy" >&2
  exit 1
fi
# -trimpath and no symbol tables: a smaller binary, and a shorter link.
(cd "$src" && GOFLAGS=-mod=readonly go build -trimpath -ldflags='-s -w' -o "$dir.tmp/weed" ./weed)
"$dir.tmp/weed" version
rm -rf "$dir"
mv "$dir.tmp" "$dir"
