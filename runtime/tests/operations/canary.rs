//! Canary rollouts against the real `sluice` binary and NATS JetStream on
//! 127.0.0.1:4222: a bad canary rolled back under load with every message
//! accounted and only its share of keys touched, a good one promoted by its
//! rule, promotion through the admin API with and without a token, each key
//! staying with one version until the rollout ends.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use serde_json::Value;

use common::admin::{http, metric, pipeline, spawn_env, wait_until};
use sluice::message::Message;
use sluice::pipeline::canary::{BUCKETS, bucket};

const URL: &str = "nats://127.0.0.1:4222";

/// Replaces `dst` atomically (temp file + rename), as a deploy would.
fn install(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

fn digest_of(p: &Path) -> String {
    sluice::engine::cache::digest(&std::fs::read(p).unwrap())
}

/// Whether the canary takes messages of `key` at `share`.
fn canary_key(key: &str, share: f64) -> bool {
    let m = Message {
        key: Some(bytes::Bytes::copy_from_slice(key.as_bytes())),
        ..Message::new("t", "")
    };
    bucket(&m) < (share * BUCKETS as f64).round() as u64
}

/// One pipeline from a JetStream stream to another, its stable version
/// `tag-a` (outputs `A:<payload>`), its canary in `canary/handler.wasm`,
/// dead letters in `dlq.jsonl`, run by `sluice run` with an admin port.
struct Rig {
    _dir: tempfile::TempDir,
    d: PathBuf,
    js: jetstream::Context,
    subject: String,
    outs: String,
    port: u16,
    log: PathBuf,
    proc: Option<common::Proc>,
}

impl Rig {
    async fn start(name: &str, canary: &str, rule: &str, token: Option<&str>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let u = common::unique(name).replace('-', "_");
        let (ins, outs, sub) = (
            format!("{}_IN", u.to_uppercase()),
            format!("{}_OUT", u.to_uppercase()),
            u.clone(),
        );
        std::fs::create_dir(d.join("canary")).unwrap();
        std::fs::create_dir(d.join("pipelines")).unwrap();
        install(&common::plugin("tag-a"), &d.join("stable.wasm"));
        install(&common::plugin(canary), &d.join("canary/handler.wasm"));
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
            d.join(format!("pipelines/{name}.toml")),
            format!(
                r#"name = "{name}"
[source]
type = "jetstream"
url = "{URL}"
stream = "{ins}"
durable = "{name}"
batch = 256
max_ack_pending = 2000
[handler]
plugin = "{d}/stable.wasm"
concurrency = 2
[handler.canary]
plugin = "{d}/canary/handler.wasm"
{rule}
[sink]
type = "jetstream"
url = "{URL}"
subject = "{sub}.out"
stream = "{outs}"
[dead_letter]
type = "file"
path = "{d}/dlq.jsonl"
[errors]
trap = "dead-letter"
"#,
                d = d.display()
            ),
        )
        .unwrap();
        let port = common::free_port();
        let log = d.join("sluice.log");
        let env: Vec<(&str, &str)> = token
            .map(|t| ("SLUICE_ADMIN_TOKEN", t))
            .into_iter()
            .collect();
        let proc = spawn_env(&[d.join("pipelines").to_str().unwrap()], port, &log, &env);
        let name = name.to_string();
        tokio::task::block_in_place(|| {
            wait_until("the canary to run", Duration::from_secs(60), || {
                pipeline(port, &name).is_some_and(|p| !p["canary"]["running"].is_null())
            })
        });
        Rig {
            _dir: dir,
            d,
            js,
            subject: format!("{sub}.in"),
            outs,
            port,
            log,
            proc: Some(proc),
        }
    }

    /// Publishes message `i` of `n` with key `k{i % keys}`, in chunks of 500.
    async fn publish(
        &self,
        range: std::ops::Range<usize>,
        keys: usize,
        payload: impl Fn(usize) -> String,
    ) {
        let mut acks = Vec::with_capacity(500);
        for i in range {
            let mut h = async_nats::HeaderMap::new();
            h.insert("sluice-key", format!("k{}", i % keys).as_str());
            acks.push(
                self.js
                    .publish_with_headers(self.subject.clone(), h, payload(i).into())
                    .await
                    .unwrap(),
            );
            if acks.len() == 500 {
                for a in acks.drain(..) {
                    a.await.unwrap();
                }
            }
        }
        for a in acks {
            a.await.unwrap();
        }
    }

    fn info(&self, name: &str) -> Value {
        pipeline(self.port, name).unwrap_or(Value::Null)
    }

    /// Waits until `succeeded + dead_lettered` reaches `n`.
    fn wait_settled(&self, name: &str, n: u64) -> Value {
        let mut p = Value::Null;
        tokio::task::block_in_place(|| {
            wait_until("every message settled", Duration::from_secs(120), || {
                p = self.info(name);
                count(&p, "succeeded") + count(&p, "dead_lettered") >= n
            })
        });
        p
    }

    /// Every output, in stream order.
    async fn outputs(&self) -> Vec<String> {
        let out = self.js.get_stream(&self.outs).await.unwrap();
        let c = out
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut got = Vec::new();
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
                return got;
            }
        }
    }

    /// The dead-letter records: (payload, key, plugin digest).
    fn dead_letters(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.d.join("dlq.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("envelope line");
                let digest = v["headers"]
                    .as_array()
                    .and_then(|hs| hs.iter().find(|h| h[0] == "sluice-plugin-digest"))
                    .map(|h| h[1].as_str().unwrap_or_default().to_string())
                    .unwrap_or_default();
                (
                    v["payload"].as_str().unwrap_or_default().to_string(),
                    v["key"].as_str().unwrap_or_default().to_string(),
                    digest,
                )
            })
            .collect()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops sluice with SIGTERM and expects exit 0.
    fn stop(&mut self) {
        let mut p = self.proc.take().expect("running");
        p.signal("TERM");
        let code = p.wait_timeout(Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "clean exit on SIGTERM; log:\n{}",
            self.log_text()
        );
    }
}

