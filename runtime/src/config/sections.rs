//! The spanned TOML document → typed sections, one section (and within it one
//! key) at a time, so that a problem in one place does not hide the others.
//!
//! A broker type is one entry in [`SOURCE_TYPES`] or [`SINK_TYPES`]: its name
//! (the `type` value) and the function that reads the rest of its table.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diagnostics::{Diag, KeyPath, Seg, find_path, missing_field, one_of, polish};
use super::model::{
    BreakerConfig, DedupConfig, ErrorsConfig, HandlerConfig, PipelineConfig, RetryConfig,
    SinkConfig, SourceConfig,
};

/// Reads one broker type's table (without its `type` key).
pub(crate) type Variant<T> = fn(&mut Diag<'_>, &KeyPath, &Spanned<DeValue<'_>>) -> Option<T>;

/// The source types, by their `type` value.
pub(crate) const SOURCE_TYPES: &[(&str, Variant<SourceConfig>)] = &[
    ("file", file_source),
    ("kafka", |d, p, v| {
        de_value(d, p, v).map(SourceConfig::Kafka)
    }),
    ("mqtt", |d, p, v| de_value(d, p, v).map(SourceConfig::Mqtt)),
    ("nats", |d, p, v| de_value(d, p, v).map(SourceConfig::Nats)),
    ("jetstream", |d, p, v| {
        de_value(d, p, v).map(SourceConfig::Jetstream)
    }),
];

/// The sink types (also for `[dead_letter]`), by their `type` value.
pub(crate) const SINK_TYPES: &[(&str, Variant<SinkConfig>)] = &[
    ("file", file_sink),
    ("kafka", |d, p, v| de_value(d, p, v).map(SinkConfig::Kafka)),
    ("mqtt", |d, p, v| de_value(d, p, v).map(SinkConfig::Mqtt)),
    ("nats", |d, p, v| de_value(d, p, v).map(SinkConfig::Nats)),
    ("jetstream", |d, p, v| {
        de_value(d, p, v).map(SinkConfig::Jetstream)
    }),
];

fn file_source(d: &mut Diag<'_>, path: &KeyPath, v: &Spanned<DeValue<'_>>) -> Option<SourceConfig> {
    de_value(d, path, v).map(SourceConfig::File)
}

fn file_sink(d: &mut Diag<'_>, path: &KeyPath, v: &Spanned<DeValue<'_>>) -> Option<SinkConfig> {
    de_value(d, path, v).map(SinkConfig::File)
}

/// The keys a pipeline file may have at its top level.
pub(crate) const TOP_LEVEL_KEYS: [&str; 10] = [
    "name",
    "source",
    "handler",
    "sink",
    "sinks",
    "retry",
    "dead_letter",
    "errors",
    "circuit_breaker",
    "dedup",
];

/// The sections read so far. `None` for a required or defaulted section means
/// it could not be read (its problems are recorded); optional sections are
/// also `None` when absent.
#[derive(Debug, Clone)]
pub(crate) struct Sections {
    pub(crate) name: Option<String>,
    pub(crate) source: Option<SourceConfig>,
    pub(crate) handler: Option<HandlerConfig>,
    pub(crate) sink: Option<SinkConfig>,
    pub(crate) sinks: BTreeMap<String, SinkConfig>,
    pub(crate) retry: Option<RetryConfig>,
    pub(crate) dead_letter: Option<SinkConfig>,
    /// Whether the file has a `dead_letter` key, readable or not.
    pub(crate) has_dead_letter: bool,
    pub(crate) errors: Option<ErrorsConfig>,
    pub(crate) circuit_breaker: Option<BreakerConfig>,
    pub(crate) dedup: Option<DedupConfig>,
}

impl Default for Sections {
    fn default() -> Self {
        Sections {
            name: None,
            source: None,
            handler: None,
            sink: None,
            sinks: BTreeMap::new(),
            retry: Some(RetryConfig::default()),
            dead_letter: None,
            has_dead_letter: false,
            errors: Some(ErrorsConfig::default()),
            circuit_breaker: Some(BreakerConfig::default()),
            dedup: None,
        }
    }
}

impl Sections {
    /// The whole pipeline, when every section it needs was read.
    pub(crate) fn into_config(self) -> Option<PipelineConfig> {
        Some(PipelineConfig {
            name: self.name?,
            source: self.source?,
            handler: self.handler?,
            sink: self.sink,
            sinks: self.sinks,
            retry: self.retry?,
            dead_letter: self.dead_letter,
            errors: self.errors?,
            circuit_breaker: self.circuit_breaker?,
            dedup: self.dedup,
        })
    }
}

/// Reads every top-level section, recording all problems.
pub(crate) fn read(d: &mut Diag<'_>, root: &Spanned<DeTable<'_>>) -> Sections {
    let mut s = Sections::default();
    for (k, v) in root.get_ref().iter() {
        let key: &str = k.get_ref();
        let path = KeyPath::of(&[key]);
        match key {
            "name" => s.name = de_value(d, &path, v),
            "source" => s.source = typed(d, &path, v, SOURCE_TYPES),
            "handler" => s.handler = de_table(d, &path, v),
            "sink" => s.sink = typed(d, &path, v, SINK_TYPES),
            "sinks" => s.sinks = named_sinks(d, &path, v),
            "retry" => s.retry = de_table(d, &path, v),
            "dead_letter" => {
                s.has_dead_letter = true;
                s.dead_letter = typed(d, &path, v, SINK_TYPES);
            }
            "errors" => s.errors = de_table(d, &path, v),
            "circuit_breaker" => s.circuit_breaker = de_table(d, &path, v),
            "dedup" => s.dedup = de_table(d, &path, v),
            other => d.error(
                Some(&path),
                Some(k.span()),
                format!(
                    "unknown key `{other}`, expected one of {}",
                    one_of(TOP_LEVEL_KEYS)
                ),
            ),
        }
    }
    let required = [
        ("name", "a pipeline name such as `name = \"orders\"`"),
        ("source", "a `[source]` table with a `type`"),
        ("handler", "a `[handler]` table with a `plugin`"),
    ];
    for (key, what) in required {
        if !root.get_ref().contains_key(key) {
            // At the top of the file, where the document (and so the key) begins.
            d.error(
                None,
                Some(0..0),
                format!("missing key `{key}`: expected {what}"),
            );
        }
    }
    s
}

