//! The five performance targets, judged from the figures the benches wrote: one
//! row per target with what was measured, the bound and whether it holds,
//! printed as the Markdown table of `docs/performance.md` and written to
//! `target/bench/targets.json`. A target whose bench has not run is shown
//! as not measured, never as met.

use serde_json::{Value, json};

/// Target 2: WASM throughput at least this share of native.
pub const WASM_OF_NATIVE: f64 = 0.8;
/// Target 3: Sluice's CPU a message at most this share of Extism's / Fluvio's.
const OF_EXTISM: f64 = 0.10;
const OF_FLUVIO: f64 = 0.25;
/// Target 4: a stream of poison messages at least this share of a healthy one.
pub const POISON_OF_HEALTHY: f64 = 0.25;
/// Target 4: Sluice's instantiation at most this multiple of wasmtime's bare one.
const REINSTANTIATE_OVER_BARE: f64 = 2.0;
/// Target 5: the RSS spread allowed, over at least this many seconds.
const RSS_SPREAD: f64 = 0.10;
const SOAK_SECS: f64 = 600.0;

/// One target's verdict.
pub struct Row {
    /// The target, shortened, with its bound.
    pub target: String,
    /// What was measured, with the figures it came from.
    pub measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub met: Option<bool>,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn row(target: &str, measured: String, met: Option<bool>) -> Row {
    Row {
        target: target.to_string(),
        measured,
        met,
    }
}

fn not_measured(target: &str, file: &str) -> Row {
    row(
        target,
        format!("not measured (no `target/bench/{file}`)"),
        None,
    )
}

/// Target 1, one row per broker: the better of Sluice's two concurrencies
/// against the raw relay of the same run.
fn brokers(v: Option<&Value>) -> Vec<Row> {
    let target = "1. Sluice vs a raw relay";
    let Some(v) = v else {
        return vec![not_measured(target, "brokers.json")];
    };
    let mut rows = Vec::new();
    for b in v["brokers"].as_array().into_iter().flatten() {
        let name = b["broker"].as_str().unwrap_or("?");
        let (Some(raw), Some(bound)) = (num(&b["raw"]["msgs_per_s"]), num(&b["target_ratio"]))
        else {
            continue;
        };
        let runs: Vec<(u64, f64, f64)> = b["sluice"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s["concurrency"].as_u64()?,
                    num(&s["msgs_per_s"])?,
                    num(&s["ratio"])?,
                ))
            })
            .collect();
        let parts: Vec<String> = runs
            .iter()
            .map(|(c, r, ratio)| format!("c={c} {} msg/s = **{ratio:.2}**", rate(*r)))
            .collect();
        let best = runs.iter().map(|r| r.2).fold(f64::NAN, f64::max);
        rows.push(row(
            &format!("{target}, {name} (≥ {bound:.2})"),
            format!("raw relay {} msg/s; Sluice {}", rate(raw), parts.join(", ")),
            (!best.is_nan()).then_some(best >= bound),
        ));
    }
    if rows.is_empty() {
        rows.push(row(target, "no broker in `brokers.json`".into(), None));
    }
    rows
}

/// Target 2: each handler's fastest WASM configuration against its fastest
/// native one (two workers can be slower than one natively, so pairing
/// configurations alone would flatter the sandbox).
fn handler(v: Option<&Value>) -> Vec<Row> {
    let target = "2. WASM vs native, same pipeline";
    let Some(v) = v else {
        return vec![not_measured(target, "handler.json")];
    };
    let mut rows = Vec::new();
    for name in ["echo", "log-parser"] {
        let best = |side: &str| {
            ["c1", "c2", "c1_b1", "c2_b1"]
                .iter()
                .filter_map(|k| num(&v[format!("{name}_{k}_{side}_msgs_per_s")]).map(|x| (x, *k)))
                .fold(None, |a: Option<(f64, &str)>, b| match a {
                    Some(a) if a.0 >= b.0 => Some(a),
                    _ => Some(b),
                })
        };
        let (Some((w, wk)), Some((n, nk))) = (best("wasm"), best("native")) else {
            continue;
        };
        // The default configuration's own ratio, when it is not the one above.
        let c1 = num(&v[format!("{name}_c1_ratio")])
            .filter(|_| (wk, nk) != ("c1", "c1"))
            .map_or(String::new(), |r| {
                format!("; c=1, batch 16 against itself: {r:.2}")
            });
        rows.push(row(
            &format!("{target}, {name} (≥ {WASM_OF_NATIVE:.2})"),
            format!(
                "fastest WASM {} msg/s ({}) vs fastest native {} ({}) = **{:.2}**{c1}",
                rate(w),
                config(wk),
                rate(n),
                config(nk),
                w / n
            ),
            Some(w / n >= WASM_OF_NATIVE),
        ));
    }
    if rows.is_empty() {
        rows.push(row(
            target,
            "no handler rows in `handler.json`".into(),
            None,
        ));
    }
    rows
}

