//! Golden tests of `sluice::config::parse`: every `tests/ui/invalid/*.toml`
//! must fail with exactly the errors in the `.err` file beside it, and every
//! `tests/ui/valid/*.toml` must parse cleanly.
//!
//! `SLUICE_BLESS=1 cargo test -p sluice --test operations -- config_golden` rewrites the `.err` files
//! from the current output.

use std::fs;
use std::path::{Path, PathBuf};

/// The `.toml` files of `tests/ui/<dir>`, relative to the crate folder, sorted.
fn cases(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = Path::new("tests/ui").join(dir);
    let mut found: Vec<PathBuf> = fs::read_dir(root.join(&rel))
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", rel.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| rel.join(p.file_name().expect("file name")))
        .collect();
    found.sort();
    found
}

fn read(rel: &Path) -> String {
    let abs = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    fs::read_to_string(&abs).unwrap_or_else(|e| panic!("cannot read {}: {e}", abs.display()))
}

/// A line diff (longest common subsequence): `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

#[test]
fn invalid_pipelines_report_every_error() {
    let bless = std::env::var_os("SLUICE_BLESS").is_some_and(|v| v == "1");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let cases = cases("invalid");
    assert!(cases.len() >= 15, "expected at least 15 invalid cases");
    for toml in &cases {
        let err_file = toml.with_extension("err");
        let actual = match sluice::config::parse(toml, &read(toml)) {
            Ok(_) => "(parsed without errors)\n".to_string(),
            Err(errors) => format!("{errors}\n"),
        };
        if bless {
            fs::write(root.join(&err_file), &actual).expect("write .err file");
            continue;
        }
        let expected = fs::read_to_string(root.join(&err_file)).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "{} (`-` expected, `+` actual):\n{}",
                err_file.display(),
                diff(&expected, &actual)
            ));
        }
    }
    for err_file in fs::read_dir(root.join("tests/ui/invalid")).expect("list invalid") {
        let err_file = err_file.expect("directory entry").path();
        if err_file.extension().is_some_and(|x| x == "err")
            && !err_file.with_extension("toml").exists()
        {
            failures.push(format!("{}: no .toml beside it", err_file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nrun `SLUICE_BLESS=1 cargo test -p sluice --test operations -- config_golden` to accept the new output",
        failures.join("\n")
    );
}

#[test]
fn valid_pipelines_parse() {
    let cases = cases("valid");
    assert!(cases.len() >= 2, "expected a minimal and a full valid case");
    for toml in &cases {
        if let Err(errors) = sluice::config::parse(toml, &read(toml)) {
            panic!("{} should parse:\n{errors}", toml.display());
        }
    }
}
