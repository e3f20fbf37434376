//! Rules the types alone do not enforce: ranges, names, and how sections fit
//! together. Every broken rule is recorded with its key and line.

use std::time::Duration;

use toml::Spanned;
use toml::de::DeTable;

use super::diagnostics::{Diag, KeyPath, span_at};
use super::model::{
    Action, BreakerConfig, DedupConfig, ErrorsConfig, HandlerConfig, RetryConfig, SinkConfig,
    SourceConfig,
};
use super::paths::sink_file;
use super::sections::Sections;
use super::table::Problem;

/// The smallest `handler.memory`: one WebAssembly page.
pub const MIN_MEMORY: u64 = 64 * 1024;
/// The largest `handler.memory`: all a 32-bit WebAssembly memory can address.
pub const MAX_MEMORY: u64 = 4 * 1024 * 1024 * 1024;

/// The smallest `handler.compile_memory`: the compiler process needs about
/// 40MiB of it to start, and a small Rust plugin compiles under 128MiB.
pub const MIN_COMPILE_MEMORY: u64 = 128 * 1024 * 1024;
/// The longest `handler.compile_timeout`.
const MAX_COMPILE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Records broken rules, locating each key in the file.
struct Check<'a, 't, 'i> {
    d: &'a mut Diag<'t>,
    root: &'a Spanned<DeTable<'i>>,
}

impl Check<'_, '_, '_> {
    /// A broken rule at `keys`, unless a problem there was already recorded.
    fn fail(&mut self, keys: &[&str], message: impl Into<String>) {
        let path = KeyPath::of(keys);
        if self.d.has_error_at(&path) {
            return;
        }
        let span = span_at(self.root, &path);
        self.d.error(Some(&path), span, message);
    }

    /// Whether every key in `keys` was read without a problem.
    fn clean(&self, keys: &[&[&str]]) -> bool {
        keys.iter().all(|k| !self.d.has_error_at(&KeyPath::of(k)))
    }

    /// `key` must be at least 1.
    fn at_least_one(&mut self, keys: &[&str], value: u64) {
        if value < 1 {
            self.fail(keys, format!("must be at least 1, found {value}"));
        }
    }

    /// `key` must be a duration longer than zero.
    fn positive(&mut self, keys: &[&str], value: Duration) {
        if value.is_zero() {
            self.fail(keys, "must be longer than 0, e.g. \"1s\"");
        }
    }
}

/// Checks the sections read, recording every broken rule.
pub(crate) fn validate(d: &mut Diag<'_>, root: &Spanned<DeTable<'_>>, s: &Sections) {
    let mut c = Check { d, root };
    if let Some(name) = &s.name {
        check_name(&mut c, name);
    }
    if let Some(src) = &s.source {
        check_source(&mut c, src);
    }
    if let Some(h) = &s.handler {
        check_handler(&mut c, h);
    }
    let sinks = sink_tables(s);
    let mut files: Vec<(Vec<&str>, std::path::PathBuf)> = Vec::new();
    if let Some(SourceConfig::File(f)) = &s.source
        && f.path.as_os_str() != "-"
    {
        files.push((vec!["source", "path"], f.path.clone()));
        files.push((vec!["source", "checkpoint"], f.checkpoint_path()));
    }
    for (keys, sink) in sinks {
        check_sink(&mut c, &keys, sink);
        if let Some(out) = sink_file(sink) {
            let mut k = keys.clone();
            k.push("path");
            files.push((k, out.to_path_buf()));
        }
    }
    check_overlaps(&mut c, &files);
    if let Some(r) = &s.retry {
        check_retry(&mut c, r);
    }
    if let Some(e) = &s.errors {
        check_errors(&mut c, e, s.has_dead_letter);
    }
    if let Some(b) = &s.circuit_breaker {
        check_breaker(&mut c, b);
    }
    if let Some(dd) = &s.dedup {
        check_dedup(&mut c, dd);
    }
    if let Some(SourceConfig::Kafka(src)) = &s.source
        && src.exactly_once()
    {
        check_exactly_once(&mut c, src, s);
    }
}

