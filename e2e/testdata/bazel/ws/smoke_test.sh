#!/bin/sh
# Checks the outputs the test depends on, as they appear in its runfiles.
set -eu
fail() { echo "FAIL: $*" >&2; exit 1; }
got=$(./hello)
[ "$got" = "hello from hearth e2e" ] || fail "hello printed '$got'"
[ "$(cat multi/sub/c.txt)" = gamma ] || fail "multi/sub/c.txt"
[ "$(cat tool_use.txt)" = "generated tool ran" ] || fail "tool_use.txt"
[ "$(cat résumé.txt)" = "bonjour, données" ] || fail "résumé.txt"
[ "$(tree/run.sh)" = from-tree ] || fail "tree/run.sh"
[ "$(cat tree/nested/deeper/leaf.txt)" = leaf ] || fail "tree leaf"
echo "smoke test passed"
