//! Plots and the targets table: reads the figures the other benches wrote
//! (`target/bench/*.json`), draws them as SVG into `docs/bench/` for
//! `docs/performance.md` — plain SVG written here, no plotting dependency —
//! and prints the performance targets as a Markdown table, also written to
//! `target/bench/targets.json`.
//!
//! Run after the benches: `cargo bench -p sluice --bench plot`.
//! Charts whose input file is missing are skipped.

mod targets;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

const WIDTH: f64 = 900.0;
const LABEL_W: f64 = 310.0;
const BAR_H: f64 = 18.0;
const COLORS: [&str; 4] = ["#8c8c8c", "#2b6cb0", "#38a169", "#d69e2e"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where this workspace's benches write their figures.
fn bench_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("bench")
}

fn read(name: &str) -> Option<Value> {
    // The peers crate has its own target folder (bench/peers/target unless
    // CARGO_TARGET_DIR says otherwise).
    let dirs = [
        bench_dir(),
        repo().join("target/bench"),
        repo().join("bench/peers/target/bench"),
    ];
    let text = dirs
        .into_iter()
        .find_map(|d| std::fs::read_to_string(d.join(name)).ok())?;
    serde_json::from_str(&text).ok()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One group of bars: a heading and (label, value, text shown) per bar.
struct Group {
    title: String,
    bars: Vec<(String, f64, String)>,
    /// A vertical marker at this value (a target), if any.
    mark: Option<(f64, String)>,
}

/// Horizontal bars, each group on its own scale (its largest value or mark
/// fills the width), so groups of very different magnitudes stay readable.
fn hbars(title: &str, note: &str, groups: &[Group]) -> String {
    let bars: usize = groups.iter().map(|g| g.bars.len()).sum();
    let height = 70.0 + groups.len() as f64 * 30.0 + bars as f64 * (BAR_H + 4.0) + 30.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">{}</text>\n\
         <text x=\"10\" y=\"42\" fill=\"#555\">{}</text>\n",
        esc(title),
        esc(note)
    );
    let mut y = 60.0;
    let span = WIDTH - LABEL_W - 110.0;
    for g in groups {
        y += 20.0;
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{}</text>",
            esc(&g.title)
        );
        y += 8.0;
        let top = y;
        let max = g
            .bars
            .iter()
            .map(|b| b.1)
            .chain(g.mark.as_ref().map(|m| m.0))
            .fold(f64::MIN_POSITIVE, f64::max);
        for (i, (label, value, text)) in g.bars.iter().enumerate() {
            let w = (value / max * span).max(1.0);
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{LABEL_W}\" y=\"{y}\" width=\"{w:.1}\" height=\"{BAR_H}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{}</text>",
                LABEL_W - 6.0,
                y + 13.0,
                esc(label),
                COLORS[i % COLORS.len()],
                LABEL_W + w + 4.0,
                y + 13.0,
                esc(text)
            );
            y += BAR_H + 4.0;
        }
        if let Some((at, text)) = &g.mark {
            let x = LABEL_W + at / max * span;
            let _ = writeln!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{y}\" stroke=\"#c53030\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{x:.1}\" y=\"{}\" fill=\"#c53030\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                top - 2.0,
                top - 3.0,
                esc(text)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A line of (x, y) points with axes labelled by their ranges.
fn line(title: &str, note: &str, x_label: &str, y_label: &str, pts: &[(f64, f64)]) -> String {
    let (w, h, left, top) = (WIDTH, 320.0, 70.0, 60.0);
    let (pw, ph) = (w - left - 30.0, h - top - 50.0);
    let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let px = |x: f64| left + x / x_max * pw;
    let py = |y: f64| top + ph - y / y_max * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"16\" font-weight=\"bold\">{}</text>\n\
         <text x=\"10\" y=\"42\" fill=\"#555\">{}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        esc(title),
        esc(note),
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for i in 0..=4 {
        let (xv, yv) = (x_max * i as f64 / 4.0, y_max * i as f64 / 4.0);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{xv:.0}</text>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.0}</text>",
            px(xv),
            top + ph + 16.0,
            left - 6.0,
            py(yv) + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        left + pw / 2.0,
        h - 10.0,
        esc(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        esc(y_label)
    );
    let path: Vec<String> = pts
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#2b6cb0\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    s.push_str("</svg>\n");
    s
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn brokers(v: &Value) -> String {
    let mut groups = Vec::new();
    for b in v["brokers"].as_array().into_iter().flatten() {
        let raw = num(&b["raw"]["msgs_per_s"]);
        let mut bars = vec![("raw relay".to_string(), raw, format!("{raw:.0} msg/s"))];
        for s in b["sluice"].as_array().into_iter().flatten() {
            let rate = num(&s["msgs_per_s"]);
            bars.push((
                format!("Sluice c={}", s["concurrency"]),
                rate,
                format!("{rate:.0} msg/s ({:.2} of raw)", num(&s["ratio"])),
            ));
        }
        let target = num(&b["target_ratio"]);
        groups.push(Group {
            title: b["broker"].as_str().unwrap_or("?").to_string(),
            bars,
            mark: Some((raw * target, format!("target {target:.2}"))),
        });
    }
    hbars(
        "Sluice vs a raw relay of the same client crate",
        &format!(
            "{} messages of 100 bytes per run, echo.wasm under fuel + deadline + memory cap; each broker on its own scale",
            v["messages_per_run"]
        ),
        &groups,
    )
}

fn handler(v: &Value) -> String {
    let mut groups = Vec::new();
    for name in ["echo", "log-parser"] {
        for c in [1, 2] {
            let w = num(&v[format!("{name}_c{c}_wasm_msgs_per_s")]);
            let n = num(&v[format!("{name}_c{c}_native_msgs_per_s")]);
            if w == 0.0 {
                continue;
            }
            let mut bars = vec![
                ("native, batch 16".into(), n, format!("{n:.0} msg/s")),
                (
                    "WASM, batch 16".into(),
                    w,
                    format!("{w:.0} msg/s ({:.2} of native)", w / n),
                ),
            ];
            let w1 = num(&v[format!("{name}_c{c}_b1_wasm_msgs_per_s")]);
            let n1 = num(&v[format!("{name}_c{c}_b1_native_msgs_per_s")]);
            if w1 > 0.0 {
                bars.push(("native, batch 1".into(), n1, format!("{n1:.0} msg/s")));
                bars.push((
                    "WASM, batch 1".into(),
                    w1,
                    format!("{w1:.0} msg/s ({:.2} of native)", w1 / n1),
                ));
            }
            groups.push(Group {
                title: format!("{name}, concurrency {c}"),
                bars,
                mark: Some((
                    n * targets::WASM_OF_NATIVE,
                    format!("target {}", targets::WASM_OF_NATIVE),
                )),
            });
        }
    }
    let healthy = num(&v["healthy_msgs_per_s"]);
    let poison = num(&v["poison_msgs_per_s"]);
    if healthy > 0.0 {
        groups.push(Group {
            title: "every message traps (dead letter + fresh instance)".into(),
            bars: vec![
                (
                    "healthy stream".into(),
                    healthy,
                    format!("{healthy:.0} msg/s"),
                ),
                (
                    "poison stream".into(),
                    poison,
                    format!("{poison:.0} msg/s ({:.2} of healthy)", poison / healthy),
                ),
            ],
            mark: Some((
                healthy * targets::POISON_OF_HEALTHY,
                format!("target {}", targets::POISON_OF_HEALTHY),
            )),
        });
    }
    hbars(
        "WASM handler vs native, same pipeline (in-memory source and sink)",
        "messages/s; each group on its own scale",
        &groups,
    )
}

fn peers(v: &Value) -> String {
    let mut bars = Vec::new();
    for name in ["sluice", "extism", "fluvio"] {
        let e = &v["engines"][name];
        let us = num(&e["cpu_us_per_msg"]);
        if us > 0.0 {
            bars.push((
                e["versions"].as_str().unwrap_or(name).to_string(),
                us,
                format!("{us:.2} µs"),
            ));
        }
    }
    hbars(
        "CPU per message against the WASM peers (one record per call)",
        "ASCII uppercase of 100 bytes; fuel + timeout + memory cap where the engine has them; shorter is better",
        &[Group {
            title: "process CPU µs per message".into(),
            bars,
            mark: None,
        }],
    )
}

fn soak(v: &Value) -> String {
    let pts: Vec<(f64, f64)> = v["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (num(&s["t"]), num(&s["rss"]) / 1048576.0))
        .collect();
    line(
        "Resident memory while streaming at full speed",
        &format!(
            "{} messages in {} s through echo.wasm; spread after warm-up {:.1}% (target ≤ 10%)",
            v["messages"],
            v["seconds"],
            num(&v["rss_spread"]) * 100.0
        ),
        "seconds",
        "RSS (MiB)",
        &pts,
    )
}

fn main() {
    let out = repo().join("docs/bench");
    std::fs::create_dir_all(&out).expect("docs/bench");
    type Draw = fn(&Value) -> String;
    let charts: [(&str, &str, Draw); 4] = [
        ("brokers.json", "brokers.svg", brokers),
        ("handler.json", "handler.svg", handler),
        ("peers.json", "peers.svg", peers),
        ("soak.json", "soak.svg", soak),
    ];
    for (input, output, draw) in charts {
        match read(input) {
            Some(v) => {
                std::fs::write(out.join(output), draw(&v)).expect("write svg");
                println!("docs/bench/{output} from {input}");
            }
            None => println!("skipped docs/bench/{output}: no target/bench/{input}"),
        }
    }
    let rows = targets::judge(read);
    println!(
        "\nPerformance targets, from these files:\n\n{}",
        targets::markdown(&rows)
    );
    let file = bench_dir().join("targets.json");
    let written = std::fs::create_dir_all(bench_dir())
        .and_then(|()| std::fs::write(&file, targets::to_json(&rows).to_string()));
    match written {
        Ok(()) => println!("{}", file.display()),
        Err(e) => eprintln!("could not write {}: {e}", file.display()),
    }
}
