#!/usr/bin/env bash
# The monitoring files in deploy/: the alert rules are valid and pass their
# unit tests, and every query of the Grafana dashboard is valid PromQL (each
# is checked as a recording rule, Grafana's variables given plain values).
# Which metrics they name is checked against a running `sluice` by
# runtime/tests/operations/monitoring.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

promtool check rules deploy/prometheus/sluice-alerts.yml
(cd deploy/prometheus && promtool test rules sluice-alerts.test.yml)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - deploy/grafana/sluice.json > "$tmp/dashboard-queries.yml" <<'PY'
import json, sys

def queries(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from queries(v)
    elif isinstance(node, list):
        for v in node:
            yield from queries(v)

exprs = list(queries(json.load(open(sys.argv[1]))))
if not exprs:
    sys.exit("no queries found in the dashboard")
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    e = e.replace("$__rate_interval", "5m").replace("$pipeline", ".*")
    print(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}")
PY
promtool check rules "$tmp/dashboard-queries.yml"