fn count(p: &Value, key: &str) -> u64 {
    p["counts"][key].as_u64().unwrap_or(0)
}

/// An output's version (the `A:` prefix is the stable `tag-a`, `B:` is
/// `tag-b`, none the echoing `hostile`) and the message index it carries.
fn parse(o: &str) -> (char, usize) {
    let (v, rest) = match o.split_once(':') {
        Some((t, rest)) if t == "A" || t == "B" => (t.chars().next().unwrap_or('?'), rest),
        _ => ('H', o),
    };
    let i = rest
        .rsplit('-')
        .next()
        .and_then(|n| n.trim_start_matches('m').parse().ok())
        .unwrap_or_else(|| panic!("an index in {o:?}"));
    (v, i)
}

/// Per key, the versions its outputs came from, in stream order, runs merged.
fn runs_per_key(outputs: &[String], keys: usize) -> BTreeMap<usize, Vec<char>> {
    let mut runs: BTreeMap<usize, Vec<char>> = BTreeMap::new();
    for o in outputs {
        let (v, i) = parse(o);
        let r = runs.entry(i % keys).or_default();
        if r.last() != Some(&v) {
            r.push(v);
        }
    }
    runs
}

/// A canary that traps on the `panic-…` messages of its share (every
/// seventh message) is rolled back once it made `min_messages` calls: every
/// message is accounted for (sent = delivered + dead-lettered, no
/// duplicate), only canary keys were dead-lettered, each with the canary's
/// digest, each key stayed on one version until the rollback, and the bad
/// bytes are not started again until they change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_with_nothing_lost() {
    const N: usize = 20_000;
    const KEYS: usize = 100;
    const SHARE: f64 = 0.2;
    let name = "rollback";
    let mut rig = Rig::start(
        name,
        "hostile",
        "share = 0.2\nmin_messages = 200\nfailure_margin = 0.02\npromote_after = 0",
        None,
    )
    .await;
    let bad = digest_of(&common::plugin("hostile"));
    let payload = |i: usize| {
        if i.is_multiple_of(7) {
            format!("panic-{i}")
        } else {
            format!("m{i}")
        }
    };
    rig.publish(0..N, KEYS, payload).await;
    let p = rig.wait_settled(name, N as u64);
    let (_, metrics) = http(rig.port, "GET", "/metrics", None);

    let c = &p["canary"];
    assert_eq!(c["rolled_back"], 1, "{c}");
    assert_eq!(c["promoted"], 0);
    assert!(c["running"].is_null(), "{c}");
    assert_eq!(c["last"]["outcome"], "rolled_back");
    assert_eq!(c["last"]["digest"], bad.as_str());
    assert!(
        c["rolled_back_digests"]
            .as_array()
            .unwrap()
            .contains(&Value::from(bad.as_str()))
    );
    let canary_calls = c["last"]["canary"]["calls"].as_u64().unwrap();
    let canary_traps = c["last"]["canary"]["failures"]["trap"]
        .as_u64()
        .unwrap_or(0);
    assert!(canary_calls >= 200, "judged after min_messages: {c}");
    assert_eq!(c["last"]["stable"]["failed"], 0, "{c}");
    assert_eq!(
        metric(
            &metrics,
            &format!("sluice_canaries_total{{pipeline=\"{name}\",outcome=\"rolled_back\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("sluice_canary_active{{pipeline=\"{name}\"}}")
        ),
        Some(0.0)
    );
    assert!(rig.log_text().contains("canary rolled back"), "logged");

    // Every message: delivered once or dead-lettered once, never both.
    let outputs = rig.outputs().await;
    let dead = rig.dead_letters();
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for o in &outputs {
        *seen.entry(parse(o).1).or_default() += 1;
    }
    for (payload, key, digest) in &dead {
        let i = parse(payload).1;
        *seen.entry(i).or_default() += 1;
        assert!(
            payload.starts_with("panic-"),
            "only poison is dead-lettered: {payload}"
        );
        assert_eq!(digest, &bad, "the record names the version that failed it");
        assert_eq!(key, &format!("k{}", i % KEYS));
        assert!(canary_key(key, SHARE), "{key} is not in the canary's share");
    }
    let dups = seen.values().filter(|n| **n > 1).count();
    let lost = (0..N).filter(|i| !seen.contains_key(i)).count();
    assert_eq!(
        (lost, dups),
        (0, 0),
        "sent = delivered + dead-lettered, once each"
    );
    assert_eq!(outputs.len() + dead.len(), N);
    assert_eq!(count(&p, "dead_lettered"), dead.len() as u64);
    assert_eq!(
        dead.len() as u64,
        canary_traps,
        "each trap of the canary dead-lettered once"
    );

    // Keys: the canary's ran on it, then on the stable version; the others
    // only ever on the stable version.
    let runs = runs_per_key(&outputs, KEYS);
    let mut canary_keys = 0;
    for (k, r) in &runs {
        if canary_key(&format!("k{k}"), SHARE) {
            canary_keys += 1;
            assert!(
                r == &['H', 'A'] || r == &['A'] || r == &['H'],
                "k{k}: {r:?}"
            );
        } else {
            assert_eq!(r, &['A'], "k{k} never met the canary");
        }
    }
    assert!(
        (5..=40).contains(&canary_keys),
        "{canary_keys} of {KEYS} keys on a 20% canary"
    );

    // The rolled-back bytes are not started again (the supervisor re-checks
    // every 5 s); new bytes are.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(rig.info(name)["canary"]["started"], 1);
    install(&common::plugin("tag-b"), &rig.d.join("canary/handler.wasm"));
    let good = digest_of(&common::plugin("tag-b"));
    let port = rig.port;
    tokio::task::block_in_place(|| {
        wait_until("the new canary", Duration::from_secs(30), || {
            pipeline(port, name).is_some_and(|p| p["canary"]["running"]["digest"] == good.as_str())
        })
    });
    assert_eq!(rig.info(name)["canary"]["started"], 2);
    rig.stop();
    eprintln!(
        "[canary rollback] {N} sent, {} delivered, {} dead-lettered (all {canary_keys} canary keys of {KEYS}), rolled back after {canary_calls} canary calls",
        outputs.len(),
        dead.len()
    );
    common::report("canary rollback", N, outputs.len(), dead.len(), 0, dups);
}

/// A canary within its margin is promoted after `promote_after` calls:
/// from then on every message gets it, each key moved at most once (stable
/// → canary), nothing lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_by_its_rule() {
    const N: usize = 10_000;
    const KEYS: usize = 200;
    const SHARE: f64 = 0.3;
    let name = "promote";
    let mut rig = Rig::start(
        name,
        "tag-b",
        "share = 0.3\nmin_messages = 100\nfailure_margin = 0.0\npromote_after = 1000",
        None,
    )
    .await;
    let good = digest_of(&common::plugin("tag-b"));
    rig.publish(0..N, KEYS, |i| format!("m{i}")).await;
    let p = rig.wait_settled(name, N as u64);
    let c = &p["canary"];
    assert_eq!(c["promoted"], 1, "{c}");
    assert_eq!(c["rolled_back"], 0);
    assert!(c["running"].is_null());
    assert_eq!(c["last"]["outcome"], "promoted");
    assert!(c["last"]["canary"]["calls"].as_u64().unwrap() >= 1000);
    assert_eq!(
        p["plugin"]["digest"],
        good.as_str(),
        "the canary is the stable version now"
    );
    let (_, metrics) = http(rig.port, "GET", "/metrics", None);
    assert_eq!(
        metric(
            &metrics,
            &format!("sluice_canaries_total{{pipeline=\"{name}\",outcome=\"promoted\"}}")
        ),
        Some(1.0)
    );

    let outputs = rig.outputs().await;
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for o in &outputs {
        *seen.entry(parse(o).1).or_default() += 1;
    }
    let dups = seen.values().filter(|n| **n > 1).count();
    let lost = (0..N).filter(|i| !seen.contains_key(i)).count();
    assert_eq!((lost, dups, outputs.len()), (0, 0, N));
    assert_eq!(count(&p, "dead_lettered"), 0);
    let runs = runs_per_key(&outputs, KEYS);
    for (k, r) in &runs {
        if canary_key(&format!("k{k}"), SHARE) {
            assert_eq!(r, &['B'], "k{k} ran on the canary from the start");
        } else {
            assert!(
                r == &['A', 'B'] || r == &['A'] || r == &['B'],
                "k{k}: {r:?}"
            );
        }
    }
    // The last messages all ran on the promoted version.
    assert!(outputs[N - 100..].iter().all(|o| o.starts_with("B:")));
    // Its file unchanged, the promoted canary does not start again.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(rig.info(name)["canary"]["started"], 1);
    rig.stop();
    common::report("canary promotion", N, outputs.len(), 0, 0, dups);
}

