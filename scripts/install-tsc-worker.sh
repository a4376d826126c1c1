#!/usr/bin/env bash
# Installs the real tsc_wrapped persistent worker (npm @bazel/concatjs with
# TypeScript 4.9.5, proto worker protocol) with `npm ci` from the committed
# scripts/tsc-worker/package.json and package-lock.json, into a cache
# directory that is reused while the lock file is unchanged. Prints the
# directory holding node_modules/ on its last line.
#
#   scripts/install-tsc-worker.sh [DIR]
#
# DIR defaults to $HEARTH_TSC_WORKER_DIR, else $XDG_CACHE_HOME/hearth/tsc-worker
# (~/.cache/hearth/tsc-worker). The worker is then
#   node DIR/node_modules/@bazel/concatjs/internal/tsc_wrapped/tsc_wrapped.js --persistent_worker
# Needs node and npm (node 20 is known to work).
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/tsc-worker" && pwd)"
dir="${1:-${HEARTH_TSC_WORKER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth/tsc-worker}}"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install-tsc-worker: $tool is not installed (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
done

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
stamp="$dir/.installed-lock.sha256"
want="$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -d' ' -f1)"
entry="$dir/node_modules/@bazel/concatjs/internal/tsc_wrapped/tsc_wrapped.js"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$entry" ]]; then
  echo "$dir"
  exit 0
fi

echo "install-tsc-worker: npm ci into $dir" >&2
rm -f "$stamp"
cp "$src/package.json" "$src/package-lock.json" "$dir/"
# --omit=peer: concatjs lists karma and its launchers as peers; the worker
# needs none of them. --ignore-scripts: concatjs's postinstall only prints a
# version check.
(cd "$dir" && npm ci --omit=peer --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
if [[ ! -f "$entry" ]]; then
  echo "install-tsc-worker: npm ci did not install $entry" >&2
  exit 1
fi
echo "$want" >"$stamp"
echo "$dir"
