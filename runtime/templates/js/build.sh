#!/usr/bin/env bash
# Builds the handler into {{name}}.wasm with componentize-js, installed in the
# SDK folder: npm ci --prefix {{sdk}}/js
set -euo pipefail
cd "$(dirname "$0")"
"{{sdk}}/js/node_modules/.bin/componentize-js" --wit "{{sdk}}/wit" --world-name handler \
    -d http fetch-event stdio random clocks -o {{name}}.wasm handler.js
echo "built {{name}}.wasm"