/// `POST /pipelines/{name}/promote` needs the token when one is set, and
/// promotes only a canary that runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_through_the_admin_api_needs_the_token() {
    let name = "manual";
    let token = "s3cret-token";
    let mut rig = Rig::start(name, "tag-b", "share = 0.5\npromote_after = 0", Some(token)).await;
    let good = digest_of(&common::plugin("tag-b"));
    let path = format!("/pipelines/{name}/promote");
    rig.publish(0..200, 20, |i| format!("m{i}")).await;
    rig.wait_settled(name, 200);
    let port = rig.port;
    // While the canary runs, each version's calls and failures are metrics.
    let (_, metrics) = http(port, "GET", "/metrics", None);
    assert_eq!(
        metric(
            &metrics,
            &format!("sluice_canary_active{{pipeline=\"{name}\"}}")
        ),
        Some(1.0)
    );
    let calls = |version: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("sluice_version_calls_total{")
                    && l.contains(&format!("version=\"{version}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(calls("stable") + calls("canary"), 200.0, "{metrics}");
    assert!(calls("canary") > 0.0 && calls("stable") > 0.0, "{metrics}");
    assert!(metrics.contains(&format!(
        "sluice_version_failures_total{{pipeline=\"{name}\",version=\"canary\",digest=\"{good}\",class=\"trap\"}} 0"
    )));
    let (status, body) = http(port, "POST", &path, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(port, "POST", &path, Some("wrong"));
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(token));
    assert!(
        !rig.info(name)["canary"]["running"].is_null(),
        "nothing changed"
    );
    let (status, body) = http(port, "POST", "/pipelines/nope/promote", Some(token));
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(port, "POST", &path, Some(token));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["promoted"], good.as_str());
    let (status, body) = http(port, "POST", &path, Some(token));
    assert_eq!(status, 409, "no canary runs any more: {body}");
    let p = rig.info(name);
    assert_eq!(p["plugin"]["digest"], good.as_str());
    assert_eq!(p["canary"]["promoted"], 1);
    assert_eq!(p["canary"]["last"]["reason"], "on request");
    rig.publish(200..400, 20, |i| format!("m{i}")).await;
    rig.wait_settled(name, 400);
    let outputs = rig.outputs().await;
    assert_eq!(outputs.len(), 400);
    assert!(
        outputs
            .iter()
            .filter(|o| parse(o).1 >= 200)
            .all(|o| o.starts_with("B:")),
        "after promotion every message runs on the promoted version"
    );
    rig.stop();
}

