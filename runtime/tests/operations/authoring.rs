//! The handler author's loop through the real `sluice` binary: `sluice new`
//! writes a project in every language that builds with the machine's tool
//! chains, passes its own fixtures with `sluice test` and runs with `sluice
//! run`; every example plugin passes its fixtures; a failing case shows a
//! diff and exits 1; a malformed fixtures file is an error naming the file,
//! line and key.
//!
//! A missing tool chain fails the test with an install hint
//! (`bash .ci/install-guest-toolchains.sh`); it never skips.

use crate::common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// `sluice test --json FILE`: (exit code, one JSON value per line, stderr).
fn sluice_test(file: &Path) -> (i32, Vec<Value>, String) {
    let (code, out, err) = common::run_sluice(&["test", "--json", &file.to_string_lossy()]);
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (code, lines, err)
}

/// Asserts every case of `file` passed and returns how many there were.
fn assert_all_pass(file: &Path) -> usize {
    let (code, lines, err) = sluice_test(file);
    let (cases, total) = lines.split_at(lines.len().saturating_sub(1));
    let failed: Vec<&Value> = cases.iter().filter(|c| c["ok"] != true).collect();
    assert!(
        failed.is_empty() && code == 0,
        "{}: exit {code}; failed cases: {failed:#?}\nstderr: {err}",
        file.display()
    );
    assert_eq!(total[0]["failed"], 0, "{total:?}");
    cases.len()
}

#[test]
fn new_projects_build_pass_their_fixtures_and_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for lang in ["rust", "c", "python", "js", "go"] {
        let dir = tmp.path().join(format!("hello-{lang}"));
        let (code, out, err) = common::run_sluice(&["new", &dir.to_string_lossy(), "--lang", lang]);
        assert_eq!(code, 0, "sluice new --lang {lang}: {out}{err}");
        assert!(out.contains("build:") && out.contains("build.sh"), "{out}");
        // The Rust build shares one target folder across runs (the SDK's
        // dependencies compile once).
        let target = common::repo().join("target/authoring-template");
        let build = Command::new("bash")
            .arg(dir.join("build.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run build.sh");
        assert!(
            build.status.success(),
            "building the new {lang} project failed{}: {}\n\
             Install the guest tool chains with `bash .ci/install-guest-toolchains.sh`.",
            if build.status.code() == Some(127) {
                " (tool chain missing)"
            } else {
                ""
            },
            String::from_utf8_lossy(&build.stderr)
        );
        let cases = assert_all_pass(&dir.join("fixtures.toml"));
        assert_eq!(cases, 8, "{lang}: every template case ran");
        // The pipeline runs it on the file source: three outputs, and the
        // empty line dead-lettered as fatal.
        let (code, out, err) =
            common::run_sluice(&["run", &dir.join("pipeline.toml").to_string_lossy()]);
        assert_eq!(code, 0, "sluice run ({lang}): {out}{err}");
        let outputs = std::fs::read_to_string(dir.join("out/outputs.txt")).expect("outputs");
        assert_eq!(
            outputs, "HELLO!\nSLUICE HANDLERS!\nONE MORE LINE!\n",
            "{lang}"
        );
        let dead =
            std::fs::read_to_string(dir.join("out/dead-letter.jsonl")).expect("dead letters");
        assert_eq!(dead.lines().count(), 1, "{lang}: {dead}");
        assert!(
            dead.contains("fatal") && dead.contains("empty payload"),
            "{lang}: {dead}"
        );
    }
}