/// Every sink table of the file with its key path: `[sink]`, each
/// `[sinks.NAME]`, `[dead_letter]`.
fn sink_tables(s: &Sections) -> impl Iterator<Item = (Vec<&str>, &SinkConfig)> {
    s.sink
        .iter()
        .map(|k| (vec!["sink"], k))
        .chain(s.sinks.iter().map(|(n, k)| (vec!["sinks", n.as_str()], k)))
        .chain(s.dead_letter.iter().map(|k| (vec!["dead_letter"], k)))
}

/// `delivery = "exactly-once"` holds only when everything the pipeline writes
/// goes into the source's cluster, through one transactional producer.
fn check_exactly_once(c: &mut Check, src: &super::kafka::KafkaSourceConfig, s: &Sections) {
    let why = "`delivery = \"exactly-once\"` in [source]";
    let sinks = sink_tables(s);
    let mut first: Option<&super::kafka::KafkaSinkConfig> = None;
    let same_brokers = |a: &[String], b: &[String]| {
        let mut a = a.to_vec();
        let mut b = b.to_vec();
        a.sort();
        b.sort();
        a == b
    };
    for (keys, sink) in sinks {
        let at = |k: &'static str| {
            let mut p = keys.clone();
            p.push(k);
            p
        };
        let SinkConfig::Kafka(k) = sink else {
            c.fail(
                &at("type"),
                format!(
                    "{why} needs every sink, the dead letter too, to be `kafka` on the source's cluster: a write elsewhere cannot join the transaction"
                ),
            );
            continue;
        };
        if !same_brokers(&k.brokers, &src.brokers) {
            c.fail(
                &at("brokers"),
                format!(
                    "{why} needs the source's brokers ({}): a transaction spans one cluster",
                    src.brokers.join(",")
                ),
            );
        }
        if k.security != src.security {
            c.fail(
                &at("security"),
                format!("{why} needs the source's `security`: one producer writes for every sink"),
            );
        }
        match first {
            None => first = Some(k),
            Some(f) if f.options != k.options || f.timeout != k.timeout => c.fail(
                &at("options"),
                format!(
                    "{why} needs the same `options` and `timeout` in every sink: one producer writes for all of them"
                ),
            ),
            Some(_) => {}
        }
    }
    if s.dedup.is_some() {
        c.fail(
            &["dedup"],
            format!(
                "{why} re-reads the messages of an aborted transaction; [dedup] would acknowledge them as copies and lose their outputs"
            ),
        );
    }
}

fn check_name(c: &mut Check, name: &str) {
    let allowed = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-');
    if name.is_empty() {
        c.fail(
            &["name"],
            "must not be empty; expected letters, digits, `_`, `.` and `-`",
        );
    } else if let Some(bad) = name.chars().find(|ch| !allowed(*ch)) {
        c.fail(
            &["name"],
            format!(
                "invalid character {bad:?} in {name:?}; expected only letters, digits, `_`, `.` and `-`"
            ),
        );
    }
}

fn check_source(c: &mut Check, s: &SourceConfig) {
    report(c, &["source"], s.table().validate());
}

/// Reports a table's own findings (`key` relative to the table).
fn report(c: &mut Check, table: &[&str], problems: Vec<Problem>) {
    for p in problems {
        let mut path = table.to_vec();
        path.extend(p.key.split('.').filter(|k| !k.is_empty()));
        c.fail(&path, p.message);
    }
}

fn check_sink(c: &mut Check, keys: &[&str], s: &SinkConfig) {
    report(c, keys, s.table().validate());
}

/// What a path names on disk as far as it exists: the file itself resolved
/// (links, `..`) when it exists, else its folder resolved and its name.
fn on_disk(p: &std::path::Path) -> std::path::PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    match (std::fs::canonicalize(dir), p.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => p.to_path_buf(),
    }
}

