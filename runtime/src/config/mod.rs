//! Pipeline TOML → validated [`PipelineConfig`]. Pure: reads one file, collects
//! every problem (file, line, key, what was expected) instead of stopping at the first.

pub mod model;
pub mod units;

pub use model::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `handler.timeout`, when the problem has one.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in one pipeline file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
                if let Some(col) = e.column {
                    write!(f, ":{col}")?;
                }
            }
            write!(f, ": ")?;
            if let Some(key) = &e.key {
                write!(f, "{key}: ")?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

/// Reads, parses and validates a pipeline file. Relative paths inside it are
/// resolved against the file's folder.
pub fn load(path: &Path) -> Result<PipelineConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            line: None,
            column: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Parses and validates pipeline TOML that was read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<PipelineConfig, ConfigErrors> {
    let config: PipelineConfig = toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_col(text, s.start))
            .map_or((None, None), |(l, c)| (Some(l), Some(c)));
        ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                line,
                column,
                key: None,
                message: e.message().to_string(),
            }],
        }
    })?;
    Ok(resolve_paths(config, path.parent().unwrap_or(Path::new("."))))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn resolve(base: &Path, p: &mut PathBuf) {
    if p.as_os_str() != "-" && p.is_relative() {
        *p = base.join(&*p);
    }
}

fn resolve_sink(base: &Path, s: &mut SinkConfig) {
    match s {
        SinkConfig::File(f) => resolve(base, &mut f.path),
    }
}

/// Makes the paths inside a config absolute relative to `base`.
fn resolve_paths(mut c: PipelineConfig, base: &Path) -> PipelineConfig {
    resolve(base, &mut c.handler.plugin);
    match &mut c.source {
        SourceConfig::File(f) => {
            resolve(base, &mut f.path);
            if let Some(cp) = &mut f.checkpoint {
                resolve(base, cp);
            }
        }
    }
    if let Some(s) = &mut c.sink {
        resolve_sink(base, s);
    }
    for s in c.sinks.values_mut() {
        resolve_sink(base, s);
    }
    if let Some(s) = &mut c.dead_letter {
        resolve_sink(base, s);
    }
    c
}
