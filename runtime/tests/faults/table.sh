#!/usr/bin/env bash
#: Rewrites the fault table of docs/faults.md, between its `fault-table` markers, from
#: the `[fault]` lines the fault tests left in target/fault-lines/ (one per test, from
#: its latest run; `common::fault_line`). Run the tests first:
#:   cargo test -p sluice --test faults -- --test-threads 1
#:   cargo test -p sluice --test brokers -- conformance_
#:   bash runtime/tests/faults/table.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
lines="$root/target/fault-lines"
doc="$root/docs/faults.md"
begin='<!-- fault-table:begin (written by runtime/tests/faults/table.sh) -->'
end='<!-- fault-table:end -->'

shopt -s nullglob
files=("$lines"/*.line)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "table.sh: no [fault] lines in $lines: run the fault tests first" >&2
    exit 1
fi
grep -qxF "$begin" "$doc" && grep -qxF "$end" "$doc" || {
    echo "table.sh: $doc lacks the markers:" >&2
    printf '  %s\n  %s\n' "$begin" "$end" >&2
    exit 1
}

table="$(mktemp)"
trap 'rm -f "$table"' EXIT
{
    echo "| fault | sent | delivered | dead-lettered | lost | duplicated | recovery |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    cat "${files[@]}" | LC_ALL=C sort | awk '
    {
        delete f
        what = substr($0, index($0, " what=") + 6)
        for (i = 2; i <= NF; i++) {
            eq = index($i, "=")
            if (eq == 0) continue
            key = substr($i, 1, eq - 1)
            if (key == "what") break
            f[key] = substr($i, eq + 1)
        }
        rec = f["recovery_ms"] == "none" ? "—" : sprintf("%.2f s", f["recovery_ms"] / 1000)
        lost = f["lost"] + 0 > 0 ? "**" f["lost"] "**" : f["lost"]
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", what, f["sent"], f["delivered"], f["dead"], lost, f["dup"], rec
    }'
} > "$table"

out="$(mktemp)"
awk -v begin="$begin" -v end="$end" -v table="$table" '
    $0 == begin { print; while ((getline l < table) > 0) print l; skip = 1; next }
    $0 == end { skip = 0 }
    !skip { print }
' "$doc" > "$out"
mv "$out" "$doc"
echo "table.sh: $(( $(wc -l < "$table") - 2 )) rows written to $doc"
