#!/usr/bin/env bash
#: Sluice against its WASM peers, in one run: builds the three
#: guests (bench/peers/guests), then the bench binary (Sluice, Extism and Fluvio's
#: SmartModule engine linked into one process), and runs it.
#:
#: Output: a table on stdout and $CARGO_TARGET_DIR/bench/peers.json
#: (CARGO_TARGET_DIR defaults to bench/peers/target).
#: Knobs: BENCH_N (calls per repetition, 200000), BENCH_REPS (3), BENCH_WARMUP (20000),
#:        JOBS (cargo -j, 2), PROFILE=sluice|extism|fluvio (perf record that engine
#:        alone, 1.5M calls (Fluvio 250k), instead of the comparison; writes
#:        $CARGO_TARGET_DIR/bench/perf-NAME.data, a flat report and the buckets table).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}"
jobs="${JOBS:-2}"

for t in wasm32-wasip2 wasm32-unknown-unknown; do
    if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
        rustup target add "$t"
    fi
done

# Guests: their own workspace and target dir (the host's release profile differs).
guest_target="$target/guests"
(
    cd "$here/guests"
    CARGO_TARGET_DIR="$guest_target" cargo build --release -j "$jobs" --locked \
        --target wasm32-wasip2 -p sluice-upper
    CARGO_TARGET_DIR="$guest_target" cargo build --release -j "$jobs" --locked \
        --target wasm32-unknown-unknown -p extism-upper -p fluvio-upper
)
dist="$target/bench/guests"
mkdir -p "$dist"
cp "$guest_target/wasm32-wasip2/release/sluice_upper.wasm" "$dist/"
cp "$guest_target/wasm32-unknown-unknown/release/extism_upper.wasm" "$dist/"
cp "$guest_target/wasm32-unknown-unknown/release/fluvio_upper.wasm" "$dist/"

(cd "$here" && CARGO_TARGET_DIR="$target" cargo build --release -j "$jobs" --locked)
bin="$target/release/sluice-peers-bench"

if [[ -n "${PROFILE:-}" ]]; then
    # One engine alone, long enough that compiling the guest is a small share.
    data="$target/bench/perf-$PROFILE.data"
    n=1500000
    # Fluvio's chain trips its 64 MiB cap at call ~284,000 (its memory grows every call).
    [[ "$PROFILE" == fluvio ]] && n=250000
    BENCH_N="${BENCH_N:-$n}" BENCH_REPS="${BENCH_REPS:-1}" BENCH_WARMUP="${BENCH_WARMUP:-0}" \
        perf record -g -F 4000 -o "$data" -- \
        "$bin" "$dist" "$target/bench/peers-$PROFILE.json" --only "$PROFILE"
    perf report -i "$data" --no-children --sort dso,sym --stdio -g none --percent-limit 0.5 \
        2>/dev/null > "$target/bench/perf-$PROFILE.txt"
    python3 "$here/perf-buckets.py" "$data" | tee "$target/bench/perf-$PROFILE-buckets.md"
    echo "flat profile: $target/bench/perf-$PROFILE.txt"
    exit 0
fi

"$bin" "$dist" "$target/bench/peers.json"
