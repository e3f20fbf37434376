//! Pipeline TOML → validated [`PipelineConfig`]. Pure: reads one file, collects
//! every problem (file, line, key, what was expected) instead of stopping at the first.
//!
//! The steps: the TOML syntax is parsed into a table that remembers where each
//! key and value is, `${NAME:-default}` in string values is taken from the
//! environment ([`interpolate`]), [`sections`] reads each top-level section on its own and
//! keeps going after a bad key), relative paths are made relative to the
//! file's folder ([`paths`]), and the rules the types cannot express are
//! checked ([`validate`]). [`diagnostics`] turns positions into lines.

mod canary;
mod diagnostics;
mod interpolate;
pub mod kafka;
pub mod model;
pub mod mqtt;
pub mod nats;
mod paths;
pub mod secret;
mod sections;
pub mod table;
pub mod tls;
pub mod units;
mod validate;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

pub(crate) use diagnostics::line_col;
pub use diagnostics::{ConfigError, ConfigErrors, position_of};
pub use model::*;
pub use table::{Problem, Table};
pub use tls::TlsConfig;
pub use validate::{MAX_MEMORY, MIN_COMPILE_MEMORY, MIN_MEMORY};

use std::path::Path;

use diagnostics::Diag;

/// Reads, parses and validates a pipeline file. Relative paths inside it are
/// resolved against the file's folder.
pub fn load(path: &Path) -> Result<PipelineConfig, ConfigErrors> {
    let text =
        crate::files::read_regular_text(path, crate::files::MAX_PIPELINE_BYTES).map_err(|e| {
            ConfigErrors {
                file: path.to_path_buf(),
                errors: vec![ConfigError {
                    line: None,
                    column: None,
                    key: None,
                    message: format!("cannot read the file: {e}"),
                }],
            }
        })?;
    parse(path, &text)
}

/// Parses and validates pipeline TOML that was read from `path`. Relative
/// paths inside it are resolved against `path`'s folder. On failure, every
/// problem found is returned, not only the first.
pub fn parse(path: &Path, text: &str) -> Result<PipelineConfig, ConfigErrors> {
    let mut d = Diag::new(text);
    let (mut root, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let message = diagnostics::syntax_message(text, &e);
            let span = e.span().or_else(|| {
                message
                    .contains("recursion")
                    .then(|| diagnostics::deepest_line(text))
                    .flatten()
            });
            d.error(None, span, message);
        }
        return Err(d.finish(path));
    }
    let substituted = interpolate::expand(&mut d, &mut root, &|name| std::env::var(name).ok());
    let mut sections = sections::read(&mut d, &root);
    paths::resolve_all(path.parent().unwrap_or(Path::new(".")), &mut sections);
    validate::validate(&mut d, &root, &sections);
    if d.is_empty() {
        if let Some(config) = sections.into_config() {
            for note in tls::deprecated_keys(text, &root) {
                tracing::warn!(file = %path.display(), "{note}");
            }
            return Ok(config);
        }
        d.error(None, None, "the pipeline is incomplete");
    }
    let mut errors = d.finish(path);
    substituted.redact(&mut errors.errors);
    Err(errors)
}
