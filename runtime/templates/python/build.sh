#!/usr/bin/env bash
# Builds the handler into {{name}}.wasm. Needs: pip install componentize-py==0.25.1
set -euo pipefail
cd "$(dirname "$0")"
componentize-py -d "{{sdk}}/wit" -w handler componentize -p . app -o {{name}}.wasm
echo "built {{name}}.wasm"
