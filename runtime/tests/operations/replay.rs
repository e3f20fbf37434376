//! `sluice replay` through the real binary: dead-letter records from a file
//! (envelope format) and from a JetStream stream sent back through a
//! pipeline with filters, a SIGKILL in the middle of a file replay (nothing
//! lost, duplicates within the file source's bound), records that fail
//! again dead-lettered again with the replay named and attempts counted,
//! malformed records routed as `decode`, and `--dry-run` changing nothing.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One dead-letter record as the file dead letter writes it.
fn record(payload: &str, class: &str, extra: &str) -> String {
    format!(
        r#"{{"payload":"{payload}","headers":[["trace","t-{payload}"],["sluice-error-class","{class}"],["sluice-error-message","it failed"],["sluice-attempts","3"],["sluice-pipeline","orders"],["sluice-plugin-digest","sha256:0123abcd"],["sluice-source-topic","orders-in"],["sluice-failed-at","2026-11-30T10:00:00.000Z"]{extra}]}}"#
    )
}

fn replay_toml(d: &Path, plugin: &Path) -> std::path::PathBuf {
    let p = d.join("replay.toml");
    std::fs::write(
        &p,
        format!(
            r#"name = "orders"
[source]
type = "file"
path = "dlq.jsonl"
format = "envelope"
checkpoint = "dlq.replay-checkpoint"
[handler]
plugin = "{}"
[sink]
type = "file"
path = "out.txt"
[dead_letter]
type = "file"
path = "dlq-again.jsonl"
[errors]
fatal = "dead-letter"
"#,
            plugin.display()
        ),
    )
    .expect("write replay.toml");
    p
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn file_replay_survives_sigkill_and_replays_each_selected_record() {
    const N: usize = 40_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let mut dlq = String::new();
    let mut selected = Vec::new();
    for i in 0..N {
        // Every tenth record failed as `trap`: the filter leaves it out.
        let class = if i % 10 == 0 { "trap" } else { "fatal" };
        dlq.push_str(&record(&format!("m{i}"), class, ""));
        dlq.push('\n');
        if class == "fatal" {
            selected.push(format!("m{i}"));
        }
    }
    std::fs::write(d.join("dlq.jsonl"), dlq).expect("write dlq");
    let toml = replay_toml(d, &common::plugin("echo"));
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec!["replay".to_string(), toml.display().to_string()];
        a.extend(["--class", "fatal", "--idle", "2s"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    // First run: killed once some outputs were written.
    let mut child = common::Proc {
        child: Command::new(common::sluice_bin())
            .args(args(&[]))
            .env("SLUICE_CACHE_DIR", common::cache_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sluice replay"),
    };
    let out = d.join("out.txt");
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines(&out).len() < N / 8 {
        assert!(Instant::now() < deadline, "no outputs from the replay");
        assert!(
            child.child.try_wait().expect("wait").is_none(),
            "replay ended early"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.signal("KILL");
    child.wait_timeout(Duration::from_secs(10));
    let at_kill = lines(&out).len();
    assert!(
        at_kill < selected.len(),
        "the replay finished before the kill ({at_kill} outputs): the test proves nothing"
    );
    // Second run: picks up from the checkpoint and finishes.
    let a = args(&[]);
    let (code, stdout, stderr) =
        common::run_sluice(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Third run: nothing left.
    let (code, stdout, stderr) =
        common::run_sluice(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(": 0 record(s) replayed"), "{stdout}");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in lines(&out) {
        *seen.entry(l).or_default() += 1;
    }
    let missing: Vec<&String> = selected.iter().filter(|p| !seen.contains_key(*p)).collect();
    let unexpected: Vec<&String> = seen.keys().filter(|p| !selected.contains(p)).collect();
    let dup: usize = seen.values().map(|n| n - 1).sum();
    common::report(
        "file replay, SIGKILL",
        selected.len(),
        seen.len(),
        0,
        0,
        dup,
    );
    assert!(
        missing.is_empty(),
        "{} records lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        unexpected.is_empty(),
        "left-out records replayed: {:?}",
        &unexpected[..unexpected.len().min(5)]
    );
    // The file source repeats at most 2 × max_in_flight (1024) lines after a kill.
    assert!(dup <= 2048, "{dup} duplicates");
    assert!(lines(&d.join("dlq-again.jsonl")).is_empty());
}

#[test]
fn records_that_fail_again_are_dead_lettered_again_with_the_replay_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let dlq = [
        record("good-1", "fatal", ""),
        record("bad-1", "fatal", ""),
        // A record an earlier replay dead-lettered again: its attempts add up.
        record(
            "bad-2",
            "fatal",
            r#",["original-sluice-replay","orders@earlier"],["original-sluice-replay-attempts","4"]"#,
        ),
        // Untrusted metadata: replayed all the same, counted as 0 attempts.
        record("good-2", "fatal", "").replace(
            r#"["sluice-attempts","3"]"#,
            r#"["sluice-attempts","many"]"#,
        ),
        "this line is not a dead-letter record".to_string(),
    ];
    std::fs::write(d.join("dlq.jsonl"), dlq.join("\n") + "\n").expect("write");
    let toml = replay_toml(d, &common::plugin("fatal-on"));
    let t = toml.to_string_lossy();

    // The dry run shows each record and the handler's answer, and changes nothing.
    let (code, out, err) = common::run_sluice(&["replay", &t, "--dry-run", "--idle", "1s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("refused: bad-1") && out.contains("ok: 1 output(s) \"good-1\""),
        "{out}"
    );
    assert!(out.contains("5 record(s) would be replayed"), "{out}");
    assert!(!d.join("out.txt").exists() || lines(&d.join("out.txt")).is_empty());
    assert!(!d.join("dlq-again.jsonl").exists() || lines(&d.join("dlq-again.jsonl")).is_empty());

    let (code, out, err) = common::run_sluice(&["replay", &t, "--idle", "2s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 record(s) replayed: 2 succeeded"), "{out}");
    assert!(out.contains("3 dead-lettered again"), "{out}");
    assert_eq!(lines(&d.join("out.txt")), ["good-1", "good-2"]);
    let again: Vec<sluice::envelope::Envelope> = lines(&d.join("dlq-again.jsonl"))
        .iter()
        .map(|l| sluice::envelope::decode(l).expect("an envelope"))
        .collect();
    assert_eq!(again.len(), 3, "{again:?}");
    let h = |e: &sluice::envelope::Envelope, k: &str| {
        e.headers
            .iter()
            .find(|h| h.key == k)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
    };
    let bad1 = again
        .iter()
        .find(|e| &e.payload[..] == b"bad-1")
        .expect("bad-1");
    assert!(h(bad1, "original-sluice-replay").is_some_and(|r| r.starts_with("orders@")));
    assert_ne!(
        h(bad1, "original-sluice-replay").as_deref(),
        Some("orders@earlier")
    );
    assert_eq!(
        h(bad1, "original-sluice-replay-attempts").as_deref(),
        Some("3")
    );
    assert_eq!(h(bad1, "sluice-attempts").as_deref(), Some("1"));
    assert_eq!(h(bad1, "sluice-source-topic").as_deref(), Some("orders-in"));
    assert_eq!(
        h(bad1, "trace").as_deref(),
        Some("t-bad-1"),
        "original headers kept"
    );
    let bad2 = again
        .iter()
        .find(|e| &e.payload[..] == b"bad-2")
        .expect("bad-2");
    assert_eq!(
        h(bad2, "original-sluice-replay-attempts").as_deref(),
        Some("7")
    );
    let junk = again
        .iter()
        .find(|e| h(e, "sluice-error-class").as_deref() == Some("decode"))
        .expect("the malformed line dead-lettered as decode");
    assert!(
        h(junk, "sluice-error-message").is_some_and(|m| m.contains("envelope")),
        "{junk:?}"
    );

    // Replaying the records dead-lettered again ends by itself: nothing loops.
    std::fs::rename(d.join("dlq-again.jsonl"), d.join("dlq.jsonl")).expect("rename");
    std::fs::remove_file(d.join("dlq.replay-checkpoint")).ok();
    let (code, out, err) = common::run_sluice(&["replay", &t, "--idle", "2s", "--class", "fatal"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 record(s) replayed: 0 succeeded"), "{out}");
    assert!(out.contains("1 left out by the filters"), "{out}");
}

#[test]
fn jetstream_dead_letters_replayed_and_acked() {
    use async_nats::HeaderMap;
    use async_nats::jetstream::{self, stream};
    const N: usize = 300;
    let u = common::unique("replay").replace('-', "_");
    let (stream_name, subject) = (u.to_uppercase(), format!("dlq.{u}"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let js = rt.block_on(async {
        let js = jetstream::new(
            async_nats::connect("nats://127.0.0.1:4222")
                .await
                .expect("NATS on 127.0.0.1:4222"),
        );
        js.get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .expect("stream");
        for i in 0..N {
            let mut h = HeaderMap::new();
            let class = if i % 3 == 0 { "timeout" } else { "fatal" };
            h.insert("sluice-error-class", class);
            h.insert("sluice-attempts", "3");
            h.insert("sluice-pipeline", "orders");
            h.insert("sluice-source-topic", "orders.in");
            h.insert("sluice-failed-at", "2026-11-30T10:00:00.000Z");
            js.publish_with_headers(subject.clone(), h, format!("j{i}").into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
        js
    });
    let toml = d.join("replay.toml");
    std::fs::write(
        &toml,
        format!(
            r#"name = "orders"
[source]
type = "jetstream"
url = "nats://127.0.0.1:4222"
stream = "{stream_name}"
durable = "replay_{u}"
[handler]
plugin = "{}"
[sink]
type = "file"
path = "out.txt"
[dead_letter]
type = "file"
path = "dlq-again.jsonl"
"#,
            common::plugin("echo").display()
        ),
    )
    .expect("write");
    let t = toml.to_string_lossy();
    let (code, out, err) = common::run_sluice(&[
        "replay",
        &t,
        "--idle",
        "2s",
        "--class",
        "timeout",
        "--topic",
        "orders.in",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let got = lines(&d.join("out.txt"));
    let want: Vec<String> = (0..N)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("j{i}"))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    let mut w = want.clone();
    w.sort();
    assert_eq!(sorted, w, "every selected record replayed, nothing else");
    common::report(
        "jetstream replay",
        want.len(),
        sorted.len(),
        0,
        0,
        got.len() - sorted.len(),
    );
    let info = rt.block_on(async {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream(&stream_name)
            .await
            .expect("stream")
            .get_consumer(&format!("replay_{u}"))
            .await
            .expect("consumer");
        c.info().await.expect("info").clone()
    });
    assert_eq!(
        info.num_ack_pending, 0,
        "every replayed and left-out record settled"
    );
    assert_eq!(info.num_pending, 0);
    rt.block_on(async { js.delete_stream(&stream_name).await.ok() });
}

#[test]
fn mqtt_311_envelope_dead_letters_replayed() {
    use common::mqtt::{Mosquitto, Opts, client};
    const N: usize = 200;
    let b = Mosquitto::start(Opts::default());
    let topic = common::unique("replay-dlq");
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let toml = d.join("replay.toml");
    std::fs::write(
        &toml,
        format!(
            r#"name = "orders"
[source]
type = "mqtt"
url = "{}"
topics = ["{topic}"]
version = "3.1.1"
client_id = "{topic}-replay"
[handler]
plugin = "{}"
[sink]
type = "file"
path = "out.txt"
[dead_letter]
type = "file"
path = "dlq-again.jsonl"
"#,
            b.url(),
            common::plugin("echo").display()
        ),
    )
    .expect("write");
    let t = toml.to_string_lossy();
    // A dry run opens the replay's persistent session: what is published
    // next waits there for the replay.
    let (code, out, err) = common::run_sluice(&["replay", &t, "--dry-run", "--idle", "1s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 record(s) would be replayed"), "{out}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let pubc = client(b.port, true, &format!("{topic}-pub"), false).await;
        let mut msgs: Vec<common::mqtt::Msg> = (0..N)
            .map(|i| {
                let class = if i % 2 == 0 { "fatal" } else { "trap" };
                let record = sluice::sinks::Record {
                    topic: None,
                    key: Some(format!("k{i}").into_bytes().into()),
                    payload: format!("q{i}").into_bytes().into(),
                    headers: vec![
                        sluice::message::Header::new("sluice-error-class", class),
                        sluice::message::Header::new("sluice-attempts", "1"),
                    ],
                    id: String::new(),
                };
                (sluice::envelope::encode(&record).into_bytes(), Vec::new())
            })
            .collect();
        // Not a dead-letter record: dead-lettered again as `decode`, not lost.
        msgs.push((b"plain bytes".to_vec(), Vec::new()));
        pubc.publish(&topic, 1, &msgs).await;
    });
    // Filters would acknowledge what they leave out, and MQTT keeps
    // nothing acknowledged: refused unless asked for.
    let (code, out, err) = common::run_sluice(&["replay", &t, "--idle", "2s", "--class", "fatal"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("--discard-left-out"), "{err}");
    let (code, out, err) = common::run_sluice(&[
        "replay",
        &t,
        "--idle",
        "2s",
        "--class",
        "fatal",
        "--discard-left-out",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let got = lines(&d.join("out.txt"));
    let want: Vec<String> = (0..N).step_by(2).map(|i| format!("q{i}")).collect();
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    let mut w = want.clone();
    w.sort();
    common::report(
        "mqtt 3.1.1 replay",
        want.len() + 1,
        got.len(),
        1,
        0,
        got.len() - sorted.len(),
    );
    assert_eq!(sorted, w, "every selected record replayed once unwrapped");
    let again = lines(&d.join("dlq-again.jsonl"));
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(
        again[0].contains("decode") && again[0].contains("not a dead-letter record"),
        "{again:?}"
    );
    // Everything was acknowledged: a second replay finds nothing.
    let (code, out, err) = common::run_sluice(&["replay", &t, "--idle", "1s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": 0 record(s) replayed"), "{out}");
}

#[test]
fn kafka_dead_letters_replayed_and_committed() {
    use common::kafka::{KafkaBroker, Kind, TestRecord, source_toml};
    const N: usize = 200;
    let b = KafkaBroker::start(Kind::Noida);
    let topic = common::unique("replay-dlq");
    let group = format!("{topic}-replay");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        b.create_topic(&topic, 1).await;
        let records: Vec<TestRecord> = (0..N)
            .map(|i| {
                let class = if i % 4 == 0 { "fatal" } else { "sink" };
                TestRecord {
                    key: Some(format!("k{i}").into_bytes()),
                    headers: vec![
                        ("sluice-error-class".into(), class.as_bytes().to_vec()),
                        ("sluice-attempts".into(), b"5".to_vec()),
                        ("sluice-pipeline".into(), b"orders".to_vec()),
                    ],
                    ..TestRecord::new(format!("r{i}"))
                }
            })
            .collect();
        b.produce(&topic, Some(0), &records).await;
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let toml = d.join("replay.toml");
    std::fs::write(
        &toml,
        format!(
            "name = \"orders\"\n[source]\n{}\n[handler]\nplugin = \"{}\"\n[sink]\ntype = \"file\"\npath = \"out.txt\"\n\
             [dead_letter]\ntype = \"file\"\npath = \"dlq-again.jsonl\"\n",
            source_toml(&b, &topic, &group, ""),
            common::plugin("echo").display()
        ),
    )
    .expect("write");
    let t = toml.to_string_lossy();
    // Joining the group takes a moment: a generous idle bound.
    let (code, out, err) = common::run_sluice(&[
        "replay",
        &t,
        "--idle",
        "15s",
        "--class",
        "fatal",
        "--failed-in",
        "orders",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let got = lines(&d.join("out.txt"));
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    let mut want: Vec<String> = (0..N).step_by(4).map(|i| format!("r{i}")).collect();
    want.sort();
    common::report(
        "kafka replay",
        want.len(),
        got.len(),
        0,
        0,
        got.len() - sorted.len(),
    );
    assert_eq!(sorted, want, "every selected record replayed");
    assert!(out.contains("150 left out by the filters"), "{out}");
    assert_eq!(
        b.committed(&group, &topic, 1),
        vec![N as i64],
        "every record settled and committed"
    );
}

/// The dead letter is the stream the replay reads: what fails again lands
/// behind the records being replayed, and the replay ends when it reaches
/// them instead of replaying them forever.
#[test]
fn a_replay_into_its_own_dead_letter_stream_ends() {
    use async_nats::HeaderMap;
    use async_nats::jetstream::{self, stream};
    const N: usize = 20;
    let u = common::unique("replay_round").replace('-', "_");
    let (stream_name, subject) = (u.to_uppercase(), format!("dlq.{u}"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let js = rt.block_on(async {
        let js = jetstream::new(
            async_nats::connect("nats://127.0.0.1:4222")
                .await
                .expect("NATS on 127.0.0.1:4222"),
        );
        js.get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .expect("stream");
        for i in 0..N {
            let mut h = HeaderMap::new();
            h.insert("sluice-error-class", "fatal");
            h.insert("sluice-attempts", "1");
            js.publish_with_headers(subject.clone(), h, format!("bad-{i}").into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
        js
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let toml = tmp.path().join("replay.toml");
    std::fs::write(
        &toml,
        format!(
            r#"name = "orders"
[source]
type = "jetstream"
url = "nats://127.0.0.1:4222"
stream = "{stream_name}"
durable = "replay_{u}"
[handler]
plugin = "{}"
[sink]
type = "file"
path = "out.txt"
[dead_letter]
type = "jetstream"
url = "nats://127.0.0.1:4222"
stream = "{stream_name}"
subject = "{subject}"
"#,
            common::plugin("fatal-on").display()
        ),
    )
    .expect("write");
    let started = Instant::now();
    let (code, out, err) =
        common::run_sluice(&["replay", &toml.to_string_lossy(), "--idle", "120s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "ended by meeting its own dead letters, not by the idle bound"
    );
    assert!(
        out.contains(&format!("{N} record(s) replayed: 0 succeeded")),
        "{out}"
    );
    assert!(out.contains(&format!("{N} dead-lettered again")), "{out}");
    let messages = rt.block_on(async {
        let mut s = js.get_stream(&stream_name).await.expect("stream");
        s.info().await.expect("info").state.messages
    });
    assert_eq!(
        messages,
        2 * N as u64,
        "the originals and one record each from the replay"
    );
    rt.block_on(async { js.delete_stream(&stream_name).await.ok() });
}

/// A JetStream replay killed midway: what it had not acknowledged comes
/// back after `ack_wait`, so the next run replays it; nothing is lost and
/// the duplicates stay within what was awaiting its ack.
#[test]
fn jetstream_replay_survives_sigkill() {
    use async_nats::HeaderMap;
    use async_nats::jetstream::{self, stream};
    const N: usize = 10_000;
    let u = common::unique("replay_kill").replace('-', "_");
    let (stream_name, subject) = (u.to_uppercase(), format!("dlq.{u}"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let js = rt.block_on(async {
        let js = jetstream::new(
            async_nats::connect("nats://127.0.0.1:4222")
                .await
                .expect("NATS on 127.0.0.1:4222"),
        );
        js.get_or_create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .expect("stream");
        // In chunks: the client holds a bounded number of acks in flight.
        for chunk in (0..N).collect::<Vec<_>>().chunks(200) {
            let mut acks = Vec::with_capacity(chunk.len());
            for i in chunk {
                let mut h = HeaderMap::new();
                h.insert("sluice-error-class", "fatal");
                acks.push(
                    js.publish_with_headers(subject.clone(), h, format!("k{i}").into())
                        .await
                        .expect("publish"),
                );
            }
            for a in acks {
                a.await.expect("stored");
            }
        }
        js
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let toml = d.join("replay.toml");
    std::fs::write(
        &toml,
        format!(
            r#"name = "orders"
[source]
type = "jetstream"
url = "nats://127.0.0.1:4222"
stream = "{stream_name}"
durable = "replay_{u}"
ack_wait = "2s"
[handler]
plugin = "{}"
[sink]
type = "file"
path = "out.txt"
[dead_letter]
type = "file"
path = "dlq-again.jsonl"
"#,
            common::plugin("echo").display()
        ),
    )
    .expect("write");
    let t = toml.to_string_lossy().into_owned();
    let mut child = common::Proc {
        child: Command::new(common::sluice_bin())
            .args(["replay", &t, "--idle", "5s"])
            .env("SLUICE_CACHE_DIR", common::cache_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sluice replay"),
    };
    let out = d.join("out.txt");
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines(&out).len() < N / 10 {
        assert!(Instant::now() < deadline, "no outputs from the replay");
        assert!(
            child.child.try_wait().expect("wait").is_none(),
            "replay ended early"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.signal("KILL");
    child.wait_timeout(Duration::from_secs(10));
    let at_kill = lines(&out).len();
    assert!(
        at_kill < N,
        "the replay finished before the kill ({at_kill}): the test proves nothing"
    );
    let (code, stdout, stderr) = common::run_sluice(&["replay", &t, "--idle", "5s"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let got = lines(&out);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for l in &got {
        *seen.entry(l.as_str()).or_default() += 1;
    }
    let missing = (0..N)
        .filter(|i| !seen.contains_key(format!("k{i}").as_str()))
        .count();
    let dup: usize = seen.values().map(|n| n - 1).sum();
    common::report("jetstream replay, SIGKILL", N, got.len(), 0, 0, dup);
    assert_eq!(missing, 0, "records lost");
    assert_eq!(seen.len(), N, "nothing but the records");
    // At most what was delivered and not yet acknowledged: max_ack_pending (1000).
    assert!(dup <= 1000, "{dup} duplicates");
    let info = rt.block_on(async {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream(&stream_name)
            .await
            .expect("stream")
            .get_consumer(&format!("replay_{u}"))
            .await
            .expect("consumer");
        c.info().await.expect("info").clone()
    });
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    rt.block_on(async { js.delete_stream(&stream_name).await.ok() });
}
