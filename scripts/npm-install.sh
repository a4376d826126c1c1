#!/usr/bin/env bash
# Installs the npm dependencies of a test-data or benchmark directory from its
# committed package.json and package-lock.json (`npm ci`: exactly the locked
# versions), e.g. scripts/npm-install.sh e2e/testdata/tsc. Several directories
# share one download cache ($HEARTH_NPM_CACHE, default ~/.cache/hearth/npm), so
# a second directory locking the same packages installs without the network.
# A directory whose node_modules was installed from the same lock file is
# left alone, so tests may call this every time.
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 DIR..." >&2; exit 2; }
command -v npm >/dev/null 2>&1 || { echo "npm-install: npm is not installed (Debian: apt-get install nodejs npm)" >&2; exit 1; }
cache="${HEARTH_NPM_CACHE:-$HOME/.cache/hearth/npm}"
mkdir -p "$cache"
for dir in "$@"; do
  [[ -f "$dir/package-lock.json" ]] || { echo "npm-install: $dir has no package-lock.json" >&2; exit 1; }
  stamp="$dir/node_modules/.hearth-lock-sha256"
  want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    continue
  fi
  echo "npm-install: npm ci in $dir"
  # --ignore-scripts: the locked packages need no install scripts (their
  # postinstall steps only print version warnings).
  (cd "$dir" && npm ci --cache "$cache" --prefer-offline --ignore-scripts --no-audit --no-fund)
  echo "$want" >"$stamp"
done