/// The files a pipeline reads and writes (its input, its checkpoint, every
/// file sink and dead letter) must all be different files, however they are
/// spelled (`..`, links): a sink or checkpoint on the input would truncate it.
fn check_overlaps(c: &mut Check, files: &[(Vec<&str>, std::path::PathBuf)]) {
    let resolved: Vec<std::path::PathBuf> = files.iter().map(|(_, p)| on_disk(p)).collect();
    for (i, (keys, _)) in files.iter().enumerate() {
        if let Some(j) = (0..i).find(|&j| resolved[j] == resolved[i]) {
            c.fail(
                keys,
                format!(
                    "is the same file as `{}`; a pipeline's input, checkpoint, sinks and \
                     dead letter must be different files",
                    files[j].0.join(".")
                ),
            );
        }
    }
}

/// Most messages one handler call may take (`handler.batch`).
const MAX_BATCH: usize = 1024;

/// Most workers of one pipeline (`handler.concurrency`): each holds a
/// handler instance from a pool the whole process shares.
const MAX_CONCURRENCY: usize = 64;

/// Most messages one worker may have published and not yet acknowledged.
const MAX_PUBLISH_WINDOW: usize = 65_536;

/// Most outputs one message may have (`handler.max_outputs`).
const MAX_OUTPUTS: u32 = 100_000;

fn check_handler(c: &mut Check, h: &HandlerConfig) {
    if let Some(canary) = &h.canary {
        for (key, message) in super::canary::problems(canary, &h.plugin) {
            c.fail(&["handler", "canary", key], message);
        }
    }
    c.at_least_one(&["handler", "concurrency"], h.concurrency as u64);
    if h.concurrency > MAX_CONCURRENCY {
        c.fail(
            &["handler", "concurrency"],
            format!("must be at most {MAX_CONCURRENCY}, found {}", h.concurrency),
        );
    }
    c.at_least_one(&["handler", "publish_window"], h.publish_window as u64);
    if h.publish_window > MAX_PUBLISH_WINDOW {
        c.fail(
            &["handler", "publish_window"],
            format!(
                "must be at most {MAX_PUBLISH_WINDOW}, found {}",
                h.publish_window
            ),
        );
    }
    c.at_least_one(&["handler", "batch"], h.batch as u64);
    if h.batch > MAX_BATCH {
        c.fail(
            &["handler", "batch"],
            format!("must be at most {MAX_BATCH}, found {}", h.batch),
        );
    }
    if h.fuel == 0 {
        c.fail(
            &["handler", "fuel"],
            "must be greater than 0, e.g. 10_000_000",
        );
    }
    c.positive(&["handler", "timeout"], h.timeout.0);
    c.at_least_one(&["handler", "max_outputs"], u64::from(h.max_outputs));
    if h.max_outputs > MAX_OUTPUTS {
        c.fail(
            &["handler", "max_outputs"],
            format!("must be at most {MAX_OUTPUTS}, found {}", h.max_outputs),
        );
    }
    let memory = h.memory.0;
    if memory < MIN_MEMORY {
        c.fail(
            &["handler", "memory"],
            format!("must be at least 64KiB (one WebAssembly page), found {memory} bytes"),
        );
    } else if memory > MAX_MEMORY {
        c.fail(
            &["handler", "memory"],
            format!("must be at most 4GiB (the 32-bit WebAssembly limit), found {memory} bytes"),
        );
    }
    c.positive(&["handler", "compile_timeout"], h.compile_timeout.0);
    if h.compile_timeout.0 > MAX_COMPILE_TIMEOUT {
        c.fail(
            &["handler", "compile_timeout"],
            format!(
                "must be at most 1h, found {}",
                humantime::format_duration(h.compile_timeout.0)
            ),
        );
    }
    if h.compile_memory.0 < MIN_COMPILE_MEMORY {
        c.fail(
            &["handler", "compile_memory"],
            format!(
                "must be at least {} (the compiler itself needs about 40MiB), found {}",
                super::units::Size(MIN_COMPILE_MEMORY),
                h.compile_memory
            ),
        );
    }
}