/// A message and its retries finish on the version they started on, even
/// when the canary is rolled back meanwhile: the `flaky` canary fails the
/// first two attempts of each message, which rolls it back at its first
/// call; the retries of that message still run on it (a plain echo), the
/// messages after it on the stable version (`A:`).
#[test]
fn retries_finish_on_the_version_the_message_started_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("canary")).unwrap();
    std::fs::create_dir(d.join("pipelines")).unwrap();
    install(&common::plugin("flaky"), &d.join("canary/handler.wasm"));
    std::fs::write(d.join("in.jsonl"), "").unwrap();
    std::fs::write(
        d.join("pipelines/inflight.toml"),
        format!(
            r#"name = "inflight"
[source]
type = "file"
path = "{d}/in.jsonl"
format = "envelope"
follow = true
[handler]
plugin = "{stable}"
batch = 1
[handler.canary]
plugin = "{d}/canary/handler.wasm"
share = 0.5
min_messages = 1
failure_margin = 0.5
promote_after = 0
[sink]
type = "file"
path = "{d}/out.txt"
[dead_letter]
type = "file"
path = "{d}/dlq.jsonl"
[retry]
max_attempts = 3
initial = "10ms"
jitter = "none"
"#,
            d = d.display(),
            stable = common::plugin("tag-a").display()
        ),
    )
    .unwrap();
    let port = common::free_port();
    let log = d.join("sluice.log");
    let mut proc = spawn_env(&[d.join("pipelines").to_str().unwrap()], port, &log, &[]);
    wait_until("the canary to run", Duration::from_secs(60), || {
        pipeline(port, "inflight").is_some_and(|p| !p["canary"]["running"].is_null())
    });
    let on = (0..)
        .map(|i| format!("c{i}"))
        .find(|k| canary_key(k, 0.5))
        .unwrap();
    let off = (0..)
        .map(|i| format!("s{i}"))
        .find(|k| !canary_key(k, 0.5))
        .unwrap();
    let line = |k: &str, p: &str| {
        format!("{{\"topic\":\"t\",\"key\":\"{k}\",\"payload\":\"{p}\",\"headers\":[]}}\n")
    };
    let text = [
        line(&on, "first"),
        line(&on, "second"),
        line(&off, "third"),
        line(&on, "fourth"),
    ]
    .concat();
    std::fs::write(d.join("in.jsonl"), text).unwrap();
    wait_until("four outputs", Duration::from_secs(30), || {
        std::fs::read_to_string(d.join("out.txt")).is_ok_and(|t| t.lines().count() >= 4)
    });
    let p = pipeline(port, "inflight").unwrap();
    proc.signal("TERM");
    assert_eq!(proc.wait_timeout(Duration::from_secs(30)), Some(0));
    let out = std::fs::read_to_string(d.join("out.txt")).unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["first", "A:second", "A:third", "A:fourth"],
        "the first message's retries stayed on the canary; the rest met the stable version"
    );
    let c = &p["canary"];
    assert_eq!(c["rolled_back"], 1, "{c}");
    assert_eq!(
        c["last"]["canary"]["calls"], 3,
        "all three attempts on the canary: {c}"
    );
    assert_eq!(c["last"]["canary"]["failures"]["retriable"], 2, "{c}");
    assert_eq!(p["counts"]["dead_lettered"], 0);
}
