//! Every example pipeline in `pipelines/` passes `sluice check` (config and plugin),
//! and `sluice check` reports a bad pipeline with file, line and key.

use crate::common;

#[test]
fn every_example_pipeline_checks() {
    for p in ["log-parser", "iot-threshold", "order-quote"] {
        common::plugin(p);
    }
    let dir = common::repo().join("pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "quickstart plus the three scenarios: {files:?}"
    );
    for f in &files {
        let (code, out, err) = common::run_sluice(&["check", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {out}{err}", f.display());
        assert!(out.contains(": ok (pipeline"), "{out}");
        // The examples' handlers are Rust SDK builds: they take batches.
        assert!(out.contains("messages a call"), "{out}");
    }
}

#[test]
fn check_reports_every_error_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "name = \"bad\"\n[source]\ntype = \"kafka\"\ntopics = []\n[handler]\nplugin = \"x.wasm\"\ntimeout = \"soon\"\n",
    )
    .unwrap();
    let (code, _, err) = common::run_sluice(&["check", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml:7:"),
        "line of handler.timeout: {err}"
    );
    assert!(err.contains("handler.timeout"), "{err}");
    assert!(
        err.contains("source: missing key `brokers`"),
        "the kafka table's problems too: {err}"
    );

    // A valid file whose plugin does not exist: the plugin error names the key.
    let g = dir.path().join("noplugin.toml");
    std::fs::write(
        &g,
        "name = \"p\"\n[source]\ntype = \"file\"\npath = \"in.txt\"\n[handler]\nplugin = \"missing.wasm\"\n[dead_letter]\ntype = \"file\"\npath = \"d.jsonl\"\n",
    )
    .unwrap();
    let (code, _, err) = common::run_sluice(&["check", g.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("handler.plugin") && err.contains("missing.wasm"),
        "{err}"
    );
}

/// `[handler.canary]`: its rule's problems with file, line and key, and a
/// canary plugin that cannot load named by its key; a good one is loaded.
#[test]
fn check_validates_the_canary_table_and_loads_its_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let echo = common::plugin("echo");
    let head = format!(
        "name = \"c\"\n[source]\ntype = \"file\"\npath = \"in.txt\"\n[handler]\nplugin = \"{}\"\n[dead_letter]\ntype = \"file\"\npath = \"d.jsonl\"\n",
        echo.display()
    );
    let f = dir.path().join("rule.toml");
    std::fs::write(
        &f,
        format!("{head}[handler.canary]\nplugin = \"v2.wasm\"\nshare = 0\nmin_messages = 0\n"),
    )
    .unwrap();
    let (code, _, err) = common::run_sluice(&["check", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("rule.toml:12:9: handler.canary.share: must be above 0"),
        "{err}"
    );
    assert!(
        err.contains("rule.toml:13:16: handler.canary.min_messages"),
        "{err}"
    );

    let g = dir.path().join("missing.toml");
    std::fs::write(
        &g,
        format!("{head}[handler.canary]\nplugin = \"v2.wasm\"\nshare = 0.1\n"),
    )
    .unwrap();
    let (code, out, err) = common::run_sluice(&["check", g.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("missing.toml:11:10: handler.canary.plugin") && err.contains("v2.wasm"),
        "{err}"
    );

    let h = dir.path().join("good.toml");
    std::fs::write(
        &h,
        format!(
            "{head}[handler.canary]\nplugin = \"{}\"\nshare = 0.1\n",
            common::plugin("tag-b").display()
        ),
    )
    .unwrap();
    let (code, out, err) = common::run_sluice(&["check", h.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("canary ok"), "{out}");
}

/// A secret written where a user might put one is refused, and no error
/// shows it: a literal password or token, credentials in a NATS or MQTT
/// URL, a Kafka option that holds one; `{}` and `{ env, file }` together
/// are refused too.
#[test]
fn secrets_in_the_file_are_refused_and_never_echoed() {
    const SECRET: &str = "hunter2Zq";
    let dir = tempfile::tempdir().unwrap();
    let tail =
        "[handler]\nplugin = \"x.wasm\"\n[dead_letter]\ntype = \"file\"\npath = \"d.jsonl\"\n";
    let cases = [
        (
            "nats-password",
            format!("[source]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"a\"\nusername = \"u\"\npassword = \"{SECRET}\"\n"),
        ),
        (
            "nats-token",
            format!("[source]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"a\"\ntoken = [\"{SECRET}\"]\n"),
        ),
        (
            "nats-url",
            format!("[source]\ntype = \"nats\"\nurl = \"nats://u:{SECRET}@127.0.0.1:4222\"\nsubject = \"a\"\n"),
        ),
        (
            "mqtt-url",
            format!("[source]\ntype = \"mqtt\"\nurl = \"mqtt://u:{SECRET}@127.0.0.1:1883\"\ntopics = [\"a\"]\n"),
        ),
        (
            "mqtt-both",
            format!("[source]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopics = [\"a\"]\nusername = \"u\"\npassword = {{ env = \"X\", file = \"{SECRET}\" }}\n"),
        ),
        (
            "mqtt-empty",
            "[source]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopics = [\"a\"]\nusername = \"u\"\npassword = {}\n".to_string(),
        ),
        (
            "kafka-jaas",
            format!("[source]\ntype = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\ntopics = [\"a\"]\ngroup = \"g\"\noptions = {{ \"sasl.jaas.config\" = \"x password={SECRET}\" }}\n"),
        ),
    ];
    for (name, source) in cases {
        let f = dir.path().join(format!("{name}.toml"));
        std::fs::write(&f, format!("name = \"{name}\"\n{source}{tail}")).unwrap();
        let (code, out, err) = common::run_sluice(&["check", f.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "{name} echoed:\n{err}"
        );
        assert!(err.contains(&format!("{name}.toml:")), "{name}: {err}");
    }
}

/// `${NAME:-default}` in a string value comes from the environment: the
/// default when unset, the variable when set, a problem with file, line and
/// key when neither; a value from the environment is never echoed, and a
/// secret key still takes no string.
#[test]
fn pipeline_files_take_values_from_the_environment() {
    const SECRET: &str = "hunter2Zq";
    let dir = tempfile::tempdir().unwrap();
    let plugin = common::plugin("echo");
    let file = |name: &str, body: &str| {
        let f = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &f,
            format!(
                "name = \"{name}\"\n[source]\n{body}\n[handler]\nplugin = \"{}\"\n\
                 [dead_letter]\ntype = \"file\"\npath = \"d.jsonl\"\n",
                plugin.display()
            ),
        )
        .unwrap();
        f.to_str().unwrap().to_string()
    };
    let nats = file(
        "env-url",
        "type = \"nats\"\nurl = \"${SLUICE_T_URL:-nats://127.0.0.1:4222}\"\nsubject = \"a\"",
    );
    let (code, out, err) = common::run_sluice_env(&["check", &nats], &[]);
    assert_eq!(code, 0, "the default applies: {out}{err}");
    let (code, out, err) =
        common::run_sluice_env(&["check", &nats], &[("SLUICE_T_URL", "http://elsewhere:1")]);
    assert_eq!(code, 1, "the variable applies: {out}{err}");
    assert!(
        err.contains("env-url.toml:4:") && err.contains("source.url"),
        "{err}"
    );
    assert!(
        !err.contains("elsewhere"),
        "a value from the environment is echoed: {err}"
    );

    let unset = file(
        "env-unset",
        "type = \"file\"\npath = \"${SLUICE_T_NOPE}/in.txt\"",
    );
    let (code, _, err) = common::run_sluice_env(&["check", &unset], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("env-unset.toml:4:")
            && err.contains("source.path")
            && err.contains("`SLUICE_T_NOPE` is not set"),
        "{err}"
    );

    let env = [("SLUICE_T_SECRET", SECRET)];
    for (name, body) in [
        (
            "env-cred-url",
            "type = \"nats\"\nurl = \"nats://u:${SLUICE_T_SECRET}@127.0.0.1:4222\"\nsubject = \"a\"",
        ),
        (
            "env-password",
            "type = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"a\"\nusername = \"u\"\npassword = \"${SLUICE_T_SECRET}\"",
        ),
        (
            "env-subject",
            "type = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"a ${SLUICE_T_SECRET}\"",
        ),
    ] {
        let f = file(name, body);
        let (code, out, err) = common::run_sluice_env(&["check", &f], &env);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert!(err.contains(&format!("{name}.toml:")), "{name}: {err}");
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "{name} echoed:\n{err}"
        );
    }
}

/// Log lines whose stderr is a file carry no colour codes, and with
/// `SLUICE_LOG_FORMAT=json` each is one JSON object. The line logged is the
/// note on an older TLS key spelling, which `check` reads and accepts.
#[test]
fn logs_to_a_file_are_plain_text_or_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("old-tls.toml");
    std::fs::write(
        &f,
        "name = \"old-tls\"\n[source]\ntype = \"file\"\npath = \"in.txt\"\n[handler]\nplugin = \"missing.wasm\"\n[sink]\ntype = \"nats\"\nsubject = \"o\"\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n[dead_letter]\ntype = \"file\"\npath = \"d.jsonl\"\n",
    )
    .unwrap();
    let run = |format: Option<&str>| -> String {
        let log = dir
            .path()
            .join(format!("stderr-{}.log", format.unwrap_or("default")));
        let mut cmd = std::process::Command::new(common::sluice_bin());
        cmd.args(["check", f.to_str().unwrap()])
            .env("SLUICE_CACHE_DIR", common::cache_dir())
            .env_remove("SLUICE_LOG")
            .env_remove("SLUICE_LOG_FORMAT")
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(v) = format {
            cmd.env("SLUICE_LOG_FORMAT", v);
        }
        let mut child = cmd.spawn().expect("run sluice");
        let deadline = std::time::Instant::now() + common::RUN_LIMIT;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("sluice check did not finish within {:?}", common::RUN_LIMIT);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::read_to_string(&log).unwrap()
    };

    let text = run(None);
    assert!(text.contains("older spelling of `cert_file`"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");

    let json = run(Some("json"));
    let logged: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!json.contains('\u{1b}'), "{json:?}");
    let note = logged
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("older spelling of `key_file`"))
        })
        .unwrap_or_else(|| panic!("no JSON line with the note: {json}"));
    assert_eq!(note["level"], "WARN", "{note}");
    assert!(
        note["fields"]["file"]
            .as_str()
            .is_some_and(|p| p.ends_with("old-tls.toml")),
        "{note}"
    );
}

/// `sluice call … | head -1`: the reader closes the pipe early. The command
/// ends as Unix tools do (SIGPIPE, or an exit), never with a panic in the
/// middle of its output.
#[test]
fn a_closed_stdout_ends_call_without_a_panic() {
    use std::process::{Command, Stdio};
    let echo = common::plugin("echo");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.txt");
    let lines: String = (0..2000).map(|i| format!("payload-{i}\n")).collect();
    std::fs::write(&input, lines).expect("write the input");
    let mut child = Command::new(common::sluice_bin())
        .arg("call")
        .arg("--plugin")
        .arg(&echo)
        .arg("--input")
        .arg(&input)
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice call");
    // Close the read end before anything is written: every write fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "sluice call panicked on a closed stdout: {stderr}"
    );
}