/// A count with thousands separators: `1234567` → `1,234,567`.
fn rate(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `c1_b1` → `c=1, batch 1`.
fn config(key: &str) -> String {
    let (c, b) = key.split_once("_b").unwrap_or((key, "16"));
    format!("c={}, batch {b}", c.trim_start_matches('c'))
}

/// Target 3: process CPU per message against Extism and Fluvio.
fn peers(v: Option<&Value>) -> Vec<Row> {
    let target = "3. CPU a message vs a WASM peer";
    let Some(v) = v else {
        return vec![not_measured(target, "peers.json")];
    };
    let cpu = |e: &str| num(&v["engines"][e]["cpu_us_per_msg"]);
    let Some(s) = cpu("sluice") else {
        return vec![row(target, "no Sluice figure in `peers.json`".into(), None)];
    };
    [
        ("extism", "Extism", OF_EXTISM),
        ("fluvio", "Fluvio", OF_FLUVIO),
    ]
    .into_iter()
    .map(|(key, name, bound)| match cpu(key) {
        Some(p) => row(
            &format!("{target}, {name} (≤ {bound:.2})"),
            format!("Sluice {s:.3} µs vs {name} {p:.3} µs = **{:.3}**", s / p),
            Some(s / p <= bound),
        ),
        None => row(target, format!("no {name} figure in `peers.json`"), None),
    })
    .collect()
}

/// Target 4: the poison stream against the healthy one, and Sluice's
/// instantiation against wasmtime's bare one.
fn poison(v: Option<&Value>) -> Vec<Row> {
    let target = "4. Poison path";
    let Some(v) = v else {
        return vec![not_measured(target, "handler.json")];
    };
    let mut rows = Vec::new();
    if let (Some(p), Some(h)) = (num(&v["poison_msgs_per_s"]), num(&v["healthy_msgs_per_s"])) {
        rows.push(row(
            &format!("{target}: poison stream vs healthy (≥ {POISON_OF_HEALTHY:.2})"),
            format!(
                "every message trapping {} msg/s vs healthy {} = **{:.2}**",
                rate(p),
                rate(h),
                p / h
            ),
            Some(p / h >= POISON_OF_HEALTHY),
        ));
    }
    if let (Some(i), Some(b)) = (num(&v["instantiate_us"]), num(&v["bare_instantiate_us"])) {
        rows.push(row(
            &format!(
                "{target}: re-instantiation vs wasmtime's bare pooling (≤ {REINSTANTIATE_OVER_BARE}×)"
            ),
            format!(
                "Sluice {i:.2} µs vs wasmtime bare {b:.2} µs = **{:.2}×**",
                i / b
            ),
            Some(i / b <= REINSTANTIATE_OVER_BARE),
        ));
    }
    if rows.is_empty() {
        rows.push(row(
            target,
            "no poison figures in `handler.json`".into(),
            None,
        ));
    }
    rows
}

/// Target 5: resident memory over the soak, and the idle footprint.
fn soak(v: Option<&Value>) -> Vec<Row> {
    let target = &format!(
        "5. RSS over {:.0} min at full speed (spread ≤ {:.0}%)",
        SOAK_SECS / 60.0,
        RSS_SPREAD * 100.0
    );
    let Some(v) = v else {
        return vec![not_measured(target, "soak.json")];
    };
    let mib = |k: &str| num(&v[k]).map(|b| b / 1048576.0);
    let (Some(spread), Some(secs)) = (num(&v["rss_spread"]), num(&v["seconds"])) else {
        return vec![row(target, "no RSS figures in `soak.json`".into(), None)];
    };
    let range = match (mib("rss_min_bytes"), mib("rss_max_bytes")) {
        (Some(lo), Some(hi)) => format!(", {lo:.1}–{hi:.1} MiB"),
        _ => String::new(),
    };
    let idle = num(&v["idle_pipeline_bytes"]).map_or(String::new(), |b| {
        format!("; idle pipeline {:.0} KiB", b / 1024.0)
    });
    let messages = num(&v["messages"]).unwrap_or(0.0);
    vec![row(
        target,
        format!(
            "{} messages in {secs:.0} s: spread **{:.1}%**{range}{idle}",
            rate(messages),
            spread * 100.0
        ),
        // Shorter than ten minutes says nothing about ten minutes.
        (secs >= SOAK_SECS).then_some(spread <= RSS_SPREAD),
    )]
}

/// Every target's rows, from the benches' JSON files as `read` finds them.
pub fn judge(read: impl Fn(&str) -> Option<Value>) -> Vec<Row> {
    let handler_json = read("handler.json");
    let mut rows = brokers(read("brokers.json").as_ref());
    rows.extend(handler(handler_json.as_ref()));
    rows.extend(peers(read("peers.json").as_ref()));
    rows.extend(poison(handler_json.as_ref()));
    rows.extend(soak(read("soak.json").as_ref()));
    rows
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from("| target | measured | met |\n|---|---|---|\n");
    for r in rows {
        let met = match r.met {
            Some(true) => "**yes**",
            Some(false) => "no",
            None => "—",
        };
        s.push_str(&format!("| {} | {} | {met} |\n", r.target, r.measured));
    }
    s
}

/// The rows as JSON.
pub fn to_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| json!({"target": r.target, "measured": r.measured, "met": r.met}))
            .collect(),
    )
}
