#!/usr/bin/env python3
"""Buckets a flat `perf report` of the Sluice-only run (run.sh with PROFILE=sluice) by
where the time goes. Usage: perf-buckets.py PERF_DATA"""
import collections, re, subprocess, sys

out = subprocess.run(
    ["perf", "report", "-i", sys.argv[1], "--no-children", "--sort", "dso,sym",
     "--stdio", "-g", "none", "-t", "|"],
    capture_output=True, text=True, check=True).stdout
RULES = [
    ("guest wasm code (JIT)", lambda d, s: "JIT" in d),
    ("startup only: compiling the guest", lambda d, s: re.search(
        r"cranelift|regalloc2|wasmparser|wasm_encoder|wit_component|wit_parser|gimli|object::", s)),
    ("kernel + vdso (clock_gettime)", lambda d, s: d.startswith("[kernel") or d == "[vdso]"),
    ("wasmtime fibers (resume, suspend, catch_traps)", lambda d, s: re.search(
        r"fiber|catch_traps|Suspend::switch", s)),
    ("wasmtime async component call (concurrent: GuestTask, QueuedCall, resource table, oneshot)",
     lambda d, s: re.search(r"concurrent|QueuedCall|GuestCall|GuestTask|scope|resource_table|oneshot|futures_channel|PollFn", s)),
    ("wasmtime canonical ABI lift/lower", lambda d, s: "wasmtime" in s and re.search(
        r"typed|WasmList|lower|lift|realloc|options_memory|abi_info|Options|LowerContext|LiftContext", s)),
    ("other wasmtime", lambda d, s: "wasmtime" in s),
    ("sluice engine (Worker::handle, message/outputs conversion)", lambda d, s: "sluice" in s and "peers_bench" not in s),
    ("malloc / free / memmove", lambda d, s: d.startswith("libc") or re.search(r"malloc|free|memmove|memcpy", s)),
    ("tokio / futures", lambda d, s: re.search(r"tokio|futures", s)),
    ("other", lambda d, s: True),
]
buckets = collections.OrderedDict((name, 0.0) for name, _ in RULES)
for line in out.splitlines():
    if line.startswith("#") or not line.strip():
        continue
    parts = [p.strip() for p in line.split("|")]
    if len(parts) < 3 or not parts[0].endswith("%"):
        continue
    pct, dso, sym = float(parts[0][:-1]), parts[1], parts[2]
    for name, rule in RULES:
        if rule(dso, sym):
            buckets[name] += pct
            break
for name, pct in buckets.items():
    print(f"| {name} | {pct:.1f}% |")
