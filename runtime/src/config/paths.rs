//! Relative paths in a pipeline file are relative to the file's folder; this
//! makes them so; each source and sink table resolves its own ([`super::table::Table`]).

use std::path::Path;

use super::model::SinkConfig;
use super::sections::Sections;
use super::table::resolve;

/// Makes every path in the sections read so far relative to `base` (the
/// pipeline file's folder) when it is not absolute.
pub(crate) fn resolve_all(base: &Path, s: &mut Sections) {
    if let Some(h) = &mut s.handler {
        resolve(base, &mut h.plugin);
        if let Some(c) = &mut h.canary {
            resolve(base, &mut c.plugin);
        }
    }
    if let Some(src) = &mut s.source {
        src.table_mut().resolve_paths(base);
    }
    for sink in s
        .sink
        .iter_mut()
        .chain(s.sinks.values_mut())
        .chain(s.dead_letter.iter_mut())
    {
        sink.table_mut().resolve_paths(base);
    }
}

/// The file a sink writes, for the types that write files.
pub(crate) fn sink_file(s: &SinkConfig) -> Option<&Path> {
    match s {
        SinkConfig::File(f) => Some(&f.path).filter(|p| p.as_os_str() != "-").map(|p| &**p),
        _ => None,
    }
}