/// `[sinks.NAME]` tables.
fn named_sinks(
    d: &mut Diag<'_>,
    path: &KeyPath,
    v: &Spanned<DeValue<'_>>,
) -> BTreeMap<String, SinkConfig> {
    let mut sinks = BTreeMap::new();
    let Some(table) = expect_table(d, path, v) else {
        return sinks;
    };
    for (name, sink) in table.iter() {
        let name: &str = name.get_ref();
        if let Some(s) = typed(d, &path.key(name), sink, SINK_TYPES) {
            sinks.insert(name.to_string(), s);
        }
    }
    sinks
}

/// The table in `v`, or a problem saying a table was expected.
fn expect_table<'a, 'i>(
    d: &mut Diag<'_>,
    path: &KeyPath,
    v: &'a Spanned<DeValue<'i>>,
) -> Option<&'a DeTable<'i>> {
    let table = v.get_ref().as_table();
    if table.is_none() {
        d.error(
            Some(path),
            Some(v.span()),
            format!("expected a table, found {}", v.get_ref().type_str()),
        );
    }
    table
}

/// A table whose `type` key selects one of `kinds`.
pub(crate) fn typed<T>(
    d: &mut Diag<'_>,
    path: &KeyPath,
    v: &Spanned<DeValue<'_>>,
    kinds: &[(&str, Variant<T>)],
) -> Option<T> {
    let table = expect_table(d, path, v)?;
    let names = one_of(kinds.iter().map(|k| k.0));
    let Some(ty) = table.get("type") else {
        d.error(
            Some(path),
            Some(v.span()),
            format!("missing key `type`, expected one of {names}"),
        );
        return None;
    };
    let type_path = path.key("type");
    let Some(name) = ty.get_ref().as_str() else {
        d.error(
            Some(&type_path),
            Some(ty.span()),
            format!(
                "invalid type: {}, expected a string, one of {names}",
                ty.get_ref().type_str()
            ),
        );
        return None;
    };
    let Some((_, read)) = kinds.iter().find(|k| k.0 == name) else {
        d.error(
            Some(&type_path),
            Some(ty.span()),
            format!("unknown type `{name}`, expected one of {names}"),
        );
        return None;
    };
    let mut rest = table.clone();
    rest.remove("type");
    read(d, path, &Spanned::new(v.span(), DeValue::Table(rest)))
}

/// Like [`de_value`], after checking that `v` is a table.
fn de_table<T: DeserializeOwned>(
    d: &mut Diag<'_>,
    path: &KeyPath,
    v: &Spanned<DeValue<'_>>,
) -> Option<T> {
    expect_table(d, path, v)?;
    de_value(d, path, v)
}

/// Problems one section may report before the rest of it is given up.
const MAX_PROBLEMS_PER_SECTION: usize = 64;

/// Deserializes `v` into `T`, recording every problem: after each error the
/// offending key is taken out (so its default applies) and the rest is tried
/// again. `None` when `T` cannot be made at all (a required key is missing or
/// wrong); otherwise the value read from the good keys.
pub(crate) fn de_value<T: DeserializeOwned>(
    d: &mut Diag<'_>,
    path: &KeyPath,
    v: &Spanned<DeValue<'_>>,
) -> Option<T> {
    let mut current = v.clone();
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..MAX_PROBLEMS_PER_SECTION {
        let err = match T::deserialize(ValueDeserializer::from(current.clone())) {
            Ok(value) => return Some(value),
            Err(e) => e,
        };
        if missing_field(err.message()).is_some_and(|f| removed.iter().any(|r| r == f)) {
            // The key is there but was wrong; that problem is recorded already.
            return None;
        }
        let span = err.span();
        let at = span
            .as_ref()
            .and_then(|s| find_path(&current, s))
            .unwrap_or_default();
        d.error(
            Some(&path.join(&at)),
            span.or_else(|| Some(v.span())),
            polish(err.message()),
        );
        // Take out the deepest key on the path; an array element takes its array with it.
        let last = at.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
        removed.push(remove_at(&mut current, &at[..=last])?);
    }
    None
}

/// Removes the key at the end of `path` (which ends with a key), returning its name.
fn remove_at(v: &mut Spanned<DeValue<'_>>, path: &[Seg]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut cur = v;
    for seg in parents {
        cur = match (seg, cur.get_mut()) {
            (Seg::Key(k), DeValue::Table(t)) => t.get_mut(k.as_str())?,
            (Seg::Index(i), DeValue::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match (last, cur.get_mut()) {
        (Seg::Key(k), DeValue::Table(t)) => t.remove(k.as_str()).map(|_| k.clone()),
        _ => None,
    }
}
