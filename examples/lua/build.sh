#!/bin/sh
# Builds the Lua 5.4 stand-alone interpreter for wasm32-wasi (WASI
# preview 1), for the wasm machine kind, from Debian's lua5.4 source
# package: upstream's lua-5.4.4.tar.gz (checked against the SHA-256 that
# lua.org publishes) with Debian's two security fixes applied, nothing
# else of Debian's (its other patches are about its shared-library build).
#
#   build.sh OUT CACHE [CC]
#
# The source is fetched with apt-get into CACHE (outside git) once; apt
# checks it against the archive's signed index. Without the archive (no
# network, not a Debian-based host, another Lua version there) it says
# why and exits 0 without OUT, so that the other examples still build.
set -eu

out=$1
cache=$2
cc=${3:-clang}
here=$(cd "$(dirname "$0")" && pwd)

version=5.4.4
orig=lua5.4_$version.orig.tar.gz
orig_sha256=164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61
patches="0004-cve-2022-28805 0005-cve-2022-33099"

skip() {
	rm -rf "$cache/dl.$$"
	echo "lua: not built: $*" >&2
	exit 0
}

fetch() {
	command -v apt-get >/dev/null || skip "no apt-get to fetch Debian's lua5.4 source with"
	apt="$cache/apt"
	dl="$cache/dl.$$"
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$dl"
	# deb-src entries for the Debian archives this host already uses, in a
	# private apt state: the host's own apt configuration is left alone.
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	signed=
	[ -r "$keyring" ] && signed="[signed-by=$keyring] "
	apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Origin: Debian' 'Identifier: Packages' 2>/dev/null |
		sort -u | sed "s|^|deb-src $signed|" >"$apt/sources.list"
	[ -s "$apt/sources.list" ] || skip "this host uses no Debian archive to fetch lua5.4's source from"
	set -- -q -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts="$apt/parts" \
		-o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache"
	# apt downloads as the unprivileged _apt user, who cannot write here.
	[ "$(id -u)" = 0 ] && set -- "$@" -o APT::Sandbox::User=root
	# --error-on=any: by default a source that cannot be reached is only a
	# warning.
	apt-get "$@" --error-on=any update >"$apt/update.log" 2>&1 ||
		skip "apt-get update failed (the archive unreachable?): $(grep -m 1 '^[EW]:' "$apt/update.log" || tail -n 1 "$apt/update.log")"
	(cd "$dl" && apt-get "$@" source --download-only lua5.4) >"$apt/source.log" 2>&1 ||
		skip "apt-get source lua5.4 failed: $(tail -n 1 "$apt/source.log")"
	# Whole or not at all, for a build running beside this one.
	rm -rf "$cache/dl"
	mv "$dl" "$cache/dl"
	# The index is tens of MB and only needed again for another version.
	rm -rf "$apt"
}

sumof() { sha256sum "$1" | cut -d' ' -f1; }

if [ ! -f "$cache/dl/$orig" ] || [ "$(sumof "$cache/dl/$orig")" != "$orig_sha256" ]; then
	fetch
fi
[ -f "$cache/dl/$orig" ] || skip "the archive's lua5.4 is not $version ($(ls "$cache/dl" | tr '\n' ' ')); this build pins $version"
if [ "$(sumof "$cache/dl/$orig")" != "$orig_sha256" ]; then
	echo "lua: $cache/dl/$orig is not upstream's lua-$version.tar.gz (SHA-256 $(sumof "$cache/dl/$orig"), want $orig_sha256)" >&2
	exit 1
fi
debian=$(ls "$cache/dl"/lua5.4_$version-*.debian.tar.xz | tail -n 1)

src=$(mktemp -d "${TMPDIR:-/tmp}/dust-lua-XXXXXX")
trap 'rm -rf "$src"' EXIT
tar -xzf "$cache/dl/$orig" -C "$src"
tar -xJf "$debian" -C "$src"
for p in $patches; do
	patch -s -p1 -d "$src/lua-$version" <"$src/debian/patches/$p.patch"
done

mkdir -p "$(dirname "$out")"
# lua.c is the interpreter's main; luac.c is the compiler, not wanted.
# -g0: the name section is enough for trap reports.
"$cc" --target=wasm32-wasi -O2 -g0 -Wno-deprecated-declarations \
	-D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_PROCESS_CLOCKS \
	-include "$here/wasi/config.h" -I"$here/wasi" -I"$src/lua-$version/src" \
	-o "$out.tmp" \
	$(ls "$src/lua-$version/src"/*.c | grep -v '/luac\.c$') "$here/wasi/lwasi.c" \
	-lwasi-emulated-signal -lwasi-emulated-process-clocks
mv "$out.tmp" "$out"
