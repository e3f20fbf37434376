#!/usr/bin/env bash
#: Builds every plugin in release mode for wasm32-wasip2 and copies each component to
#: plugins/dist/<name>.wasm (dashes, as the crate is named). Works from any directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# rust-toolchain.toml already asks rustup for the target; this covers a rustup that did not.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

cargo build --release --target wasm32-wasip2 --workspace

# Crate names come from the workspace members; cargo names the artifact with underscores.
members=$(sed -n '/^members = \[/,/^\]/p' Cargo.toml | grep -o '"[^"]*"' | tr -d '"')
mkdir -p dist
for name in $members; do
    artifact="target/wasm32-wasip2/release/${name//-/_}.wasm"
    if [[ ! -f "$artifact" ]]; then
        echo "build.sh: $artifact was not produced" >&2
        exit 1
    fi
    cp "$artifact" "dist/$name.wasm"
done
ls -l dist/*.wasm | awk '{printf "%10d  %s\n", $5, $NF}'
