#!/usr/bin/env bash
# Builds the handler into {{name}}.wasm, a core module that Sluice turns into
# a component when it loads it. Needs: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32
set -euo pipefail
cd "$(dirname "$0")"
sdk="{{sdk}}/c"
clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -fuse-ld=lld -O2 -Wall -Wextra \
    -Wl,--strip-all -I "$sdk" "$sdk/sluice_handler.c" handler.c -o {{name}}.wasm
echo "built {{name}}.wasm"
