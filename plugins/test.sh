#!/usr/bin/env bash
#: Runs the unit tests of every plugin and of the Rust guest SDK natively (the
#: `test-host` alias of .cargo/config.toml: the host target instead of wasm32-wasip2).
#: Part of the repository's test command (README, .ci/run). Works from any directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

cargo test-host --workspace
# The SDK is a path dependency, not a member: name it to test it.
cargo test-host -p sluice-guest
