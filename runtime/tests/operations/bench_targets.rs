//! The plot bench's judge of the performance targets (`benches/plot/targets.rs`),
//! fed hand-made bench files: a bound is met or missed on the right side of
//! it, the best configuration is the one compared, and a bench that did not
//! run (or a soak shorter than ten minutes) is never reported as met.

use crate::targets;

use serde_json::{Value, json};
use targets::{Row, judge, markdown, to_json};

/// Judges with only the given files present.
fn judged(files: &[(&str, Value)]) -> Vec<Row> {
    judge(|name| {
        files
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, v)| v.clone())
    })
}

/// The one row whose target starts with `prefix`.
fn only<'a>(rows: &'a [Row], prefix: &str) -> &'a Row {
    let found: Vec<&Row> = rows
        .iter()
        .filter(|r| r.target.starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "rows starting with {prefix:?}");
    found[0]
}

#[test]
fn nothing_measured_is_never_met() {
    let rows = judged(&[]);
    // One row per target: brokers, handler, peers, poison, soak.
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert_eq!(r.met, None, "{}", r.target);
        assert!(r.measured.starts_with("not measured"), "{}", r.measured);
    }
    let table = markdown(&rows);
    assert!(table.starts_with("| target | measured | met |\n|---|---|---|\n"));
    assert_eq!(table.lines().count(), 2 + 5);
    assert!(!table.contains("yes"), "{table}");
}

fn broker(name: &str, raw: f64, bound: f64, ratios: &[(u64, f64)]) -> Value {
    let sluice: Vec<Value> = ratios
        .iter()
        .map(|(c, r)| json!({"concurrency": c, "msgs_per_s": raw * r, "ratio": r}))
        .collect();
    json!({"broker": name, "raw": {"msgs_per_s": raw}, "target_ratio": bound, "sluice": sluice})
}

#[test]
fn a_broker_meets_its_bound_with_its_better_concurrency() {
    let brokers = json!({"brokers": [
        broker("NATS core", 400_000.0, 0.90, &[(1, 0.50), (8, 0.91)]),
        broker("MQTT", 40_000.0, 0.95, &[(1, 0.949), (8, 0.80)]),
        // A broker without Sluice runs says nothing either way.
        broker("JetStream", 100_000.0, 0.95, &[]),
    ]});
    let rows = judged(&[("brokers.json", brokers)]);
    let nats = only(&rows, "1. Sluice vs a raw relay, NATS core");
    assert_eq!(nats.met, Some(true));
    assert!(
        nats.measured.contains("raw relay 400,000 msg/s"),
        "{}",
        nats.measured
    );
    assert!(
        nats.measured.contains("c=8 364,000 msg/s = **0.91**"),
        "{}",
        nats.measured
    );
    assert_eq!(
        only(&rows, "1. Sluice vs a raw relay, MQTT").met,
        Some(false)
    );
    assert_eq!(only(&rows, "1. Sluice vs a raw relay, JetStream").met, None);
}

#[test]
fn wasm_is_compared_with_the_fastest_native_configuration() {
    // WASM is fastest at c=2, native at c=1: 80k / 100k = 0.80, met; pairing
    // c=2 with c=2 (80k / 40k) would have said 2.0.
    let handler = json!({
        "echo_c1_wasm_msgs_per_s": 50_000.0, "echo_c2_wasm_msgs_per_s": 80_000.0,
        "echo_c1_native_msgs_per_s": 100_000.0, "echo_c2_native_msgs_per_s": 40_000.0,
        "echo_c1_ratio": 0.5,
        "log-parser_c1_wasm_msgs_per_s": 30_000.0,
        "log-parser_c1_native_msgs_per_s": 100_000.0,
        "log-parser_c1_ratio": 0.3,
    });
    let rows = judged(&[("handler.json", handler)]);
    let echo = only(&rows, "2. WASM vs native, same pipeline, echo");
    assert_eq!(echo.met, Some(true));
    assert!(
        echo.measured.contains(
            "80,000 msg/s (c=2, batch 16) vs fastest native 100,000 (c=1, batch 16) = **0.80**"
        ),
        "{}",
        echo.measured
    );
    assert!(
        echo.measured.contains("against itself: 0.50"),
        "{}",
        echo.measured
    );
    let parser = only(&rows, "2. WASM vs native, same pipeline, log-parser");
    assert_eq!(parser.met, Some(false));
    // c=1 against c=1 is the ratio shown, not repeated.
    assert!(
        !parser.measured.contains("against itself"),
        "{}",
        parser.measured
    );
}

#[test]
fn peers_are_judged_against_each_bound_separately() {
    let peers = json!({"engines": {
        "sluice": {"cpu_us_per_msg": 1.0},
        "extism": {"cpu_us_per_msg": 12.5},
        "fluvio": {"cpu_us_per_msg": 3.0},
    }});
    let rows = judged(&[("peers.json", peers)]);
    let extism = only(&rows, "3. CPU a message vs a WASM peer, Extism");
    assert_eq!(extism.met, Some(true), "{}", extism.measured);
    assert!(
        extism.measured.ends_with("= **0.080**"),
        "{}",
        extism.measured
    );
    assert_eq!(
        only(&rows, "3. CPU a message vs a WASM peer, Fluvio").met,
        Some(false)
    );
}

#[test]
fn the_poison_path_has_two_bounds() {
    let handler = json!({
        "poison_msgs_per_s": 30_000.0, "healthy_msgs_per_s": 100_000.0,
        "instantiate_us": 12.0, "bare_instantiate_us": 5.0,
    });
    let rows = judged(&[("handler.json", handler)]);
    let stream = only(&rows, "4. Poison path: poison stream");
    assert_eq!(stream.met, Some(true));
    assert!(
        stream.measured.ends_with("= **0.30**"),
        "{}",
        stream.measured
    );
    let fresh = only(&rows, "4. Poison path: re-instantiation");
    assert_eq!(fresh.met, Some(false));
    assert!(
        fresh.measured.ends_with("= **2.40×**"),
        "{}",
        fresh.measured
    );
}

fn soak(seconds: f64, spread: f64) -> Value {
    json!({
        "seconds": seconds, "messages": 1_000_000.0, "rss_spread": spread,
        "rss_min_bytes": 24.0 * 1048576.0, "rss_max_bytes": 25.0 * 1048576.0,
        "idle_pipeline_bytes": 151.0 * 1024.0,
    })
}

#[test]
fn a_soak_counts_only_when_it_ran_ten_minutes() {
    let met = |seconds, spread| only(&judged(&[("soak.json", soak(seconds, spread))]), "5.").met;
    assert_eq!(met(600.0, 0.05), Some(true));
    assert_eq!(met(600.0, 0.15), Some(false));
    assert_eq!(met(599.0, 0.0), None);
    let rows = judged(&[("soak.json", soak(600.0, 0.003))]);
    let row = only(&rows, "5.");
    assert_eq!(
        row.measured,
        "1,000,000 messages in 600 s: spread **0.3%**, 24.0–25.0 MiB; idle pipeline 151 KiB"
    );
}

#[test]
fn the_json_keeps_every_row_and_its_verdict() {
    let rows = judged(&[("soak.json", soak(600.0, 0.05))]);
    let v = to_json(&rows);
    let rows_json = v.as_array().expect("an array");
    assert_eq!(rows_json.len(), rows.len());
    let verdicts: Vec<&Value> = rows_json.iter().map(|r| &r["met"]).collect();
    assert_eq!(verdicts.iter().filter(|m| m.is_null()).count(), 4);
    assert_eq!(rows_json[4]["met"], json!(true));
}