fn check_retry(c: &mut Check, r: &RetryConfig) {
    c.at_least_one(&["retry", "max_attempts"], u64::from(r.max_attempts));
    if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
        c.fail(
            &["retry", "multiplier"],
            format!(
                "must be at least 1.0 (delays must not shrink), found {}",
                r.multiplier
            ),
        );
    }
    if r.initial > r.max && c.clean(&[&["retry", "initial"], &["retry", "max"]]) {
        c.fail(
            &["retry", "initial"],
            format!(
                "is longer than `retry.max` ({} > {}); expected initial <= max",
                humantime::format_duration(r.initial.0),
                humantime::format_duration(r.max.0)
            ),
        );
    }
}

/// The `[errors]` keys, in documentation order, with their actions.
fn error_actions(e: &ErrorsConfig) -> [(&'static str, Action); 10] {
    [
        ("retriable", e.retriable),
        ("fatal", e.fatal),
        ("trap", e.trap),
        ("timeout", e.timeout),
        ("fuel", e.fuel),
        ("memory", e.memory),
        ("sink", e.sink),
        ("rejected", e.rejected),
        ("decode", e.decode),
        ("exhausted", e.exhausted),
    ]
}

fn check_errors(c: &mut Check, e: &ErrorsConfig, has_dead_letter: bool) {
    if e.exhausted == Action::Retry {
        c.fail(
            &["errors", "exhausted"],
            "`retry` is not allowed here (the attempts are used up); \
             expected `dead-letter`, `drop` or `stop`",
        );
    }
    if has_dead_letter {
        return;
    }
    let written = |key: &str| {
        c.root
            .get_ref()
            .get("errors")
            .and_then(|t| t.get_ref().as_table())
            .is_some_and(|t| t.contains_key(key))
    };
    let needing: Vec<(&str, bool)> = error_actions(e)
        .into_iter()
        .filter(|(k, a)| {
            *a == Action::DeadLetter && !c.d.has_error_at(&KeyPath::of(&["errors", k]))
        })
        .map(|(k, _)| (k, written(k)))
        .collect();
    if needing.is_empty() {
        return;
    }
    let list = needing
        .iter()
        .map(|(k, w)| {
            if *w {
                format!("`{k}`")
            } else {
                format!("`{k}` (by default)")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let at: Vec<&str> = match needing.iter().find(|(_, w)| *w) {
        Some((k, _)) => vec!["errors", k],
        None => vec!["errors"],
    };
    let verb = if needing.len() == 1 { "maps" } else { "map" };
    let message = format!(
        "{list} {verb} to `dead-letter`, but there is no `[dead_letter]` table; \
         add one (e.g. `[dead_letter]` with `type = \"file\"` and \
         `path = \"dead-letters.jsonl\"`) or map them to `drop` (or `stop`) in `[errors]`"
    );
    let path = KeyPath::of(&["errors"]);
    // Where the problem is written: the first key that maps to
    // `dead-letter`, else the `[errors]` table; when only the defaults ask
    // for it, the `[handler]` whose failures they route, else the top.
    let span = span_at(c.root, &KeyPath::of(&at))
        .or_else(|| span_at(c.root, &KeyPath::of(&["handler"])))
        .or(Some(0..0));
    c.d.error(Some(&path), span, message);
}

fn check_breaker(c: &mut Check, b: &BreakerConfig) {
    c.at_least_one(
        &["circuit_breaker", "failure_threshold"],
        u64::from(b.failure_threshold),
    );
    c.at_least_one(
        &["circuit_breaker", "success_threshold"],
        u64::from(b.success_threshold),
    );
    c.positive(&["circuit_breaker", "open_for"], b.open_for.0);
}

/// Whether `by` is a valid `dedup.by`.
pub(crate) fn valid_dedup_by(by: &str) -> bool {
    match by.strip_prefix("header:") {
        Some(name) => !name.trim().is_empty(),
        None => by == "key" || by == "payload",
    }
}

fn check_dedup(c: &mut Check, dd: &DedupConfig) {
    if !valid_dedup_by(&dd.by) {
        c.fail(
            &["dedup", "by"],
            format!(
                "invalid value {:?}, expected `key`, `payload` or `header:NAME` \
                 (e.g. `header:Nats-Msg-Id`)",
                dd.by
            ),
        );
    }
    c.positive(&["dedup", "window"], dd.window.0);
    c.at_least_one(&["dedup", "max_entries"], dd.max_entries as u64);
}
