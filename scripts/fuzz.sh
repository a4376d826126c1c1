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
# The Go fuzzer sometimes ends a run that found nothing with a spurious
# "context deadline exceeded" when the time is up while a worker is busy. A
# real finding always says "Failing input written to"; only the spurious kind
# is retried, once, and a second failure fails the build.
run_target() {
  local dir=$1 name=$2 log
  log=$(mktemp)
  if go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$dir" 2>&1 | tee "$log"; then
    rm -f "$log"
    return 0
  fi
  if grep -q "context deadline exceeded" "$log" && ! grep -q "Failing input written to" "$log"; then
    rm -f "$log"
    echo "fuzz: $name ended with the fuzzer's spurious deadline error; running it again"
    go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$dir"
    return
  fi
  rm -f "$log"
  return 1
}
for t in "${targets[@]}"; do
  read -r dir name <<<"$t"
  echo "fuzz: $name in $dir for $fuzztime"
  run_target "$dir" "$name"
done
echo "fuzz: ${#targets[@]} targets passed"
