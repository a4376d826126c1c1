#!/usr/bin/env bash
# Installs the tools `make test` needs that this machine lacks:
#   - bazel: Debian's bazel-bootstrap (Bazel 4.2.3; it brings gcc via
#     build-essential), for the e2e tests that build a workspace through hearth;
#   - gcc, should bazel be present without it;
#   - bwrap (Debian's bubblewrap), for the sandbox tests of persistent workers
#     and one-shot actions;
#   - Debian's libnetty-tcnative-jni, with which Debian's Bazel 4.2.3 can
#     speak TLS (its bundled Netty cannot use Java 17's own ALPN), for the
#     e2e tests of TLS and mTLS (see e2e/auth_test.go, enableTLS);
#   - redis-server (Debian's), the real Redis behind the tests of the Redis
#     action cache, CAS presence index and scheduler state (internal/redistest);
#   - chromium (Debian's), for the e2e test that drives the status page in a
#     headless browser (chromedp);
#   - SeaweedFS's weed (scripts/install-s3-server.sh), the S3 server of the
#     S3 CAS tests (internal/s3test);
#   - staticcheck, pinned so CI does not change under us;
#   - the npm packages of e2e/testdata/tsc (scripts/npm-install.sh).
# Tools already on PATH are left alone, so a developer's own versions are used.
set -euo pipefail

STATICCHECK_VERSION="${STATICCHECK_VERSION:-v0.8.2}"

apt_packages=()
command -v bazel >/dev/null 2>&1 || apt_packages+=(bazel-bootstrap)
command -v gcc >/dev/null 2>&1 || apt_packages+=(gcc)
command -v bwrap >/dev/null 2>&1 || apt_packages+=(bubblewrap)
if command -v dpkg >/dev/null 2>&1 && ! dpkg -s libnetty-tcnative-jni >/dev/null 2>&1; then
  apt_packages+=(libnetty-tcnative-jni)
fi
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
if ((${#apt_packages[@]})); then
  sudo=()
  [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
  echo "install-test-deps: apt-get install ${apt_packages[*]}"
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${apt_packages[@]}"
fi

gobin="$(go env GOBIN)"
[[ -n "$gobin" ]] || gobin="$(go env GOPATH)/bin"
if ! command -v staticcheck >/dev/null 2>&1 && [[ ! -x "$gobin/staticcheck" ]]; then
  echo "install-test-deps: go install staticcheck@$STATICCHECK_VERSION"
  go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi

# The real Bazel persistent worker of the Buck2 bridge tests (tsc_wrapped from
# @bazel/concatjs with TypeScript), from the committed lock file.
bash "$(dirname "$0")/npm-install.sh" "$(dirname "$0")/../e2e/testdata/tsc"

# The real buildbox tools (Debian sid's buildbox, unpacked into a private
# prefix) for the LocalCAS and Remote Workers API interop tests.
bash "$(dirname "$0")/install-buildbox.sh"

# The S3-compatible server (SeaweedFS, built from the Go module proxy into a
# cached tools dir) for the S3 CAS tests (internal/s3test).
bash "$(dirname "$0")/install-s3-server.sh"
