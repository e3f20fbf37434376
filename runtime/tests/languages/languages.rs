//! The same `log-parser` handler written in Rust, Python, JavaScript, C and Go
//! (`plugins/log-parser*/`): the same input file through the same pipeline must
//! give byte-identical outputs and dead letters (apart from the plugin digest),
//! the same `init` refusal, and every language stays inside fuel, timeout and
//! memory budgets (hostile variants for C and Python).
//!
//! Each language's `.wasm` is built by its `plugins/log-parser-<lang>/build.sh`
//! when missing or older than its sources. A missing tool chain fails the test
//! with an install hint (`bash .ci/install-guest-toolchains.sh`); it never skips.
//!
//! Runs in the default (debug) test run: the workspace optimises the compiler
//! crates in the dev profile, so compiling the large Python/JS components
//! takes seconds, not minutes. The table in `docs/handlers.md` comes from the ignored test
//! at the end:
//! `cargo test --release -p sluice --test languages -- --ignored --nocapture languages_table`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sluice::config::{self, PipelineConfig};
use sluice::engine::{Engine, EngineOptions, Plugin, PluginError, PluginSpec, Worker};
use sluice::failure::FailureClass;
use sluice::message::Message;

/// Language name and plugin (file stem in `plugins/dist`); Rust is the reference.
const LANGS: [(&str, &str); 5] = [
    ("rust", "log-parser"),
    ("python", "log-parser-python"),
    ("javascript", "log-parser-js"),
    ("c", "log-parser-c"),
    ("go", "log-parser-go"),
];

/// Lines that exercise every branch of the parser: fields, escapes, time
/// formats, each error message, non-ASCII text and invalid UTF-8.
fn input() -> Vec<u8> {
    let lines: Vec<&[u8]> = vec![
        b"2026-11-26T09:15:02.123Z ERROR [payments] charge failed: card declined user=42 amount=19.99",
        b"2026-11-26T09:15:02Z info [api] ok",
        b"2026-11-26T09:15:02+05:30 Warn [api-gw] slow upstream ms=1200 ms=1300 path=/v1/x",
        b"2026-11-26t09:15:02.5z DEBUG [db] query k=v=w empty= =nokey",
        b"2024-02-29T23:59:60Z TRACE [cal] leap second on a leap day",
        b"2026-11-26T09:15:02Z FATAL [core] \"quoted\" back\\slash tab\there ctl\x01\x7f end",
        b"2026-11-26T09:15:02Z INFO [caf\xc3\xa9] na\xc3\xafve \xe2\x9c\x93 emoji \xf0\x9f\x9a\x80 k\xc3\xa9y=v",
        b"   2026-11-26T09:15:02Z   ERROR   [spaced]   lots   of   space   a=1   ",
        b"2026-11-26T09:15:02Z INFO [api] only=fields",
        b"2026-11-26T09:15:02Z INFO [api]",
        b"2026-11-26T09:15:02Z INFO [my service] name with a space\xe3\x80\x80ideographic=space",
        b"2026-11-26T09:15:02Z INFO [api] nbsp\xc2\xa0x=1 crlf\r",
        // Errors, each one a different message.
        b"hello world",
        b"2023-02-29T10:00:00Z INFO [api] not a leap year",
        b"2026-13-01T10:00:00Z INFO [api] month 13",
        b"2026-11-26T24:00:00Z INFO [api] hour 24",
        b"2026-11-26T09:15:02. INFO [api] empty fraction",
        b"2026-11-26T09:15:02+5:30 INFO [api] short offset",
        b"2026-11-26T09:15:02Z LOUD [api] bad level",
        b"2026-11-26T09:15:02Z INFO",
        b"2026-11-26T09:15:02Z INFO api no brackets",
        b"2026-11-26T09:15:02Z INFO [api no close",
        b"2026-11-26T09:15:02Z INFO [  ] blank service",
        b"2026-11-26T09:15:02Z INFO [api]x glued",
        b"2026-11-26T09:15:02Z INFO [api]\"q\\\t\x02 glued with escapes",
        b"2026-11-26T09:15:02Z \xc3\xa9tat [api] non-ASCII level",
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx long token",
        b"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9 two-byte chars",
        b"2026-11-26T09:15:02Z INFO [api] bad \xff byte",
        b"2026-11-26T09:15:02Z INFO [api] surrogate \xed\xa0\x80",
        b"2026-11-26T09:15:02Z INFO [api] truncated \xe2\x9c",
        b"   \t ",
        b"2026-11-26T09:15:02Z WARN [tail] after the errors, still parsed",
    ];
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

static BUILD: Mutex<()> = Mutex::new(());

/// The newest modification time of the files under `dir` (not `node_modules`).
fn newest(dir: &Path) -> SystemTime {
    let mut t = SystemTime::UNIX_EPOCH;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return t;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.file_name()
            .is_some_and(|n| n == "node_modules" || n == "__pycache__")
        {
            continue;
        }
        let m = if p.is_dir() {
            newest(&p)
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        t = t.max(m);
    }
    t
}

/// The SDK folder of a language.
fn sdk_dir(lang: &str) -> PathBuf {
    let short = if lang == "javascript" { "js" } else { lang };
    common::repo().join("guest-sdk").join(short)
}

/// `plugins/dist/<stem>.wasm` for a language, (re)built by its build script when
/// missing or older than its sources. Panics with an install hint when the
/// tool chain is missing.
fn built(lang: &str, stem: &str) -> PathBuf {
    if lang == "rust" {
        return common::plugin(stem);
    }
    let base = stem.trim_end_matches("-hostile");
    let src = common::repo().join("plugins").join(base);
    let wasm = common::repo()
        .join("plugins/dist")
        .join(format!("{stem}.wasm"));
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = stamp(&wasm).is_some_and(|w| w >= newest(&src).max(newest(&sdk_dir(lang))));
    if !fresh {
        let t = Instant::now();
        let out = Command::new("bash")
            .arg(src.join("build.sh"))
            .output()
            .expect("run a build script");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "building the {lang} handler failed{}: {stderr}\n\
             Install the guest tool chains with `bash .ci/install-guest-toolchains.sh`.",
            if out.status.code() == Some(127) {
                " (tool chain missing)"
            } else {
                ""
            }
        );
        eprintln!("[{lang}] built {} in {:.1?}", wasm.display(), t.elapsed());
    }
    assert!(wasm.exists(), "{} missing after its build", wasm.display());
    wasm
}

