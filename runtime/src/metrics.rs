//! Prometheus text exposition (format 0.0.4) of every pipeline's counters.
//! Written by hand: pipelines come and go at run time, and the families are
//! few and fixed.

use std::fmt::Write as _;

use crate::failure::FailureClass;
use crate::policy::breaker::BreakerState;
use crate::stats::LATENCY_BUCKETS;
use crate::supervisor::{Registry, State};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    lines: Vec<String>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            kind,
            help,
            lines: Vec::new(),
        }
    }

    fn add(&mut self, suffix: &str, labels: &str, value: impl std::fmt::Display) {
        self.lines
            .push(format!("{}{suffix}{{{labels}}} {value}", self.name));
    }

    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
    }
}

/// Every `sluice_*` metric of every pipeline in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut received = Family::new(
        "sluice_messages_received_total",
        "counter",
        "Messages taken from the source.",
    );
    let mut messages = Family::new(
        "sluice_messages_total",
        "counter",
        "Messages by how they ended (succeeded, dead_lettered, dropped, deduplicated, shed: let go unhandled) or were handed back (redelivered).",
    );
    let mut slow_consumer = Family::new(
        "sluice_slow_consumer_total",
        "counter",
        "NATS core messages dropped as a slow consumer: at the pending limits (requests answered unavailable) or by the client itself.",
    );
    let mut failures = Family::new(
        "sluice_failures_total",
        "counter",
        "Failures by class (every attempt counts).",
    );
    let mut broker_full = Family::new(
        "sluice_broker_full_total",
        "counter",
        "Publishes (outputs and dead letters) refused because the broker was full: a stream or account at its limits, or its store out of space.",
    );
    let mut retries = Family::new("sluice_retries_total", "counter", "Retries scheduled.");
    let mut dead = Family::new(
        "sluice_dead_letters_total",
        "counter",
        "Dead-letter records written.",
    );
    let mut outputs = Family::new(
        "sluice_outputs_total",
        "counter",
        "Handler outputs published.",
    );
    let mut latency = Family::new(
        "sluice_handler_duration_seconds",
        "histogram",
        "Wall-clock time of each handler call.",
    );
    let mut fuel = Family::new(
        "sluice_fuel_used_total",
        "counter",
        "Fuel (wasm instructions) used by handler calls.",
    );
    let mut batched = Family::new(
        "sluice_batched_messages_total",
        "counter",
        "Messages answered by a handler call that took several (handle-batch).",
    );
    let mut guest_log_dropped = Family::new(
        "sluice_guest_log_dropped_total",
        "counter",
        "Handler log lines dropped because the message had used its log budget (16 KiB).",
    );
    let mut in_flight = Family::new(
        "sluice_in_flight",
        "gauge",
        "Messages being handled right now.",
    );
    let mut breaker = Family::new(
        "sluice_breaker_state",
        "gauge",
        "Circuit breaker: 0 closed, 1 half-open, 2 open.",
    );
    let mut reloads = Family::new(
        "sluice_plugin_reloads_total",
        "counter",
        "Plugin reloads by result (ok, failed).",
    );
    let mut lag = Family::new(
        "sluice_source_lag",
        "gauge",
        "Messages waiting in the broker for this pipeline, as the broker reports it (Kafka consumer lag over the assigned partitions, JetStream pending); absent where the broker does not tell.",
    );
    let mut up = Family::new(
        "sluice_pipeline_up",
        "gauge",
        "1 while the pipeline runs with its source consuming.",
    );
    for h in registry.pipelines() {
        let p = format!("pipeline=\"{}\"", esc(&h.name));
        up.add("", &p, u8::from(h.is_ready()));
        let (ok, failed) = h.reloads();
        reloads.add("", &format!("{p},result=\"ok\""), ok);
        reloads.add("", &format!("{p},result=\"failed\""), failed);
        let Some(stats) = h.stats() else {
            continue;
        };
        let s = stats.snapshot();
        received.add("", &p, s.received);
        for (outcome, n) in [
            ("succeeded", s.succeeded),
            ("dead_lettered", s.dead_lettered),
            ("dropped", s.dropped),
            ("deduplicated", s.deduplicated),
            ("redelivered", s.redelivered),
            ("shed", s.shed),
        ] {
            messages.add("", &format!("{p},outcome=\"{outcome}\""), n);
        }
        for class in FailureClass::ALL {
            let n = s
                .failures
                .iter()
                .find(|(c, _)| *c == class.as_str())
                .map_or(0, |(_, n)| *n);
            failures.add("", &format!("{p},class=\"{class}\""), n);
        }
        broker_full.add("", &p, s.broker_full);
        retries.add("", &p, s.retries);
        dead.add("", &p, s.dead_lettered);
        outputs.add("", &p, s.outputs);
        fuel.add("", &p, s.fuel_used);
        batched.add("", &p, s.batched);
        guest_log_dropped.add("", &p, s.guest_log_dropped);
        slow_consumer.add("", &p, s.slow_consumer);
        in_flight.add("", &p, s.in_flight);
        if let Some(n) = s.source_lag {
            lag.add("", &p, n);
        }
        let (counts, sum) = stats.handler_latency.cumulative();
        for (i, c) in counts.iter().enumerate() {
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            latency.add("_bucket", &format!("{p},le=\"{le}\""), c);
        }
        latency.add("_sum", &p, sum);
        latency.add("_count", &p, counts.last().copied().unwrap_or(0));
        if let Some(b) = h.breaker_state() {
            let v = match b {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            breaker.add("", &p, v);
        }
    }
    let canaries = canary_families(registry);
    let mut out = String::new();
    for f in [
        &received,
        &messages,
        &failures,
        &broker_full,
        &retries,
        &dead,
        &outputs,
        &latency,
        &fuel,
        &batched,
        &guest_log_dropped,
        &slow_consumer,
        &in_flight,
        &breaker,
        &lag,
        &reloads,
        &up,
    ]
    .into_iter()
    .chain(&canaries)
    {
        f.write(&mut out);
    }
    let _ = writeln!(
        out,
        "# HELP sluice_log_lines_dropped_total Log lines dropped because stderr did not keep up.\n# TYPE sluice_log_lines_dropped_total counter\nsluice_log_lines_dropped_total {}",
        crate::logging::dropped_lines()
    );
    let invalid = registry.invalid_files().len();
    let _ = writeln!(
        out,
        "# HELP sluice_invalid_pipeline_files Pipeline files refused at their last change.\n# TYPE sluice_invalid_pipeline_files gauge\nsluice_invalid_pipeline_files {invalid}"
    );
    let running = registry
        .pipelines()
        .iter()
        .filter(|h| h.state() == State::Running)
        .count();
    let _ = writeln!(
        out,
        "# HELP sluice_pipelines_running Pipelines running.\n# TYPE sluice_pipelines_running gauge\nsluice_pipelines_running {running}"
    );
    out
}

