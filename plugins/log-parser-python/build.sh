#!/usr/bin/env bash
# Builds the Python log-parser into plugins/dist/log-parser-python.wasm (and the hostile
# variant used by the sandbox tests into log-parser-python-hostile.wasm).
# Needs: pip install componentize-py==0.25.1 (or bash .ci/install-guest-toolchains.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
dist="$root/plugins/dist"
mkdir -p "$dist"
command -v componentize-py >/dev/null || {
    echo "componentize-py not found: pip install componentize-py==0.25.1 (or bash .ci/install-guest-toolchains.sh)" >&2
    exit 127
}
cd "$here"
for app in app hostile; do
    out="$dist/log-parser-python.wasm"
    [ "$app" = hostile ] && out="$dist/log-parser-python-hostile.wasm"
    componentize-py -d "$root/guest-sdk/wit" -w handler componentize -p "$here" "$app" -o "$out.tmp" >/dev/null
    mv "$out.tmp" "$out"
    echo "built $out ($(stat -c %s "$out") bytes)"
done
