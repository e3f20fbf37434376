//! Relative paths in a pipeline file are relative to the file's folder; this
//! makes them so. One function per source and sink type.

use std::path::{Path, PathBuf};

use super::model::{FileSinkConfig, FileSourceConfig, SinkConfig, SourceConfig};
use super::sections::Sections;

/// Joins a relative path to `base`; `-` (standard input/output) stays as it is.
fn resolve(base: &Path, p: &mut PathBuf) {
    if p.as_os_str() != "-" && p.is_relative() {
        *p = base.join(&*p);
    }
}

/// The paths of a `[source]` table.
pub(crate) fn resolve_source(base: &Path, s: &mut SourceConfig) {
    match s {
        SourceConfig::File(f) => resolve_file_source(base, f),
        SourceConfig::Kafka(k) => k.resolve_paths(base),
        SourceConfig::Mqtt(m) => m.resolve_paths(base),
        SourceConfig::Nats(n) => n.resolve_paths(base),
        SourceConfig::Jetstream(j) => j.resolve_paths(base),
    }
}

/// The paths of a `[sink]`, `[sinks.NAME]` or `[dead_letter]` table.
pub(crate) fn resolve_sink(base: &Path, s: &mut SinkConfig) {
    match s {
        SinkConfig::File(f) => resolve_file_sink(base, f),
        SinkConfig::Kafka(k) => k.resolve_paths(base),
        SinkConfig::Mqtt(m) => m.resolve_paths(base),
        SinkConfig::Nats(n) => n.resolve_paths(base),
        SinkConfig::Jetstream(j) => j.resolve_paths(base),
    }
}

fn resolve_file_source(base: &Path, f: &mut FileSourceConfig) {
    resolve(base, &mut f.path);
    if let Some(cp) = &mut f.checkpoint {
        resolve(base, cp);
    }
}

fn resolve_file_sink(base: &Path, f: &mut FileSinkConfig) {
    resolve(base, &mut f.path);
}

/// Makes every path in the sections read so far relative to `base` (the
/// pipeline file's folder) when it is not absolute.
pub(crate) fn resolve_all(base: &Path, s: &mut Sections) {
    if let Some(h) = &mut s.handler {
        resolve(base, &mut h.plugin);
    }
    if let Some(src) = &mut s.source {
        resolve_source(base, src);
    }
    for sink in s
        .sink
        .iter_mut()
        .chain(s.sinks.values_mut())
        .chain(s.dead_letter.iter_mut())
    {
        resolve_sink(base, sink);
    }
}

/// The file a sink writes, for the types that write files.
pub(crate) fn sink_file(s: &SinkConfig) -> Option<&Path> {
    match s {
        SinkConfig::File(f) => Some(&f.path).filter(|p| p.as_os_str() != "-").map(|p| &**p),
        _ => None,
    }
}