fn pipeline_toml(d: &Path, plugin: &Path, config: &str) -> String {
    format!(
        r#"name = "lang"
[source]
type = "file"
path = "{d}/in.txt"
[handler]
plugin = "{plugin}"
timeout = "2s"
# One worker: outputs of different keys come in input order, so runs compare line by line.
concurrency = 1
[handler.config]
{config}
[sink]
type = "file"
path = "{d}/out.jsonl"
format = "envelope"
[dead_letter]
type = "file"
path = "{d}/dlq.jsonl"
"#,
        d = d.display(),
        plugin = plugin.display()
    )
}

fn load_pipeline(d: &Path, body: &str) -> PipelineConfig {
    let file = d.join("p.toml");
    std::fs::write(&file, body).expect("write the pipeline");
    config::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

/// Outputs (envelope lines) and dead letters without the digest header.
async fn run_file(engine: &Engine, plugin: &Path, config: &str, input: &[u8]) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("in.txt"), input).expect("write input");
    let cfg = load_pipeline(d, &pipeline_toml(d, plugin, config));
    let p = sluice::connect::build(&cfg, engine).await.expect("build");
    p.run(std::future::pending()).await.expect("run");
    let out = std::fs::read_to_string(d.join("out.jsonl")).unwrap_or_default();
    let dlq: Vec<String> = std::fs::read_to_string(d.join("dlq.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut e = sluice::envelope::decode(l).expect("a dead-letter envelope");
            // The digest differs by design; the time and the temp folder by run.
            e.headers.retain(|h| {
                !matches!(
                    h.key.as_str(),
                    "sluice-plugin-digest" | "sluice-failed-at" | "sluice-source-topic"
                )
            });
            format!("{:?} {:?} {:?} {:?}", e.topic, e.key, e.payload, e.headers)
        })
        .collect();
    (out, dlq.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_gives_identical_outputs_and_dead_letters() {
    let engine = common::engine();
    let input = input();
    for config in ["", "min_level = \" Info \""] {
        let mut reference: Option<(String, String)> = None;
        for (lang, stem) in LANGS {
            let wasm = built(lang, stem);
            let (out, dlq) = run_file(&engine, &wasm, config, &input).await;
            match &reference {
                None => {
                    assert!(out.lines().count() >= 8, "the reference produced {out}");
                    assert!(
                        dlq.lines().count() >= 18,
                        "the reference dead-lettered {dlq}"
                    );
                    reference = Some((out.clone(), dlq.clone()));
                }
                Some((rout, rdlq)) => {
                    for (a, b) in rout.lines().zip(out.lines()) {
                        assert_eq!(a, b, "{lang} [{config}]: output differs from Rust's");
                    }
                    assert_eq!(rout, &out, "{lang} [{config}]: outputs differ from Rust's");
                    for (a, b) in rdlq.lines().zip(dlq.lines()) {
                        assert_eq!(a, b, "{lang} [{config}]: dead letter differs from Rust's");
                    }
                    assert_eq!(rdlq, &dlq, "{lang} [{config}]: dead letters differ");
                }
            }
            eprintln!(
                "[{lang}] config [{config}]: {} outputs, {} dead letters identical",
                out.lines().count(),
                dlq.lines().count()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_refuses_a_bad_min_level_the_same_way() {
    let engine = common::engine();
    let mut reference: Option<String> = None;
    for (lang, stem) in LANGS {
        let mut spec = PluginSpec::new(built(lang, stem));
        spec.config = vec![("min_level".into(), " lo\"ud\t ".into())];
        let err = match Plugin::load(&engine, spec).await {
            Err(PluginError::Init { message, .. }) => message,
            Err(e) => panic!("{lang}: expected an init refusal, got {e}"),
            Ok(_) => panic!("{lang}: a bad min_level was accepted"),
        };
        eprintln!("[{lang}] {err}");
        match &reference {
            None => {
                assert!(err.contains("unknown level \"lo\\\"ud\""), "{err}");
                reference = Some(err);
            }
            Some(r) => assert_eq!(r, &err, "{lang}"),
        }
    }
}

fn msg(payload: &str) -> Message {
    Message::new("t", payload.as_bytes().to_vec())
}

const GOOD: &str = "2026-11-26T09:15:02Z INFO [api] still fine";

/// Loads `stem` under the given budgets and returns a worker for it.
async fn worker(
    engine: &Engine,
    lang: &str,
    stem: &str,
    f: impl FnOnce(&mut PluginSpec),
) -> Worker {
    let mut spec = PluginSpec::new(built(lang, stem));
    f(&mut spec);
    let p = Plugin::load(engine, spec)
        .await
        .unwrap_or_else(|e| panic!("{lang}: {e}"));
    Worker::new(p)
}

async fn class_of(w: &mut Worker, payload: &str) -> Option<FailureClass> {
    w.handle(&msg(payload)).await.0.err().map(|f| f.class)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_c_and_python_handlers_are_stopped_by_every_budget() {
    let engine = common::engine();
    for (lang, stem) in [
        ("c", "log-parser-c-hostile"),
        ("python", "log-parser-python-hostile"),
    ] {
        // Timeout: plenty of fuel, a short deadline.
        let mut w = worker(&engine, lang, stem, |s| {
            s.fuel = u64::MAX / 4;
            s.timeout = Duration::from_millis(300);
        })
        .await;
        let t = Instant::now();
        assert_eq!(
            class_of(&mut w, "loop").await,
            Some(FailureClass::Timeout),
            "{lang}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{lang}: {:?}",
            t.elapsed()
        );
        assert!(
            w.handle(&msg(GOOD)).await.0.is_ok(),
            "{lang}: a fresh instance after the timeout"
        );

        // Fuel: a generous deadline, a small instruction budget.
        let mut w = worker(&engine, lang, stem, |s| {
            s.fuel = 50_000_000;
            s.timeout = Duration::from_secs(30);
        })
        .await;
        assert_eq!(
            class_of(&mut w, "loop").await,
            Some(FailureClass::Fuel),
            "{lang}"
        );
        assert!(
            w.handle(&msg(GOOD)).await.0.is_ok(),
            "{lang}: a fresh instance after fuel"
        );

        // Memory: the cap stops unbounded allocation.
        let mut w = worker(&engine, lang, stem, |s| {
            s.memory = 48 << 20;
            s.fuel = u64::MAX / 4;
            s.timeout = Duration::from_secs(10);
        })
        .await;
        assert_eq!(
            class_of(&mut w, "alloc").await,
            Some(FailureClass::Memory),
            "{lang}"
        );
        assert!(
            w.handle(&msg(GOOD)).await.0.is_ok(),
            "{lang}: a fresh instance after memory"
        );
        eprintln!("[{lang}] hostile: timeout, fuel and memory all stopped it");
    }
}

/// What one answer says, comparable across calls: the outputs' payloads or
/// the failure's class and text.
fn answer(r: &Result<Vec<sluice::message::Output>, sluice::failure::Failure>) -> String {
    match r {
        Ok(outs) => outs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.payload).into_owned())
            .collect::<Vec<_>>()
            .join("|"),
        Err(f) => format!("{:?}: {}", f.class, f.message),
    }
}

/// The C SDK's glue exports `handle-batch`: a batch gets the answers the same
/// messages get one per call, and a hostile message inside a batch fails
/// alone, with its own class, the messages before it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_handler_answers_a_batch_as_it_answers_single_calls() {
    let engine = common::engine();
    // Every field the glue lays out and frees, empty and not: keys, headers
    // with empty keys or values, timestamps, attempts, an empty payload —
    // all sent several times through the same instance, so a mislaid field
    // or a bad free shows as a wrong answer or a trap.
    let mut lines: Vec<Message> = input()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Message::new("t", l.to_vec()))
        .collect();
    lines.push(Message::new("t", Vec::new()));
    let lines: Vec<Message> = (0..6)
        .flat_map(|round| lines.clone().into_iter().map(move |m| (round, m)))
        .enumerate()
        .map(|(i, (round, mut m))| {
            m.topic = if i % 5 == 0 {
                String::new()
            } else {
                format!("topic-{i}")
            };
            m.key = match i % 3 {
                0 => None,
                1 => Some(bytes::Bytes::new()),
                _ => Some(bytes::Bytes::from(format!("key-{i}"))),
            };
            if i % 4 != 0 {
                m.headers = vec![
                    sluice::message::Header::new("h", ""),
                    sluice::message::Header::new("", format!("v{i}")),
                    sluice::message::Header::new(format!("x-{round}"), "y"),
                ];
            }
            m.timestamp_ms = (i % 2 == 0).then_some(1_700_000_000_000 + i as u64);
            m.attempt = 1 + round;
            m
        })
        .collect();
    let mut w = worker(&engine, "c", "log-parser-c", |_| {}).await;
    let mut single = Vec::new();
    for m in &lines {
        single.push(answer(&w.handle(m).await.0));
    }
    let mut batched = Vec::new();
    // Batches of 16 and a last one of what is left (at least 2: a single
    // message always goes through `handle`).
    let (head, tail) = lines.split_at(lines.len() - (lines.len() % 16).max(2));
    for chunk in head.chunks(16).chain([tail]) {
        let refs: Vec<&Message> = chunk.iter().collect();
        let answers = w.handle_batch(&refs).await;
        assert_eq!(
            answers.len(),
            chunk.len(),
            "every message of the batch answered"
        );
        batched.extend(answers.iter().map(|(r, _)| answer(r)));
    }
    assert_eq!(batched, single);
    let failed = single.iter().filter(|a| a.starts_with("Fatal")).count();
    assert!(failed >= 6 * 19, "{failed} lines refused: {single:#?}");
    eprintln!(
        "[c] {} lines in batches of 16: {} answered as single calls ({failed} refused)",
        lines.len(),
        batched.len()
    );

    // A loop in the middle of a batch: stopped on its own deadline, the
    // message before it answered, the instance replaced for the rest.
    let mut w = worker(&engine, "c", "log-parser-c-hostile", |s| {
        s.fuel = u64::MAX / 4;
        s.timeout = Duration::from_millis(300);
    })
    .await;
    let batch = [msg(GOOD), msg("loop"), msg(GOOD)];
    let refs: Vec<&Message> = batch.iter().collect();
    let answers = w.handle_batch(&refs).await;
    assert_eq!(answers.len(), 2, "answers up to the failing message");
    assert!(answers[0].0.is_ok(), "{:?}", answers[0].0);
    assert_eq!(
        answers[1].0.as_ref().err().map(|f| f.class),
        Some(FailureClass::Timeout)
    );
    assert!(
        w.handle(&batch[2]).await.0.is_ok(),
        "the rest on a fresh instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_language_runs_under_fuel_and_memory_caps() {
    let engine = common::engine();
    for (lang, stem) in LANGS {
        // A budget far too small for even one line.
        let mut w = worker(&engine, lang, stem, |_| {}).await;
        assert!(w.handle(&msg(GOOD)).await.0.is_ok(), "{lang}");
        let p = w.plugin().clone();
        // The Rust and C SDKs build the `batch-handler` world; the others get
        // one message per call and run as before.
        let batches = matches!(lang, "rust" | "c");
        assert_eq!(p.takes_batches(), batches, "{lang}: handle-batch");
        let two = [msg(GOOD), msg(GOOD)];
        let answered = w.handle_batch(&[&two[0], &two[1]]).await.len();
        assert_eq!(answered, if batches { 2 } else { 0 }, "{lang}");
        let mut spec = p.spec().clone();
        spec.fuel = 1_000;
        let small = Plugin::load(&engine, spec).await;
        // Loading runs `init` under the same budget; either way fuel stops it.
        match small {
            Ok(p) => {
                let mut w = Worker::new(p);
                assert_eq!(
                    class_of(&mut w, GOOD).await,
                    Some(FailureClass::Fuel),
                    "{lang}"
                );
            }
            Err(e) => assert!(e.to_string().contains("fuel"), "{lang}: {e}"),
        }
        // A memory cap below what the guest starts with refuses it.
        let mut spec = p.spec().clone();
        spec.memory = 64 << 10;
        match Plugin::load(&engine, spec).await {
            Err(e) => assert!(e.to_string().contains("memory"), "{lang}: {e}"),
            Ok(_) => panic!("{lang}: started within 64 KiB"),
        }
    }
}

/// Prints the table of `docs/handlers.md`: size, cold start (convert + compile), warm start
/// (compiled artifact from the disk cache) and messages/s through one pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
async fn languages_table() {
    const LINES: usize = 20_000;
    let mut input = Vec::new();
    let sample = input_sample();
    for i in 0..LINES {
        input.extend_from_slice(sample[i % sample.len()].as_bytes());
        input.push(b'\n');
    }
    println!("| language | component size | cold start | warm start | messages/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (lang, stem) in LANGS {
        let wasm = built(lang, stem);
        let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
        let cache = tempfile::tempdir().expect("tempdir");
        let opts = || EngineOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            ..Default::default()
        };
        let cold_engine = Engine::new(opts()).expect("engine");
        let t = Instant::now();
        let p = Plugin::load(&cold_engine, PluginSpec::new(&wasm))
            .await
            .expect("load");
        let cold = t.elapsed();
        assert!(!p.from_cache());
        drop((p, cold_engine));
        let engine = Engine::new(opts()).expect("engine");
        let t = Instant::now();
        let p = Plugin::load(&engine, PluginSpec::new(&wasm))
            .await
            .expect("load");
        let warm = t.elapsed();
        assert!(
            p.from_cache(),
            "{lang}: the second start loads from the cache"
        );
        drop(p);
        let t = Instant::now();
        let (out, _) = run_file(&engine, &wasm, "", &input).await;
        let rate = LINES as f64 / t.elapsed().as_secs_f64();
        assert_eq!(out.lines().count(), LINES, "{lang}");
        println!(
            "| {lang} | {:.1} KB | {:.0?} | {:.1?} | {:.0} |",
            size as f64 / 1000.0,
            cold,
            warm,
            rate
        );
    }
}

fn input_sample() -> Vec<&'static str> {
    vec![
        "2026-11-26T09:15:02.123Z ERROR [payments] charge failed: card declined user=42 amount=19.99",
        "2026-11-26T09:15:03Z INFO [api] GET /v1/orders status=200 ms=12",
        "2026-11-26T09:15:04+01:00 WARN [db] slow query table=orders ms=850",
        "2026-11-26T09:15:05Z DEBUG [cache] miss key=user:42",
    ]
}
