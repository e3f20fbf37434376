//! The monitoring files in `deploy/` against what `/metrics` serves: every
//! metric an alert rule or a dashboard query names, with every label value
//! it matches, is served by a running `sluice`, and the dashboard shows every
//! family served. A renamed metric, label or label value fails here.
//! (`.ci/check-monitoring.sh` checks the files' syntax and the rules'
//! behaviour with `promtool`.)

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use common::admin::{http, pipeline, spawn, wait_until};

/// Families served without samples by the pipeline started here, and why.
/// Their label matchers are checked against `pipeline` only, the label every
/// per-pipeline family carries.
const UNSAMPLED: &[(&str, &str)] = &[(
    "sluice_source_lag",
    "only Kafka and JetStream sources report lag; the pipeline here reads a file",
)];

/// What `/metrics` serves: every series name (a histogram's `_bucket`,
/// `_sum` and `_count` too) and the label pairs seen on each.
#[derive(Debug, Default)]
struct Served {
    names: BTreeSet<String>,
    /// Series name → (label, value) pairs of its samples.
    labels: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl Served {
    fn parse(text: &str) -> Served {
        let mut s = Served::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                s.names.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        s.names.insert(format!("{name}{suffix}"));
                    }
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..end];
                let pairs = s.labels.entry(name.to_string()).or_default();
                if line[end..].starts_with('{') {
                    let (matchers, _) = label_pairs(&line[end + 1..]);
                    pairs.extend(matchers.into_iter().map(|(l, _, v)| (l, v)));
                }
            }
        }
        s
    }

    fn has_samples(&self, name: &str) -> bool {
        self.labels.contains_key(name)
    }
}

/// One metric selector in a query: `name{label op "value", …}`.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// `label op "value", …}` up to the closing brace: the matchers and the
/// number of bytes read.
fn label_pairs(text: &str) -> (Vec<(String, String, String)>, usize) {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() || b[i] == b'}' {
            return (out, i + 1);
        }
        let start = i;
        while i < b.len() && is_ident(b[i] as char) {
            i += 1;
        }
        let label = text[start..i].to_string();
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let op_start = i;
        while i < b.len() && matches!(b[i], b'=' | b'!' | b'~') {
            i += 1;
        }
        let op = text[op_start..i].to_string();
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'"' || label.is_empty() || op.is_empty() {
            // Not a matcher this reader knows: report it as one that no
            // series has, so that it is seen rather than skipped.
            out.push((format!("unreadable `{text}`"), "=".into(), String::new()));
            return (out, b.len());
        }
        i += 1;
        let mut value = String::new();
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
                value.push(match b[i] {
                    b'n' => '\n',
                    c => c as char,
                });
            } else {
                let c = text[i..].chars().next().unwrap_or('\u{fffd}');
                value.push(c);
                i += c.len_utf8() - 1;
            }
            i += 1;
        }
        i += 1;
        out.push((label, op, value));
    }
}

/// Every `sluice_*` selector in a PromQL query.
fn selectors(query: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("sluice_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if before.is_some_and(is_ident) {
            rest = &tail[len..];
            continue;
        }
        let name = tail[..len].to_string();
        let after = tail[len..].trim_start();
        let (matchers, used) = match after.strip_prefix('{') {
            Some(inner) => {
                let (m, n) = label_pairs(inner);
                (m, tail.len() - after.len() + 1 + n)
            }
            None => (Vec::new(), len),
        };
        out.push(Selector { name, matchers });
        rest = &tail[used.min(tail.len())..];
    }
    out
}

/// What in `queries` names a metric or a label value `served` lacks, every
/// problem at once.
fn problems(queries: &[String], served: &Served) -> Vec<String> {
    let mut out = Vec::new();
    for q in queries {
        for s in selectors(q) {
            if !served.names.contains(&s.name) {
                out.push(format!("`{}` is not served (in `{q}`)", s.name));
                continue;
            }
            for (label, op, value) in &s.matchers {
                let seen = served.labels.get(&s.name);
                let ok = match seen {
                    None => label == "pipeline",
                    Some(pairs) if op == "=" => pairs.contains(&(label.clone(), value.clone())),
                    Some(pairs) => pairs.iter().any(|(l, _)| l == label),
                };
                if !ok {
                    out.push(format!(
                        "`{}` has no series with `{label}{op}\"{value}\"` (in `{q}`)",
                        s.name
                    ));
                }
            }
        }
    }
    out
}

/// The `expr` of every rule in a Prometheus rule file, single-line or a
/// block (`|`, `>`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            }
            out.push(block.trim().to_string());
        } else {
            out.push(value.trim_matches(['"', '\'']).to_string());
        }
    }
    out
}

/// Every query of a Grafana dashboard: panel targets' `expr`, template
/// variables' `query` and `definition`.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

