//! The `init` config: the pipeline's `[handler.config]` table as a sorted map.
use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

/// Config passed to the `init` hook. A key given twice keeps its last value.
pub type Config = BTreeMap<String, String>;

/// Reads `key` as a `T`, or `default` when absent. The error names the key and the value,
/// ready to return from `init` (which refuses the plugin with it).
pub fn parse_or<T>(config: &Config, key: &str, default: T) -> Result<T, String>
where
    T: FromStr,
    T::Err: Display,
{
    match config.get(key) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| format!("config `{key}`: cannot parse {raw:?}: {e}")),
    }
}

/// The default `init`: accepts any config.
pub fn accept_any(_config: Config) -> Result<(), String> {
    Ok(())
}