/// The canary families: how canaries ended, whether one runs, and while one
/// runs each version's handler calls, failures by class and latency
/// (labelled with the version's digest, so a new canary is a new series).
fn canary_families(registry: &Registry) -> Vec<Family> {
    let mut ends = Family::new(
        "sluice_canaries_total",
        "counter",
        "Canaries by outcome: started, rolled_back, promoted, load_failed.",
    );
    let mut active = Family::new(
        "sluice_canary_active",
        "gauge",
        "1 while a canary runs beside the stable version.",
    );
    let mut calls = Family::new(
        "sluice_version_calls_total",
        "counter",
        "Handler calls of each version (stable, canary) since the running canary started.",
    );
    let mut failed = Family::new(
        "sluice_version_failures_total",
        "counter",
        "Failed handler calls of each version by class since the running canary started.",
    );
    let mut latency = Family::new(
        "sluice_version_handler_duration_seconds",
        "histogram",
        "Wall-clock time of each handler call of each version since the running canary started.",
    );
    for h in registry.pipelines() {
        if !h.has_canary_config() {
            continue;
        }
        let p = format!("pipeline=\"{}\"", esc(&h.name));
        let hist = h.canary_history();
        for (outcome, n) in [
            ("started", hist.started),
            ("rolled_back", hist.rolled_back),
            ("promoted", hist.promoted),
            ("load_failed", h.canary_loads_failed()),
        ] {
            ends.add("", &format!("{p},outcome=\"{outcome}\""), n);
        }
        let running = h.running_canary();
        active.add("", &p, u8::from(running.is_some()));
        let (Some(c), Some(stable)) = (running, h.plugin()) else {
            continue;
        };
        for (version, digest, tally) in [
            ("stable", stable.digest(), &c.stable),
            ("canary", c.plugin.digest(), &c.canary),
        ] {
            let v = format!("{p},version=\"{version}\",digest=\"{}\"", esc(digest));
            calls.add("", &v, tally.counts().0);
            for (class, n) in tally.failures() {
                failed.add("", &format!("{v},class=\"{class}\""), n);
            }
            let (counts, sum) = tally.latency().cumulative();
            for (i, n) in counts.iter().enumerate() {
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                latency.add("_bucket", &format!("{v},le=\"{le}\""), n);
            }
            latency.add("_sum", &v, sum);
            latency.add("_count", &v, counts.last().copied().unwrap_or(0));
        }
    }
    vec![ends, active, calls, failed, latency]
}