fn read(rel: &str) -> String {
    let path = common::repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `/metrics` of a `sluice run --admin` whose file pipeline runs a canary
/// beside its stable version and handled lines, some of them dead-lettered;
/// fetched once for every test here.
fn served_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("m.in"), "").expect("input");
        // The canary (a handler that never fails) is never judged
        // (min_messages) nor promoted (promote_after = 0).
        let file = d.join("m.toml");
        std::fs::write(
            &file,
            format!(
                r#"name = "m"
[source]
type = "file"
path = "{d}/m.in"
follow = true
[handler]
plugin = "{plugin}"
[handler.canary]
plugin = "{canary}"
share = 0.5
min_messages = 1000000
failure_margin = 0.5
promote_after = 0
[sink]
type = "file"
path = "{d}/m.out"
[dead_letter]
type = "file"
path = "{d}/m.dlq"
"#,
                d = d.display(),
                plugin = common::plugin("fatal-on").display(),
                canary = common::plugin("echo").display(),
            ),
        )
        .expect("pipeline file");
        let port = common::free_port();
        let _proc = spawn(
            &[file.to_str().expect("utf-8 path")],
            port,
            &d.join("sluice.log"),
        );
        wait_until("the canary to run", Duration::from_secs(60), || {
            pipeline(port, "m").is_some_and(|p| !p["canary"]["running"].is_null())
        });
        let input: String = (0..100)
            .map(|i| {
                if i % 5 == 0 {
                    format!("bad-{i}\n")
                } else {
                    format!("ok-{i}\n")
                }
            })
            .collect();
        std::fs::write(d.join("m.in"), input).expect("input");
        wait_until("every line handled", Duration::from_secs(60), || {
            pipeline(port, "m").is_some_and(|p| {
                let n = |k: &str| p["counts"][k].as_u64().unwrap_or(0);
                n("succeeded") + n("dead_lettered") == 100 && n("dead_lettered") > 0
            })
        });
        let (status, text) = http(port, "GET", "/metrics", None);
        assert_eq!(status, 200, "{text}");
        text
    })
}

/// The families here without samples are exactly [`UNSAMPLED`]: none loses
/// its label check unnoticed.
fn assert_unsampled(served: &Served) {
    let unsampled: BTreeSet<&str> = served
        .names
        .iter()
        .filter(|n| !served.has_samples(n))
        .filter(|n| {
            // A histogram's own name has no samples; its parts do.
            !["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| served.has_samples(&format!("{n}{s}")))
        })
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = UNSAMPLED.iter().map(|(n, _)| *n).collect();
    assert_eq!(unsampled, expected, "families served without samples");
}

#[test]
fn alert_rules_name_only_served_metrics_and_label_values() {
    let served = Served::parse(served_text());
    assert_unsampled(&served);
    let rules = read("deploy/prometheus/sluice-alerts.yml");
    let exprs = rule_exprs(&rules);
    assert_eq!(
        exprs.len(),
        rules.matches("- alert:").count(),
        "one expr per alert: {exprs:#?}"
    );
    let found = problems(&exprs, &served);
    assert!(found.is_empty(), "the alert rules:\n{}", found.join("\n"));
    let named: BTreeSet<String> = exprs
        .iter()
        .flat_map(|q| selectors(q))
        .map(|s| s.name)
        .collect();
    assert!(named.len() >= 10, "{named:?}");
    eprintln!(
        "[monitoring] {} alert rules name {} metrics, all served",
        exprs.len(),
        named.len()
    );
}

#[test]
fn dashboard_queries_name_only_served_metrics_and_label_values() {
    let served = Served::parse(served_text());
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/sluice.json")).expect("dashboard JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "{queries:#?}");
    let found = problems(&queries, &served);
    assert!(found.is_empty(), "the dashboard:\n{}", found.join("\n"));
}

#[test]
fn dashboard_shows_every_served_family() {
    let text = served_text();
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/sluice.json")).expect("dashboard JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let shown: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| selectors(q))
        .map(|s| s.name)
        .collect();
    let missing: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((p.next()?, p.next()?))
        })
        .filter(|(name, kind)| {
            let parts = if *kind == "histogram" {
                vec![
                    format!("{name}_bucket"),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ]
            } else {
                vec![name.to_string()]
            };
            !parts.iter().any(|p| shown.contains(p))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        missing.is_empty(),
        "families no dashboard panel shows: {missing:?}"
    );
}

/// The checks above fail on what they are for: a metric renamed in `/metrics`,
/// a label value that is not served, a label no series has.
#[test]
fn a_renamed_metric_or_label_value_is_reported() {
    let text = "# HELP sluice_messages_total m\n# TYPE sluice_messages_total counter\n\
        sluice_messages_total{pipeline=\"a\\\"b\",outcome=\"shed\"} 1\n\
        # TYPE sluice_handler_duration_seconds histogram\n\
        sluice_handler_duration_seconds_bucket{pipeline=\"a\",le=\"+Inf\"} 1\n\
        # TYPE sluice_source_lag gauge\n";
    let served = Served::parse(text);
    let q = |s: &str| vec![s.to_string()];
    let ok = [
        r#"increase(sluice_messages_total{outcome="shed"}[5m]) > 0"#,
        r#"sum by (pipeline) (rate(sluice_messages_total { pipeline =~ "$pipeline", outcome = "shed" }[1m]))"#,
        r#"sluice_messages_total{pipeline="a\"b"}"#,
        "histogram_quantile(0.99, sum by (le) (rate(sluice_handler_duration_seconds_bucket[5m])))",
        r#"deriv(sluice_source_lag{pipeline=~".*"}[15m]) > 0"#,
    ];
    for e in ok {
        assert_eq!(problems(&q(e), &served), Vec::<String>::new(), "{e}");
    }
    let bad = [
        "rate(sluice_message_total[5m])",
        r#"increase(sluice_messages_total{outcome="shedded"}[5m])"#,
        r#"sluice_messages_total{result="failed"}"#,
        r#"sluice_messages_total{result=~"f.*"}"#,
        "rate(sluice_handler_duration_seconds_total[5m])",
        r#"sluice_source_lag{topic="t"}"#,
    ];
    for e in bad {
        assert_eq!(problems(&q(e), &served).len(), 1, "{e}");
    }
    // Both lines of a block `expr`, and quoted ones.
    let yaml = "  - alert: A\n    expr: |\n      sluice_a\n        / sluice_b\n    for: 1m\n  - alert: B\n    expr: 'sluice_c > 0'\n";
    assert_eq!(rule_exprs(yaml), ["sluice_a / sluice_b", "sluice_c > 0"]);
}