#[test]
fn new_refuses_bad_names_existing_folders_and_missing_sdks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = |p: &str| tmp.path().join(p).to_string_lossy().into_owned();
    let (code, _, err) = common::run_sluice(&["new", &t("Bad_Name"), "--lang", "c"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("project name \"Bad_Name\""), "{err}");
    std::fs::create_dir(tmp.path().join("taken")).expect("mkdir");
    let (code, _, err) = common::run_sluice(&["new", &t("taken"), "--lang", "c"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = common::run_sluice(&["new", &t("fine"), "--lang", "c", "--sdk", &t("")]);
    assert_eq!(code, 1);
    assert!(err.contains("not a Sluice guest SDK"), "{err}");
    assert!(
        !tmp.path().join("fine").exists(),
        "nothing written on a refusal"
    );
}

#[test]
fn example_plugins_pass_their_fixtures() {
    let plugins = common::repo().join("plugins");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&plugins).expect("plugins/").flatten() {
        let f = e.path().join("fixtures.toml");
        if f.is_file() {
            // The handler must exist before its fixtures can run.
            common::plugin(&e.file_name().to_string_lossy());
            files.push(f);
        }
    }
    assert!(files.len() >= 10, "fixtures found: {files:?}");
    for f in files {
        assert_all_pass(&f);
    }
}

#[test]
fn a_failing_case_shows_a_diff_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = tmp.path().join("fixtures.toml");
    std::fs::write(
        &f,
        format!(
            "plugin = {:?}\n\
             [[case]]\nname = \"right\"\ninput = {{ payload = \"a\" }}\nexpect.outputs = [{{ payload = \"a\" }}]\n\
             [[case]]\nname = \"wrong payload\"\ninput = {{ payload = \"a\" }}\nexpect.outputs = [{{ payload = \"b\", key = \"k\" }}]\n\
             [[case]]\nname = \"wrong outcome\"\ninput = {{ payload = \"a\" }}\nfaults = {{ sink = \"rejected\" }}\nexpect = {{ outcome = \"acked\" }}\n\
             [[case]]\nname = \"wrong reply\"\ninput = {{ payload = \"a\", request = true }}\nexpect = {{ outcome = \"answered\", reply = \"b\" }}\n",
            common::plugin("echo").to_string_lossy()
        ),
    )
    .expect("write");
    let (code, out, err) = common::run_sluice(&["test", &f.to_string_lossy()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ok    right"), "{out}");
    assert!(out.contains("FAIL  wrong payload"), "{out}");
    assert!(
        out.contains(r#"outputs[0].payload: expected "b", got "a""#),
        "{out}"
    );
    assert!(
        out.contains("outputs[0].key: expected \"k\", got none"),
        "{out}"
    );
    assert!(
        out.contains("expected outcome acked, got dead-lettered"),
        "{out}"
    );
    assert!(out.contains(r#"reply: expected "b", got "a""#), "{out}");
    assert!(out.contains("1 passed, 3 failed"), "{out}");
    let (code, lines, _) = sluice_test(&f);
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 5, "four cases and the totals: {lines:?}");
    assert_eq!(lines[2]["outcome"], "dead-lettered");
    assert_eq!(lines[2]["class"], "rejected");
    assert_eq!(lines[3]["reply"]["payload"], "a");
    assert_eq!(lines[4]["failed"], 3);
}

#[test]
fn malformed_fixtures_name_file_line_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = tmp.path().join("bad.toml");
    let cases: [(&str, &str); 4] = [
        (
            "plugin = \"x.wasm\"\n[[case]]\nname = \"a\"\ninput = { paylod = \"x\" }\nexpect.outputs = []\n",
            "bad.toml:4:",
        ),
        (
            "plugin = \"x.wasm\"\n[[case]]\nname = \"a\"\nexpect = { outcome = \"exploded\" }\n",
            "case[0]",
        ),
        ("plugin = [\n", "bad.toml:"),
        (
            "plugin = \"x.wasm\"\n[[case]]\nname = \"a\"\nfaults = { sink = \"transient\" }\nexpect = { failure = \"fuel\" }\n",
            "case[0].faults",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&f, text).expect("write");
        let (code, out, err) = common::run_sluice(&["test", &f.to_string_lossy()]);
        assert_eq!(code, 1, "{text}: {out}{err}");
        assert!(err.contains(want), "{text}: want {want:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A plugin that does not load fails its cases with the reason.
    std::fs::write(
        &f,
        "plugin = \"missing.wasm\"\n[[case]]\nname = \"a\"\nexpect.outputs = []\n",
    )
    .expect("write");
    let (code, out, _) = common::run_sluice(&["test", &f.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(
        out.contains("the plugin did not load") && out.contains("missing.wasm"),
        "{out}"
    );
}
