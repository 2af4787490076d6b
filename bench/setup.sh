#!/bin/sh
# Installs what `dust bench` needs beyond the Go toolchain, on Debian:
# gcc and binutils (static process baselines, the QEMU guest), clang and
# wasi-libc (the wasm examples), qemu-system-x86 (the QEMU microvm
# contender) and runc (the container-per-request contender). Without qemu
# or runc the bench still runs and says the row was skipped. Needs root.
set -eu
need=""
command -v gcc >/dev/null || need="$need gcc libc6-dev"
command -v make >/dev/null || need="$need make"
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
command -v runc >/dev/null || need="$need runc"
{ command -v clang >/dev/null && command -v wasm-ld >/dev/null && [ -e /usr/include/wasm32-wasi/stdio.h ]; } ||
	need="$need clang lld wasi-libc libclang-rt-14-dev-wasm32"
[ -z "$need" ] && exit 0
apt-get update -qq
# --no-install-recommends: qemu's recommends pull in a desktop's worth.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
