#!/usr/bin/env bash
# Builds the JavaScript log-parser into plugins/dist/log-parser-js.wasm with componentize-js
# (pinned in guest-sdk/js/package.json; `npm ci --prefix guest-sdk/js` or
# bash .ci/install-guest-toolchains.sh installs it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dist="$root/plugins/dist"
cjs="$root/guest-sdk/js/node_modules/.bin/componentize-js"
[ -x "$cjs" ] || {
    echo "componentize-js not found: npm ci --prefix guest-sdk/js (or bash .ci/install-guest-toolchains.sh)" >&2
    exit 127
}
mkdir -p "$dist"
out="$dist/log-parser-js.wasm"
# -d: leave out WASI interfaces the handler does not use (the host grants none of them anyway).
"$cjs" --wit "$root/guest-sdk/wit" --world-name handler -d http fetch-event stdio random clocks \
    -o "$out.tmp" "$here/handler.js" >/dev/null
mv "$out.tmp" "$out"
echo "built $out ($(stat -c %s "$out") bytes)"
