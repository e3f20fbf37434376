//! The direction of the source tree's imports, checked: sources and sinks
//! never import each other, and the modules they share (brokers, policy,
//! config, message, wait, files) import neither. Tests are left out: a
//! source's tests may well write through a sink.

use std::path::{Path, PathBuf};

/// The text of a source file without its test module.
fn code_of(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Every `.rs` file under `dir` but test files, with its code.
fn sources_of(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("a folder entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("tests.rs") {
                out.push((p.clone(), code_of(&p)));
            }
        }
    }
    out
}

/// The files under `src/<module>` (or `src/<module>.rs`) that name one of
/// `forbidden` (`crate::sinks` and the like), with the line.
fn offenders(module: &str, forbidden: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = if src.join(module).is_dir() {
        sources_of(&src.join(module))
    } else {
        let p = src.join(format!("{module}.rs"));
        vec![(p.clone(), code_of(&p))]
    };
    let mut found = Vec::new();
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn sources_and_sinks_do_not_import_each_other() {
    assert_eq!(
        offenders("sources", &["crate::sinks"]),
        Vec::<String>::new()
    );
    assert_eq!(
        offenders("sinks", &["crate::sources"]),
        Vec::<String>::new()
    );
}

#[test]
fn shared_modules_import_neither_sources_nor_sinks() {
    for module in [
        "brokers", "policy", "config", "message", "envelope", "wait", "files",
    ] {
        assert_eq!(
            offenders(module, &["crate::sinks", "crate::sources"]),
            Vec::<String>::new(),
            "{module}"
        );
    }
}
