#!/bin/sh
# Checks the outputs the test depends on, as they appear in its runfiles.
set -eu
fail() { echo "FAIL: $*" >&2; exit 1; }
got=$(./hello)
[ "$got" = "hello from hearth e2e" ] || fail "hello printed '$got'"
[ "$(cat multi/sub/c.txt)" = gamma ] || fail "multi/sub/c.txt"
[ "$(cat tool_use.txt)" = "generated tool ran" ] || fail "tool_use.txt"
# Bazel 4 sends non-ASCII paths to a remote executor as UTF-8 encoded twice
# (bazelbuild/bazel#14381, fixed by bazelbuild/bazel#15447 in later releases),
# so under remote execution this runfile is not named résumé.txt in UTF-8;
# the glob finds it either way.
[ "$(cat r*sum*.txt)" = "bonjour, données" ] || fail "résumé.txt"
[ "$(tree/run.sh)" = from-tree ] || fail "tree/run.sh"
[ "$(cat tree/nested/deeper/leaf.txt)" = leaf ] || fail "tree leaf"
[ "$(cat tree/link_to_top.txt)" = top ] || fail "tree/link_to_top.txt"
[ "$(cat tree/nested/deeper/up_link.txt)" = top ] || fail "tree/nested/deeper/up_link.txt"
echo "smoke test passed"
