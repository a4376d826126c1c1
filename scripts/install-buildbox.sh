#!/usr/bin/env bash
# Installs the real buildbox tools (buildbox-worker, buildbox-casd,
# buildbox-run-hosttools, ...) for the interop tests of Hearth's LocalCAS and
# Remote Workers API services. Debian packages buildbox only in sid (unstable);
# the build machines run bookworm, whose libc and C++ runtime are too old for
# it. So the sid package and its library closure are unpacked (dpkg -x, no
# maintainer scripts, nothing touches the system) into a private prefix, and
# each program gets a wrapper that runs it with sid's own dynamic loader and
# libraries. The packages are verified with Debian's archive keyring (apt) and
# the .debs are cached, so a second run costs nothing.
#
#   scripts/install-buildbox.sh            installs into $HEARTH_BUILDBOX_PREFIX
#                                          (default /opt/hearth-buildbox)
# Afterwards: $PREFIX/bin/buildbox-worker --help
set -euo pipefail

prefix="${HEARTH_BUILDBOX_PREFIX:-/opt/hearth-buildbox}"
cache="${HEARTH_TOOLS_CACHE:-$HOME/.cache/hearth-tools}/buildbox-debs"
# Programs that buildbox depends on but that the tests never run through it
# (the bubblewrap runner uses the system's bwrap; FUSE staging is not used).
skip_packages=" bubblewrap fuse3 mount "

if [[ -x "$prefix/bin/buildbox-worker" ]] && "$prefix/bin/buildbox-worker" --help >/dev/null 2>&1; then
  exit 0
fi

sudo=()
[[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ ! -r "$keyring" ]]; then
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y debian-archive-keyring
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$cache"
touch "$work/state/status"
echo "deb [signed-by=$keyring] http://deb.debian.org/debian sid main" >"$work/sources.list"
# An apt of its own: sid's lists in a temp dir, an empty dpkg status (so the
# whole closure is resolved), the system's configuration untouched.
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State=$work/state" -o "Dir::State::status=$work/state/status"
  -o "Dir::Cache=$work/cache" -o Debug::NoLocking=1 -o APT::Architecture=amd64
  -o APT::Sandbox::User=root
)
echo "install-buildbox: reading Debian sid's package lists"
apt-get "${apt_opts[@]}" -qq update

packages=()
while read -r pkg; do
  [[ "$skip_packages" == *" $pkg "* ]] || packages+=("$pkg")
done < <(apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests \
  --no-conflicts --no-breaks --no-replaces --no-enhances buildbox | grep -v '^[ <]' | sort -u)
echo "install-buildbox: ${#packages[@]} packages: ${packages[*]}"

(cd "$cache" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}")

stage="$work/prefix"
mkdir -p "$stage/bin"
for pkg in "${packages[@]}"; do
  deb=$(ls -t "$cache/${pkg}_"*.deb | head -n1)
  dpkg -x "$deb" "$stage"
done

loader="$prefix/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
libpath="$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu"
for program in "$stage"/usr/bin/buildbox-*; do
  name="$(basename "$program")"
  if head -c 4 "$program" | grep -q $'\x7fELF'; then
    printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' \
      "$loader" "$libpath" "$prefix/usr/bin/$name" >"$stage/bin/$name"
    chmod +x "$stage/bin/$name"
  else
    ln -sf "$prefix/usr/bin/$name" "$stage/bin/$name"
  fi
done

"${sudo[@]}" rm -rf "$prefix.new"
"${sudo[@]}" mkdir -p "$(dirname "$prefix")"
"${sudo[@]}" cp -a "$stage" "$prefix.new"
"${sudo[@]}" rm -rf "$prefix"
"${sudo[@]}" mv "$prefix.new" "$prefix"
"$prefix/bin/buildbox-worker" --help >/dev/null
echo "install-buildbox: installed $(ls "$prefix/bin" | tr '\n' ' ')into $prefix"
