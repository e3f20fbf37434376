#!/usr/bin/env bash
# Builds the C log-parser as a core wasm module into plugins/dist/log-parser-c.wasm (and the
# hostile variant used by the sandbox tests into log-parser-c-hostile.wasm). The Sluice runtime
# turns the core module into a component when it loads it: no wasm-tools or wit-bindgen needed.
# Needs: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 (or bash .ci/install-guest-toolchains.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dist="$root/plugins/dist"
sdk="$root/guest-sdk/c"
command -v clang >/dev/null && [ -f /usr/lib/wasm32-wasi/libc.a ] || {
    echo "clang for wasm32-wasi not found: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32 (or bash .ci/install-guest-toolchains.sh)" >&2
    exit 127
}
mkdir -p "$dist"
build() { # out, extra flags...
    local out="$1"; shift
    clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -fuse-ld=lld -O2 -Wall -Wextra \
        -Wl,--strip-all -I "$sdk" "$@" "$sdk/sluice_handler.c" "$here/log_parser.c" -o "$out.tmp"
    mv "$out.tmp" "$out"
    echo "built $out ($(stat -c %s "$out") bytes)"
}
build "$dist/log-parser-c.wasm"
build "$dist/log-parser-c-hostile.wasm" -DSLUICE_HOSTILE
