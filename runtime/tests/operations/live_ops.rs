//! Live operations against the real `sluice` binary: plugin hot swap under a
//! steady JetStream stream (NATS on 127.0.0.1:4222), pipeline files added,
//! changed (validly and not) and removed while `sluice run DIR` runs, and the
//! admin API (metrics counts, /pipelines, reload, bearer token).

use crate::common;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use serde_json::Value;

use common::admin::{http, metric, pipeline, pipelines, spawn, wait_until};

const URL: &str = "nats://127.0.0.1:4222";

fn count(p: &Value, key: &str) -> u64 {
    p["counts"][key].as_u64().unwrap_or(0)
}

/// Replaces `dst` atomically (temp file + rename), as a deploy would.
fn install(src_bytes: &[u8], dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, src_bytes).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn append(p: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Stops sluice with SIGTERM and expects exit 0.
fn stop(mut p: common::Proc, log: &Path) {
    p.signal("TERM");
    let code = p.wait_timeout(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "clean exit on SIGTERM; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// 50,000 messages through JetStream while the plugin file is swapped ten
/// times between `tag-a` and `tag-b` (plus two broken versions): every
/// message processed once, tags in contiguous runs, broken versions refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_a_steady_jetstream_stream() {
    const N: usize = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let u = common::unique("swap").replace('-', "_");
    let (ins, outs, sub) = (
        format!("{}_IN", u.to_uppercase()),
        format!("{}_OUT", u.to_uppercase()),
        u.clone(),
    );
    let a = std::fs::read(common::plugin("tag-a")).unwrap();
    let b = std::fs::read(common::plugin("tag-b")).unwrap();
    std::fs::create_dir(d.join("plugin")).unwrap();
    std::fs::create_dir(d.join("pipelines")).unwrap();
    let wasm = d.join("plugin/handler.wasm");
    install(&a, &wasm);

    let js = jetstream::new(
        async_nats::connect(URL)
            .await
            .expect("NATS on 127.0.0.1:4222"),
    );
    js.get_or_create_stream(stream::Config {
        name: ins.clone(),
        subjects: vec![format!("{sub}.in")],
        ..Default::default()
    })
    .await
    .unwrap();
    std::fs::write(
        d.join("pipelines/swap.toml"),
        format!(
            r#"name = "swap"
[source]
type = "jetstream"
url = "{URL}"
stream = "{ins}"
durable = "swap"
batch = 256
max_ack_pending = 2000
[handler]
plugin = "{wasm}"
concurrency = 1
[sink]
type = "jetstream"
url = "{URL}"
subject = "{sub}.out"
stream = "{outs}"
[dead_letter]
type = "file"
path = "{d}/dlq.jsonl"
"#,
            wasm = wasm.display(),
            d = d.display()
        ),
    )
    .unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(&[d.join("pipelines").to_str().unwrap()], port, &log);
    wait_until("the pipeline to be ready", Duration::from_secs(30), || {
        http(port, "GET", "/readyz", None).0 == 200 && pipeline(port, "swap").is_some()
    });

    // A steady stream: 500 messages every ~50ms, published while swapping.
    let producer = {
        let js = js.clone();
        let subject = format!("{sub}.in");
        tokio::spawn(async move {
            for chunk in 0..N / 500 {
                let mut acks = Vec::with_capacity(500);
                for i in chunk * 500..(chunk + 1) * 500 {
                    acks.push(
                        js.publish(subject.clone(), format!("m{i:06}").into())
                            .await
                            .unwrap(),
                    );
                }
                for a in acks {
                    a.await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let started = Instant::now();
    let mut swaps = 0;
    let mut failed_reloads = 0;
    let mut last = 0;
    while swaps < 10 {
        // Let each version handle a good share of the stream first.
        let p = tokio::task::block_in_place(|| {
            let mut p = Value::Null;
            wait_until("progress", Duration::from_secs(60), || {
                p = pipeline(port, "swap").unwrap_or(Value::Null);
                count(&p, "succeeded") >= last + 1_500
            });
            p
        });
        last = count(&p, "succeeded");
        if swaps == 3 || swaps == 7 {
            // A broken version: not wasm at all, then a component without `handle`.
            let digest = p["plugin"]["digest"].clone();
            let broken = if swaps == 3 {
                b"this is not wasm".to_vec()
            } else {
                wat::parse_str("(component)").unwrap()
            };
            install(&broken, &wasm);
            failed_reloads += 1;
            let p = tokio::task::block_in_place(|| {
                let mut p = Value::Null;
                wait_until("the failed reload", Duration::from_secs(20), || {
                    p = pipeline(port, "swap").unwrap_or(Value::Null);
                    p["reloads"]["failed"].as_u64() == Some(failed_reloads)
                });
                // Still flowing on the old version.
                let before = count(&p, "succeeded");
                wait_until(
                    "the stream to keep flowing",
                    Duration::from_secs(30),
                    || {
                        pipeline(port, "swap")
                            .is_some_and(|q| count(&q, "succeeded") >= before + 500)
                    },
                );
                p
            });
            assert_eq!(
                p["plugin"]["digest"], digest,
                "a broken plugin changes nothing"
            );
            assert_eq!(p["state"], "running");
            let err = p["last_reload_error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                err.contains(if swaps == 3 {
                    "not a WebAssembly component"
                } else {
                    "does not implement"
                }),
                "{err}"
            );
            eprintln!("[hot swap] broken version refused: {err}");
        }
        swaps += 1;
        install(if swaps % 2 == 1 { &b } else { &a }, &wasm);
        tokio::task::block_in_place(|| {
            wait_until("the reload", Duration::from_secs(20), || {
                pipeline(port, "swap").is_some_and(|p| p["reloads"]["ok"].as_u64() == Some(swaps))
            })
        });
    }
    producer.await.unwrap();
    tokio::task::block_in_place(|| {
        wait_until("every message", Duration::from_secs(90), || {
            pipeline(port, "swap").is_some_and(|p| count(&p, "succeeded") >= N as u64)
        })
    });
    let (_, metrics) = http(port, "GET", "/metrics", None);
    let p = pipeline(port, "swap").unwrap();
    stop(proc, &log);
    let elapsed = started.elapsed();

    // Read every output back, in the order they were stored.
    let out = js.get_stream(&outs).await.unwrap();
    let c = out
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got = Vec::with_capacity(N);
    loop {
        let mut batch = c
            .fetch()
            .max_messages(5_000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let before = got.len();
        while let Some(Ok(m)) = batch.next().await {
            got.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        if got.len() == before {
            break;
        }
    }
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut tags = Vec::new();
    for o in &got {
        let (tag, m) = o.split_once(':').expect("tagged output");
        let i: usize = m.trim_start_matches('m').parse().expect("index");
        *seen.entry(i).or_default() += 1;
        if tags.last() != Some(&tag) {
            tags.push(tag);
        }
    }
    let dups = seen.values().filter(|n| **n > 1).count();
    let lost = (0..N).filter(|i| !seen.contains_key(i)).count();
    eprintln!(
        "[hot swap] {N} sent, {} outputs, {} distinct, lost {lost}, duplicated {dups}, {swaps} swaps + {failed_reloads} refused, tag runs {:?} ({} boundaries), {:.1}s",
        got.len(),
        seen.len(),
        tags,
        tags.len() - 1,
        elapsed.as_secs_f64()
    );
    assert_eq!(lost, 0, "no message lost");
    assert_eq!(dups, 0, "no message duplicated");
    assert_eq!(got.len(), N);
    assert_eq!(tags.first(), Some(&"A"), "version A ran first");
    assert_eq!(
        tags.len() - 1,
        10,
        "one contiguous run per version: {tags:?}"
    );
    assert!(tags.windows(2).all(|w| w[0] != w[1]));
    // Processed exactly once: nothing was received twice or handed back.
    assert_eq!(count(&p, "received"), N as u64);
    assert_eq!(count(&p, "redelivered"), 0);
    assert_eq!(
        metric(
            &metrics,
            "sluice_messages_total{pipeline=\"swap\",outcome=\"succeeded\"}"
        ),
        Some(N as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            "sluice_plugin_reloads_total{pipeline=\"swap\",result=\"ok\"}"
        ),
        Some(10.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "sluice_plugin_reloads_total{pipeline=\"swap\",result=\"failed\"}"
        ),
        Some(2.0)
    );
    common::report("hot swap", N, seen.len(), 0, 0, dups);
}

fn file_pipeline(d: &Path, name: &str, plugin: &str, tag: &str, extra: &str) -> String {
    format!(
        r#"name = "{name}"
[source]
type = "file"
path = "{d}/data/{name}.in"
follow = true
[handler]
plugin = "{plugin}"
config = {{ tag = "{tag}" }}
[sink]
type = "file"
path = "{d}/data/{name}.out"
[dead_letter]
type = "file"
path = "{d}/data/{name}.dlq"
{extra}
"#,
        d = d.display(),
        plugin = common::plugin(plugin).display(),
    )
}

/// `sluice run DIR`: pipelines start, change, refuse an invalid change,
/// fail alone, and stop as their files come, change and go.
#[test]
fn pipeline_files_added_changed_and_removed_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pd = d.join("pipelines");
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(&[pd.to_str().unwrap()], port, &log);
    assert_eq!(pipelines(port)["pipelines"], serde_json::json!([]));
    let out = |n: &str| lines(&d.join(format!("data/{n}.out")));
    let input = |n: &str| d.join(format!("data/{n}.in"));

    // Added: a new file starts a pipeline.
    append(&input("p1"), "l1\nl2\nl3\n");
    std::fs::write(
        pd.join("p1.toml"),
        file_pipeline(d, "p1", "tagger", "one", ""),
    )
    .unwrap();
    wait_until("p1 to run", Duration::from_secs(30), || {
        out("p1").len() == 3
    });
    assert_eq!(out("p1"), ["one:l1", "one:l2", "one:l3"]);
    let p1 = pipeline(port, "p1").unwrap();
    assert_eq!(p1["state"], "running");
    let loaded = p1["plugin"]["loaded_at_unix_ms"].clone();

    // Changed: validated, the old drains, the new starts where the old left off.
    std::fs::write(
        pd.join("p1.toml"),
        file_pipeline(d, "p1", "tagger", "two", ""),
    )
    .unwrap();
    wait_until("p1 to be replaced", Duration::from_secs(30), || {
        pipeline(port, "p1")
            .is_some_and(|p| p["plugin"]["loaded_at_unix_ms"] != loaded && p["state"] == "running")
    });
    append(&input("p1"), "l4\nl5\n");
    wait_until("p1's new lines", Duration::from_secs(30), || {
        out("p1").len() == 5
    });
    assert_eq!(
        out("p1")[3..],
        ["two:l4", "two:l5"],
        "nothing repeated, new version"
    );

    // Changed to something invalid: refused with file, line and key; p1 runs on.
    let before = pipeline(port, "p1").unwrap();
    std::fs::write(
        pd.join("p1.toml"),
        file_pipeline(
            d,
            "p1",
            "tagger",
            "three",
            "[retry]\nmax_attempts = \"many\"\ncolour = 1\n",
        ),
    )
    .unwrap();
    let mut errors = String::new();
    wait_until(
        "the invalid file to be reported",
        Duration::from_secs(30),
        || {
            let all = pipelines(port);
            errors = all["invalid_files"]
                .as_array()
                .and_then(|a| a.first())
                .map(|e| e["errors"].as_str().unwrap_or("").to_string())
                .unwrap_or_default();
            !errors.is_empty()
        },
    );
    eprintln!("[live pipelines] invalid change refused:\n{errors}");
    assert!(
        errors.contains("p1.toml") && errors.contains("max_attempts") && errors.contains("colour"),
        "{errors}"
    );
    assert!(errors.contains("line"), "{errors}");
    let after = pipeline(port, "p1").unwrap();
    assert_eq!(
        after["plugin"]["loaded_at_unix_ms"], before["plugin"]["loaded_at_unix_ms"],
        "nothing changed"
    );
    assert_eq!(after["state"], "running");
    append(&input("p1"), "l6\n");
    wait_until(
        "p1 still running the old version",
        Duration::from_secs(30),
        || out("p1").len() == 6,
    );
    assert_eq!(out("p1")[5], "two:l6");

    // A second pipeline, and a third that fails by policy: the others run on.
    append(&input("p2"), "x1\n");
    std::fs::write(
        pd.join("p2.toml"),
        file_pipeline(d, "p2", "tagger", "p2", ""),
    )
    .unwrap();
    append(&input("p3"), "ok\nbad\n");
    std::fs::write(
        pd.join("p3.toml"),
        file_pipeline(d, "p3", "fatal-on", "", "[errors]\nfatal = \"stop\"\n"),
    )
    .unwrap();
    wait_until("p2 to run and p3 to fail", Duration::from_secs(30), || {
        out("p2").len() == 1 && pipeline(port, "p3").is_some_and(|p| p["state"] == "failed")
    });
    let p3 = pipeline(port, "p3").unwrap();
    assert!(
        p3["error"]
            .as_str()
            .unwrap_or("")
            .contains("stopped by policy"),
        "{p3}"
    );
    assert_eq!(
        http(port, "GET", "/readyz", None).0,
        503,
        "a failed pipeline is not ready"
    );
    append(&input("p2"), "x2\n");
    append(&input("p1"), "l7\n");
    wait_until("the others to go on", Duration::from_secs(30), || {
        out("p2").len() == 2 && out("p1").len() == 7
    });

    // Removed: drained and stopped; the others go on.
    std::fs::remove_file(pd.join("p1.toml")).unwrap();
    std::fs::remove_file(pd.join("p3.toml")).unwrap();
    wait_until("p1 and p3 to stop", Duration::from_secs(30), || {
        let all = pipelines(port);
        let names: Vec<&str> = all["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        names == ["p2"] && all["invalid_files"] == serde_json::json!([])
    });
    assert_eq!(http(port, "GET", "/readyz", None).0, 200);
    append(&input("p1"), "l8\n");
    append(&input("p2"), "x3\n");
    wait_until("p2's line", Duration::from_secs(30), || {
        out("p2").len() == 3
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(out("p1").len(), 7, "a removed pipeline takes nothing more");
    assert_eq!(out("p2"), ["p2:x1", "p2:x2", "p2:x3"]);
    stop(proc, &log);
    eprintln!(
        "[live pipelines] add, change, invalid change, failure, remove: p1 {} lines, p2 {} lines",
        out("p1").len(),
        out("p2").len()
    );
}

/// The admin API while a pipeline runs: metrics match what was sent,
/// /pipelines shows the state, reload needs the token and reports failures.
#[test]
fn admin_api_metrics_pipelines_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let plugin: PathBuf = d.join("fatal-on.wasm");
    std::fs::copy(common::plugin("fatal-on"), &plugin).unwrap();
    let mut input = String::new();
    for i in 0..200 {
        input += &format!("ok-{i}\n");
        if i % 70 == 0 {
            input += &format!("bad-{i}\n");
        }
    }
    std::fs::write(d.join("data/m.in"), input).unwrap();
    let toml = file_pipeline(d, "m", "fatal-on", "", "").replace(
        &common::plugin("fatal-on").display().to_string(),
        &plugin.display().to_string(),
    );
    std::fs::write(d.join("m.toml"), toml).unwrap();
    std::fs::write(d.join("token"), "s3cret\n").unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(
        &[
            d.join("m.toml").to_str().unwrap(),
            "--admin-token-file",
            d.join("token").to_str().unwrap(),
        ],
        port,
        &log,
    );
    wait_until("every line", Duration::from_secs(30), || {
        pipeline(port, "m")
            .is_some_and(|p| count(&p, "succeeded") == 200 && count(&p, "dead_lettered") == 3)
    });
    assert_eq!(http(port, "GET", "/healthz", None), (200, "ok\n".into()));
    assert_eq!(http(port, "GET", "/readyz", None).0, 200);

    let (status, m) = http(port, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let v = |s: &str| metric(&m, s).unwrap_or_else(|| panic!("{s} missing from\n{m}"));
    assert_eq!(v("sluice_messages_received_total{pipeline=\"m\"}"), 203.0);
    assert_eq!(
        v("sluice_messages_total{pipeline=\"m\",outcome=\"succeeded\"}"),
        200.0
    );
    assert_eq!(
        v("sluice_messages_total{pipeline=\"m\",outcome=\"dead_lettered\"}"),
        3.0
    );
    assert_eq!(
        v("sluice_messages_total{pipeline=\"m\",outcome=\"dropped\"}"),
        0.0
    );
    assert_eq!(
        v("sluice_failures_total{pipeline=\"m\",class=\"fatal\"}"),
        3.0
    );
    assert_eq!(
        v("sluice_failures_total{pipeline=\"m\",class=\"trap\"}"),
        0.0
    );
    assert_eq!(v("sluice_dead_letters_total{pipeline=\"m\"}"), 3.0);
    assert_eq!(v("sluice_outputs_total{pipeline=\"m\"}"), 200.0);
    assert_eq!(
        v("sluice_handler_duration_seconds_count{pipeline=\"m\"}"),
        203.0
    );
    assert_eq!(
        v("sluice_handler_duration_seconds_bucket{pipeline=\"m\",le=\"+Inf\"}"),
        203.0
    );
    assert!(v("sluice_fuel_used_total{pipeline=\"m\"}") > 0.0);
    assert_eq!(v("sluice_guest_log_dropped_total{pipeline=\"m\"}"), 0.0);
    assert_eq!(v("sluice_log_lines_dropped_total"), 0.0);
    assert_eq!(v("sluice_in_flight{pipeline=\"m\"}"), 0.0);
    assert_eq!(v("sluice_breaker_state{pipeline=\"m\"}"), 0.0);
    assert_eq!(v("sluice_pipeline_up{pipeline=\"m\"}"), 1.0);
    assert!(m.contains("# TYPE sluice_handler_duration_seconds histogram"));
    eprintln!(
        "[admin] sent 203 (200 good, 3 bad): metrics received 203, succeeded 200, dead_lettered 3, fatal 3"
    );

    let p = pipeline(port, "m").unwrap();
    assert_eq!(p["state"], "running");
    assert_eq!(p["breaker"], "closed");
    assert_eq!(p["failures"]["fatal"], 3);
    assert_eq!(p["in_flight"], 0);
    // The last of the three failures, alone: its class, then its message.
    let last_error = p["last_error"].as_str().unwrap_or("");
    assert!(last_error.starts_with("fatal: "), "{p}");
    assert_eq!(last_error.matches("refused: bad-").count(), 1, "{p}");
    let digest = p["plugin"]["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));

    // Reload: the token is required, and a good reload answers the digest.
    assert_eq!(http(port, "POST", "/pipelines/m/reload", None).0, 401);
    assert_eq!(
        http(port, "POST", "/pipelines/m/reload", Some("wrong")).0,
        401
    );
    let (status, body) = http(port, "POST", "/pipelines/m/reload", Some("s3cret"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["digest"],
        digest.as_str()
    );
    assert_eq!(
        http(port, "POST", "/pipelines/nope/reload", Some("s3cret")).0,
        404
    );

    // A broken plugin file: 422 with the reason; the old version runs on.
    std::fs::write(&plugin, b"\0asm garbage").unwrap();
    let (status, body) = http(port, "POST", "/pipelines/m/reload", Some("s3cret"));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("fatal-on.wasm"), "{body}");
    let p = pipeline(port, "m").unwrap();
    assert_eq!(p["plugin"]["digest"], digest.as_str());
    assert!(p["last_reload_error"].as_str().is_some());
    append(&d.join("data/m.in"), "ok-late\n");
    wait_until(
        "the old version to handle a new line",
        Duration::from_secs(30),
        || pipeline(port, "m").is_some_and(|p| count(&p, "succeeded") == 201),
    );
    // A good version again: the old failure no longer describes what runs.
    std::fs::copy(common::plugin("fatal-on"), &plugin).unwrap();
    let (status, body) = http(port, "POST", "/pipelines/m/reload", Some("s3cret"));
    assert_eq!(status, 200, "{body}");
    let p = pipeline(port, "m").unwrap();
    assert!(p["last_reload_error"].is_null(), "{p}");
    let (_, m) = http(port, "GET", "/metrics", None);
    assert!(
        metric(
            &m,
            "sluice_plugin_reloads_total{pipeline=\"m\",result=\"ok\"}"
        ) >= Some(1.0)
    );
    assert!(
        metric(
            &m,
            "sluice_plugin_reloads_total{pipeline=\"m\",result=\"failed\"}"
        ) >= Some(1.0)
    );
    stop(proc, &log);
}

/// The children of `pid` (every thread's), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether `pid` is gone (or a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// A plugin that takes long to compile being swapped in holds nothing
/// else: a pipeline file added meanwhile starts, the admin API reloads
/// another pipeline, and SIGTERM ends the process at once (the compiler
/// child killed), exit 0.
#[test]
fn a_slow_plugin_load_holds_neither_other_pipelines_nor_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pd = d.join("pipelines");
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let out = |n: &str| lines(&d.join(format!("data/{n}.out")));
    let input = |n: &str| d.join(format!("data/{n}.in"));
    let wasm = d.join("p1.wasm");
    std::fs::copy(common::plugin("tagger"), &wasm).unwrap();
    let p1 = file_pipeline(d, "p1", "tagger", "one", "").replace(
        &format!("plugin = \"{}\"", common::plugin("tagger").display()),
        &format!("plugin = \"{}\"\ncompile_timeout = \"10m\"", wasm.display()),
    );
    assert!(p1.contains("compile_timeout"));
    append(&input("p1"), "l1\n");
    std::fs::write(pd.join("p1.toml"), p1).unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let mut proc = spawn(&[pd.to_str().unwrap()], port, &log);
    wait_until("p1 to run", Duration::from_secs(30), || {
        out("p1") == ["one:l1"]
    });

    // Swap in a plugin that takes Cranelift ~16 s (it would then be refused).
    let bomb = common::bomb::component(common::bomb::SLOW);
    install(&bomb, &wasm);
    let pid = proc.pid();
    wait_until(
        "the compiler child to start",
        Duration::from_secs(10),
        || !children(pid).is_empty(),
    );
    let compilers = children(pid);
    let started = Instant::now();

    append(&input("p2"), "m1\n");
    std::fs::write(
        pd.join("p2.toml"),
        file_pipeline(d, "p2", "tagger", "two", ""),
    )
    .unwrap();
    wait_until(
        "p2 to start while p1's plugin compiles",
        Duration::from_secs(10),
        || out("p2") == ["two:m1"],
    );
    let (status, body) = http(port, "POST", "/pipelines/p2/reload", None);
    assert_eq!(status, 200, "{body}");
    let p1 = pipeline(port, "p1").unwrap();
    assert_eq!(
        p1["reloads"],
        serde_json::json!({"ok": 0, "failed": 0}),
        "still compiling"
    );
    assert_eq!(p1["state"], "running");
    assert!(
        compilers.iter().all(|c| !gone(*c)),
        "the compiler is still running"
    );
    assert!(started.elapsed() < Duration::from_secs(12));

    proc.signal("TERM");
    let stopping = Instant::now();
    let code = proc.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "clean exit on SIGTERM; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "exited after {:?}",
        stopping.elapsed()
    );
    wait_until("the compiler to be killed", Duration::from_secs(5), || {
        compilers.iter().all(|c| gone(*c))
    });
}

/// A plugin file changed again while its previous version still compiles:
/// the pending load is dropped (its compiler killed, no failure counted)
/// and the newer version is swapped in without waiting for it.
#[test]
fn a_newer_plugin_supersedes_a_pending_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pd = d.join("pipelines");
    std::fs::create_dir_all(&pd).unwrap();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let wasm = d.join("p.wasm");
    std::fs::copy(common::plugin("tagger"), &wasm).unwrap();
    let text = file_pipeline(d, "p", "tagger", "one", "").replace(
        &format!("plugin = \"{}\"", common::plugin("tagger").display()),
        &format!("plugin = \"{}\"\ncompile_timeout = \"10m\"", wasm.display()),
    );
    append(&d.join("data/p.in"), "l1\n");
    std::fs::write(pd.join("p.toml"), text).unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(&[pd.to_str().unwrap()], port, &log);
    wait_until("p to run", Duration::from_secs(30), || {
        pipeline(port, "p").is_some_and(|p| p["state"] == "running")
    });

    install(&common::bomb::component(common::bomb::SLOW), &wasm);
    let pid = proc.pid();
    wait_until(
        "the compiler child to start",
        Duration::from_secs(10),
        || !children(pid).is_empty(),
    );
    let compilers = children(pid);
    let newer = std::fs::read(common::plugin("tag-a")).unwrap();
    install(&newer, &wasm);
    let digest = sluice::engine::cache::digest(&newer);
    wait_until("the newer version to run", Duration::from_secs(10), || {
        pipeline(port, "p").is_some_and(|p| p["plugin"]["digest"] == digest.as_str())
    });
    let p = pipeline(port, "p").unwrap();
    assert_eq!(p["reloads"], serde_json::json!({"ok": 1, "failed": 0}));
    wait_until(
        "the superseded compiler to be killed",
        Duration::from_secs(5),
        || compilers.iter().all(|c| gone(*c)),
    );
    stop(proc, &log);
}

/// `sluice run FILE` whose pipeline cannot start (its plugin refused at
/// load: memory below the module's minimum, a failing `init`) exits 1; so
/// does a file given beside a watched folder, at shutdown.
#[test]
fn run_exits_1_when_a_pipeline_file_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("service")).unwrap();
    for (name, plugin, extra) in [
        ("small", "echo", "memory = \"64KiB\""),
        ("loud", "log-parser", "config = { min_level = \"loud\" }"),
    ] {
        append(&d.join(format!("data/{name}.in")), "x\n");
        let text = format!(
            r#"name = "{name}"
[source]
type = "file"
path = "{d}/data/{name}.in"
[handler]
plugin = "{plugin}"
{extra}
[sink]
type = "file"
path = "{d}/data/{name}.out"
[dead_letter]
type = "file"
path = "{d}/data/{name}.dlq"
"#,
            d = d.display(),
            plugin = common::plugin(plugin).display(),
        );
        let file = d.join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        let (code, _, stderr) = common::run_sluice(&["run", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(stderr.contains("failed to start"), "{name}: {stderr}");
    }

    // Beside a folder the process is a service, until SIGTERM: then the
    // file's failure is its exit code.
    let port = common::free_port();
    let log = d.join("sluice.log");
    let mut proc = spawn(
        &[
            d.join("service").to_str().unwrap(),
            d.join("loud.toml").to_str().unwrap(),
        ],
        port,
        &log,
    );
    wait_until("loud.toml to be refused", Duration::from_secs(30), || {
        pipelines(port)["invalid_files"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    proc.signal("TERM");
    assert_eq!(proc.wait_timeout(Duration::from_secs(30)), Some(1));
}

/// A pipeline whose workers would not fit in the process's instance pool
/// (`--max-instances`) is refused with the reason — it once started with
/// workers waiting for an instance forever, and said it was ready — and
/// starts once another pipeline leaves room.
#[test]
fn a_pipeline_that_does_not_fit_the_instance_pool_waits_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("p")).unwrap();
    let with = |name: &str, n: usize| {
        file_pipeline(d, name, "tagger", name, "")
            .replace("[handler]\n", &format!("[handler]\nconcurrency = {n}\n"))
    };
    std::fs::write(d.join("data/a.in"), "").unwrap();
    std::fs::write(d.join("data/b.in"), "one\n").unwrap();
    std::fs::write(d.join("p/a.toml"), with("a", 3)).unwrap();
    std::fs::write(d.join("p/b.toml"), with("b", 2)).unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(
        &[d.join("p").to_str().unwrap(), "--max-instances", "4"],
        port,
        &log,
    );
    let mut errors = String::new();
    wait_until(
        "a to run and b to be refused",
        Duration::from_secs(60),
        || {
            let all = pipelines(port);
            errors = all["invalid_files"].to_string();
            pipeline(port, "a").is_some_and(|p| p["state"] == "running")
                && errors.contains("b.toml")
        },
    );
    assert!(
        errors.contains("handler.concurrency") && errors.contains("needs 2"),
        "{errors}"
    );
    assert!(pipeline(port, "b").is_none(), "b must not run");
    // a leaves: b fits now and starts.
    std::fs::remove_file(d.join("p/a.toml")).unwrap();
    wait_until("b to start", Duration::from_secs(60), || {
        pipeline(port, "b").is_some_and(|p| p["state"] == "running")
    });
    wait_until("b's line handled", Duration::from_secs(30), || {
        lines(&d.join("data/b.out")).len() == 1
    });
    assert_eq!(pipelines(port)["invalid_files"], serde_json::json!([]));
    stop(proc, &log);
}

/// Open descriptors of process `pid`.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Clients that connect to the admin API and never finish a request hold at
/// most `MAX_CONNECTIONS` descriptors, each for at most the header timeout
/// (once they held one each, for good); requests still get answers, and the
/// bearer scheme is matched without regard to case.
#[test]
fn silent_admin_clients_cannot_hold_the_processs_descriptors() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("p")).unwrap();
    std::fs::write(d.join("data/a.in"), "").unwrap();
    std::fs::write(d.join("p/a.toml"), file_pipeline(d, "a", "tagger", "a", "")).unwrap();
    std::fs::write(d.join("token"), "s3cret\n").unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(
        &[
            d.join("p").to_str().unwrap(),
            "--admin-token-file",
            d.join("token").to_str().unwrap(),
        ],
        port,
        &log,
    );
    wait_until("a to run", Duration::from_secs(60), || {
        pipeline(port, "a").is_some_and(|p| p["state"] == "running")
    });
    let base = descriptors(proc.pid());
    // 200 clients: half send nothing, half half a request line.
    let mut silent: Vec<std::net::TcpStream> = (0..200)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            if i % 2 == 1 {
                let _ = s.write_all(b"GET /metr");
            }
            s
        })
        .collect();
    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(2) {
        most = most.max(descriptors(proc.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("descriptors: {base} before, at most {most} with 200 silent clients");
    assert!(
        most <= base + 64 + 8,
        "{most} descriptors with 200 silent clients ({base} before)"
    );
    // The first 64 are closed by the server once their headers are late.
    for s in silent.iter_mut().take(64) {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    drop(silent);
    // Served again, and `bearer` in any case.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /pipelines/a/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: bearer s3cret\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop(proc, &log);
}

/// Files that never end or are not files: a FIFO or `/dev/zero` as a
/// pipeline file or a plugin is refused at once with what it is (`check`
/// once hung on a FIFO and read `/dev/zero` into gigabytes); in a watched
/// folder, a `*.toml` that is a FIFO, a folder or a dangling link is listed
/// in `invalid_files`, and a bad edit reverted leaves no stale entry.
#[test]
fn files_that_are_not_regular_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("p")).unwrap();
    let mkfifo = |p: &Path| {
        assert!(
            std::process::Command::new("mkfifo")
                .arg(p)
                .status()
                .unwrap()
                .success()
        );
    };
    // `sluice check` on a FIFO, and on a pipeline whose plugin is /dev/zero.
    mkfifo(&d.join("fifo-pipeline.toml"));
    let zero = file_pipeline(d, "z", "tagger", "z", "")
        .replace(&common::plugin("tagger").display().to_string(), "/dev/zero");
    std::fs::write(d.join("zero.toml"), zero).unwrap();
    let start = Instant::now();
    for (file, what) in [("fifo-pipeline.toml", "a FIFO"), ("zero.toml", "a device")] {
        let (code, _, err) = common::run_sluice(&["check", d.join(file).to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(what), "{file}: {err}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );

    // A watched folder.
    std::fs::write(d.join("data/a.in"), "").unwrap();
    let good = file_pipeline(d, "a", "tagger", "a", "");
    std::fs::write(d.join("p/a.toml"), &good).unwrap();
    mkfifo(&d.join("p/fifo.toml"));
    std::fs::create_dir(d.join("p/folder.toml")).unwrap();
    std::os::unix::fs::symlink(d.join("nowhere"), d.join("p/dangling.toml")).unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(&[d.join("p").to_str().unwrap()], port, &log);
    let mut invalid = String::new();
    wait_until("the three to be listed", Duration::from_secs(60), || {
        invalid = pipelines(port)["invalid_files"].to_string();
        ["fifo.toml", "folder.toml", "dangling.toml"]
            .iter()
            .all(|f| invalid.contains(f))
            && pipeline(port, "a").is_some_and(|p| p["state"] == "running")
    });
    assert!(
        invalid.contains("a FIFO") && invalid.contains("a folder"),
        "{invalid}"
    );
    // A bad edit of a.toml, then the good text again: no stale entry.
    std::fs::remove_file(d.join("p/fifo.toml")).unwrap();
    std::fs::remove_dir(d.join("p/folder.toml")).unwrap();
    std::fs::remove_file(d.join("p/dangling.toml")).unwrap();
    std::fs::write(d.join("p/a.toml"), format!("{good}\ncolour = 1\n")).unwrap();
    wait_until("the bad edit to be listed", Duration::from_secs(30), || {
        pipelines(port)["invalid_files"]
            .to_string()
            .contains("colour")
    });
    std::fs::write(d.join("p/a.toml"), &good).unwrap();
    wait_until("invalid_files to empty", Duration::from_secs(30), || {
        pipelines(port)["invalid_files"] == serde_json::json!([])
    });
    stop(proc, &log);
}

/// A pipeline that cannot load or start because the process is out of file
/// descriptors (EMFILE) is tried again, backing off, and runs once
/// descriptors are free again (it stayed failed until its file changed).
#[test]
fn a_pipeline_short_of_descriptors_starts_once_they_are_free() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("p")).unwrap();
    std::fs::write(d.join("data/b.in"), "one\n").unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(&[d.join("p").to_str().unwrap()], port, &log);
    let pid = proc.pid().to_string();
    let prlimit = |soft: &str| {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .output()
            .expect("prlimit (util-linux)");
        assert!(out.status.success(), "{out:?}");
    };
    // Room for the pipeline file's text, not for its plugin's compiler or
    // its files.
    prlimit(&(descriptors(proc.pid()) + 2).to_string());
    std::fs::write(d.join("p/b.toml"), file_pipeline(d, "b", "tagger", "b", "")).unwrap();
    wait_until(
        "the pipeline to run out of descriptors",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Too many open files")),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(lines(&d.join("data/b.out")).is_empty(), "b ran while short");
    prlimit("4096");
    wait_until("b's line handled", Duration::from_secs(90), || {
        lines(&d.join("data/b.out")).len() == 1
    });
    assert_eq!(pipelines(port)["invalid_files"], serde_json::json!([]));
    stop(proc, &log);
}

/// `/readyz` answers 200 only once every pipeline given runs and consumes:
/// never while `/pipelines` is still empty or a plugin still compiles
/// (an empty compile cache makes that last a while), for a file named on
/// the command line and for a watched folder alike.
#[test]
fn ready_only_once_every_pipeline_given_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("folder")).unwrap();
    std::fs::write(d.join("data/given.in"), "a\n").unwrap();
    std::fs::write(d.join("data/watched.in"), "a\n").unwrap();
    std::fs::write(
        d.join("given.toml"),
        file_pipeline(d, "given", "tagger", "g", ""),
    )
    .unwrap();
    std::fs::write(
        d.join("folder/watched.toml"),
        file_pipeline(d, "watched", "tagger", "w", ""),
    )
    .unwrap();
    for (args, names) in [
        (vec![d.join("given.toml")], vec!["given"]),
        (vec![d.join("folder")], vec!["watched"]),
    ] {
        let args: Vec<&str> = args.iter().map(|p| p.to_str().unwrap()).collect();
        let cache = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let log = d.join("sluice.log");
        let proc = common::admin::spawn_env(
            &args,
            port,
            &log,
            &[("SLUICE_CACHE_DIR", cache.path().to_str().unwrap())],
        );
        let (mut early, start) = (0, Instant::now());
        loop {
            let (status, body) = http(port, "GET", "/readyz", None);
            if status == 200 {
                for name in &names {
                    let p = pipeline(port, name);
                    assert!(
                        p.as_ref()
                            .is_some_and(|p| p["state"] == "running" && p["ready"] == true),
                        "{args:?}: /readyz said ready while {name} is {p:?}"
                    );
                }
                break;
            }
            assert_eq!(status, 503, "{body}");
            early += 1;
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "never ready: {body}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("[readyz] {args:?}: 503 {early} times, then ready with its pipelines running");
        assert!(early > 0, "the plugin compiled before the first probe");
        stop(proc, &log);
    }
}

/// How a dedup case identifies a message, and how its republished copy
/// differs from the original (only in what the id is not made of).
struct DedupCase {
    by: &'static str,
    /// The payload of message `i`, first copy and republished copy.
    payload: fn(usize, bool) -> String,
    /// The headers of message `i` (the same on both copies).
    headers: fn(usize) -> Vec<(&'static str, String)>,
}

static DEDUP_CASES: [DedupCase; 3] = [
    DedupCase {
        by: "key",
        payload: |i, again| format!("key{i:03}-{}", if again { "again" } else { "first" }),
        headers: |i| vec![("sluice-key", format!("k{i}"))],
    },
    DedupCase {
        by: "payload",
        payload: |i, _| format!("payload{i:03}"),
        headers: |_| Vec::new(),
    },
    DedupCase {
        by: "header:Order-Id",
        payload: |i, again| format!("header{i:03}-{}", if again { "again" } else { "first" }),
        headers: |i| vec![("Order-Id", format!("o{i}"))],
    },
];

/// `[dedup]` end to end through `sluice run`, for `key`, `payload` and
/// `header:NAME`: every message published twice (the copy after the first
/// was settled) and, with the JetStream connection slowed past `ack_wait`,
/// redelivered by the server after it was handled. Each message gives one
/// output; `deduplicated` counts every copy that was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_drops_republished_and_redelivered_duplicates() {
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("pipelines")).unwrap();
    let u = common::unique("dedup").replace('-', "_");
    // The server's redeliveries are provoked by slowing this proxy.
    let proxy = common::proxy::Proxy::start(4222);
    let js = jetstream::new(
        async_nats::connect(URL)
            .await
            .expect("NATS on 127.0.0.1:4222"),
    );
    let echo = common::plugin("echo");
    let name = |c: &DedupCase| format!("dedup_{}", c.by.replace([':', '-'], "_"));
    for c in &DEDUP_CASES {
        let n = name(c);
        js.get_or_create_stream(stream::Config {
            name: format!("{u}_{n}").to_uppercase(),
            subjects: vec![format!("{u}.{n}")],
            ..Default::default()
        })
        .await
        .unwrap();
        std::fs::write(
            d.join(format!("pipelines/{n}.toml")),
            format!(
                r#"name = "{n}"
[source]
type = "jetstream"
url = "nats://{proxy}"
stream = "{stream}"
durable = "{n}"
ack_wait = "1s"
in_progress_every = "0s"
[handler]
plugin = "{echo}"
[sink]
type = "file"
path = "{d}/{n}.out"
[dead_letter]
type = "file"
path = "{d}/{n}.dlq"
[dedup]
by = "{by}"
"#,
                proxy = proxy.addr(),
                stream = format!("{u}_{n}").to_uppercase(),
                echo = echo.display(),
                d = d.display(),
                by = c.by,
            ),
        )
        .unwrap();
    }
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(&[d.join("pipelines").to_str().unwrap()], port, &log);
    tokio::task::block_in_place(|| {
        wait_until("the pipelines to be ready", Duration::from_secs(60), || {
            http(port, "GET", "/readyz", None).0 == 200
        })
    });
    let publish = |c: &'static DedupCase, range: std::ops::Range<usize>, again: bool| {
        let js = js.clone();
        let subject = format!("{u}.{}", name(c));
        async move {
            for i in range {
                let mut h = async_nats::HeaderMap::new();
                for (k, v) in (c.headers)(i) {
                    h.insert(k, v.as_str());
                }
                js.publish_with_headers(subject.clone(), h, (c.payload)(i, again).into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        }
    };
    let settled = |n: &str, want: u64, dups: u64| {
        tokio::task::block_in_place(|| {
            wait_until(
                &format!("{n}: {want} succeeded, {dups} deduplicated"),
                Duration::from_secs(60),
                || {
                    pipeline(port, n).is_some_and(|p| {
                        count(&p, "succeeded") >= want && count(&p, "deduplicated") >= dups
                    })
                },
            )
        })
    };

    // Republished: the copy arrives after the original was settled.
    for c in &DEDUP_CASES {
        publish(c, 0..N, false).await;
        settled(&name(c), N as u64, 0);
        publish(c, 0..N, true).await;
        settled(&name(c), N as u64, N as u64);
    }

    // Redelivered: every byte through the proxy waits 1.5 s, longer than
    // `ack_wait`, so the server sends each message again before the ack of
    // the handled copy reaches it.
    proxy.delay(Duration::from_millis(1500));
    for c in &DEDUP_CASES {
        publish(c, N..2 * N, false).await;
    }
    for c in &DEDUP_CASES {
        settled(&name(c), 2 * N as u64, 2 * N as u64);
    }
    // Let the last redeliveries arrive and be dropped before counting.
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.delay(Duration::ZERO);

    for c in &DEDUP_CASES {
        let n = name(c);
        let p = tokio::task::block_in_place(|| pipeline(port, &n)).unwrap();
        let out = lines(&d.join(format!("{n}.out")));
        let want: Vec<String> = (0..2 * N).map(|i| (c.payload)(i, false)).collect();
        let mut got = out.clone();
        got.sort();
        assert_eq!(got, want, "{n}: one output per message, the first copy's");
        assert_eq!(count(&p, "succeeded"), 2 * N as u64, "{n}: {p}");
        let dups = count(&p, "deduplicated");
        assert!(
            dups >= 2 * N as u64,
            "{n}: every republished and every redelivered copy dropped: {p}"
        );
        assert_eq!(count(&p, "dead_lettered"), 0, "{n}: {p}");
        assert!(lines(&d.join(format!("{n}.dlq"))).is_empty());
        eprintln!(
            "[dedup {}] {N} republished copies and {} redeliveries dropped, {} copies handed back while their original was in flight",
            c.by,
            dups - N as u64,
            count(&p, "redelivered")
        );
        common::report(
            &format!("dedup {}", c.by),
            2 * N,
            out.len(),
            0,
            0,
            out.len().saturating_sub(2 * N),
        );
    }
    stop(proc, &log);
    for c in &DEDUP_CASES {
        let _ = js
            .delete_stream(format!("{u}_{}", name(c)).to_uppercase())
            .await;
    }
}

/// `$SLUICE_ADMIN_TOKEN` guards the admin API as `--admin-token-file` does
/// (surrounding whitespace ignored): a reload without the token or with a
/// wrong one is 401, with it 200; reading stays open; the token never
/// reaches the log. An empty token stops `sluice run` before it starts.
#[test]
fn admin_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("data")).unwrap();
    std::fs::write(d.join("data/t.in"), "one\n").unwrap();
    let file = d.join("t.toml");
    std::fs::write(&file, file_pipeline(d, "t", "tagger", "x", "")).unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = common::admin::spawn_env(
        &[file.to_str().unwrap()],
        port,
        &log,
        &[("SLUICE_ADMIN_TOKEN", " env-s3cret\n")],
    );
    wait_until("the pipeline to be ready", Duration::from_secs(60), || {
        http(port, "GET", "/readyz", None).0 == 200 && pipeline(port, "t").is_some()
    });
    assert_eq!(http(port, "POST", "/pipelines/t/reload", None).0, 401);
    assert_eq!(
        http(port, "POST", "/pipelines/t/reload", Some("env-s3cre")).0,
        401
    );
    let (status, body) = http(port, "POST", "/pipelines/t/reload", Some("env-s3cret"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(port, "GET", "/pipelines", None).0, 200);
    assert_eq!(http(port, "GET", "/metrics", None).0, 200);
    stop(proc, &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("env-s3cret"), "token in the log:\n{text}");

    let admin = format!("127.0.0.1:{}", common::free_port());
    let (code, _, err) = common::run_sluice_env(
        &["run", file.to_str().unwrap(), "--admin", &admin],
        &[("SLUICE_ADMIN_TOKEN", "  \n")],
    );
    assert_ne!(code, 0, "an empty token must not start: {err}");
    assert!(err.contains("admin token is empty"), "{err}");
}
