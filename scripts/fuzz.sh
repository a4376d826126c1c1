#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a short time each (default 10s;
# first argument overrides). Targets are found by grepping the test files, so
# a new `func FuzzX(f *testing.F)` is picked up without editing this script.
# `go test -fuzz` accepts one target in one package per run.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${1:-10s}"

mapfile -t targets < <(
  grep -rE --include='*_test.go' -o '^func (Fuzz[A-Za-z0-9_]*)\(' . |
    sed -E 's|^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\($|\1 \2|' |
    sort -u
)
if ((${#targets[@]} == 0)); then
  echo "fuzz: no fuzz targets found" >&2
  exit 1
fi
for t in "${targets[@]}"; do
  read -r dir name <<<"$t"
  echo "fuzz: $name in $dir for $fuzztime"
  go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$dir"
done
echo "fuzz: ${#targets[@]} targets passed"
