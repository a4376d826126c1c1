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
# Outside any module, so the module's own go.mod pins its dependencies.
(cd / && GOFLAGS=-mod=mod GOBIN="$dir.tmp" go install "github.com/seaweedfs/seaweedfs/weed@$SEAWEEDFS_VERSION")
"$dir.tmp/weed" version
rm -rf "$dir"
mv "$dir.tmp" "$dir"
