//! The `mqtt` source and sink against private Mosquitto brokers: persistent
#![allow(clippy::type_complexity)]
//! session, manual ack after settle (and redelivery after a lost
//! connection), re-queue on `Redeliver`, password file, shared subscriptions,
//! user properties, QoS 0/1/2 and the `rejected` class.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mqtt::{Mosquitto, Opts, client, create_session};
use common::nats::run;
use sluice::config::mqtt::{MqttSinkConfig, MqttSourceConfig};
use sluice::failure::FailureClass;
use sluice::message::Header;
use sluice::sinks::{Record, Sink as _};
use sluice::sources::mqtt::MqttSource;
use sluice::sources::{Delivery, Settlement, Source as _};

fn source_cfg(toml_text: &str) -> MqttSourceConfig {
    let c: MqttSourceConfig = toml::from_str(toml_text).expect("source toml");
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    c
}

fn sink_cfg(toml_text: &str) -> MqttSinkConfig {
    let c: MqttSinkConfig = toml::from_str(toml_text).expect("sink toml");
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    c
}

async fn next(src: &mut MqttSource, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, src.next()).await {
        Ok(r) => r.expect("source error"),
        Err(_) => None,
    }
}

fn record(payload: &str) -> Record {
    Record {
        topic: None,
        key: None,
        payload: Bytes::from(payload.to_string()),
        headers: Vec::new(),
        id: String::new(),
    }
}

/// QoS 1 messages published while the source is away arrive once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_keeps_messages_published_while_down() {
    let b = Mosquitto::start(Opts::default());
    for v311 in [false, true] {
        let topic = common::unique("mqtt-persist");
        let version = if v311 { "3.1.1" } else { "5" };
        let cfg = source_cfg(&format!(
            "url = \"{}\"\ntopics = [\"{topic}\"]\nversion = \"{version}\"\nclient_id = \"{topic}\"",
            b.url()
        ));
        let mut src = sluice::sources::mqtt::open(&cfg, "persist").await.unwrap();
        src.close().await;
        drop(src);
        let pubc = client(b.port, v311, &format!("{topic}-pub"), false).await;
        let msgs: Vec<(Vec<u8>, Vec<(String, String)>)> = (0..200)
            .map(|i| (format!("p{i}").into_bytes(), Vec::new()))
            .collect();
        pubc.publish(&topic, 1, &msgs).await;
        let mut src = sluice::sources::mqtt::open(&cfg, "persist").await.unwrap();
        let mut got = Vec::new();
        while got.len() < msgs.len() {
            let Some(d) = next(&mut src, Duration::from_secs(10)).await else {
                break;
            };
            got.push(d.message.payload.clone());
            d.settle(Settlement::Ack).await.unwrap();
        }
        let want: Vec<Bytes> = msgs.iter().map(|(p, _)| Bytes::from(p.clone())).collect();
        assert_eq!(got, want, "MQTT {version}: all queued messages, in order");
        eprintln!(
            "[mqtt persist {version}] published 200 while down, received {}",
            got.len()
        );
        src.close().await;
    }
}

/// A message is acknowledged only when settled: lose the connection before
/// the settle and the broker delivers it again; `Redeliver` hands it out again
/// locally with attempt + 1 and still does not ack it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_messages_are_redelivered() {
    let b = Mosquitto::start(Opts::default());
    let topic = common::unique("mqtt-ack");
    let cfg = source_cfg(&format!(
        "url = \"{}\"\ntopics = [\"{topic}\"]\nclient_id = \"{topic}\"",
        b.url()
    ));
    let mut src = sluice::sources::mqtt::open(&cfg, "ack").await.unwrap();
    let pubc = client(b.port, false, &format!("{topic}-pub"), false).await;
    pubc.publish(
        &topic,
        1,
        &[(b"one".to_vec(), vec![]), (b"two".to_vec(), vec![])],
    )
    .await;

    // Redeliver: the same message comes back after the delay, attempt 2.
    let d = next(&mut src, Duration::from_secs(5)).await.expect("one");
    assert_eq!(&d.message.payload[..], b"one");
    let t = Instant::now();
    d.settle(Settlement::Redeliver {
        delay: Duration::from_millis(300),
    })
    .await
    .unwrap();
    let two = next(&mut src, Duration::from_secs(5)).await.expect("two");
    assert_eq!(&two.message.payload[..], b"two");
    two.settle(Settlement::Ack).await.unwrap(); // waits behind "one" (acks in order)
    let again = next(&mut src, Duration::from_secs(5))
        .await
        .expect("one again");
    assert_eq!(&again.message.payload[..], b"one");
    assert_eq!(again.message.attempt, 2);
    assert!(
        t.elapsed() >= Duration::from_millis(280),
        "re-queued after its delay"
    );

    // Kill the connection (no DISCONNECT) with "one" still unsettled.
    let (_, _, handle) = again.into_parts();
    drop(src);
    std::mem::forget(handle); // settled never
    let mut src = sluice::sources::mqtt::open(&cfg, "ack").await.unwrap();
    let d = next(&mut src, Duration::from_secs(10))
        .await
        .expect("redelivered by the broker");
    // "two" was settled but its ack waited behind "one": both come back, in order.
    assert_eq!(&d.message.payload[..], b"one");
    d.settle(Settlement::Ack).await.unwrap();
    let mut rest = Vec::new();
    while let Some(d) = next(&mut src, Duration::from_secs(2)).await {
        rest.push(d.message.payload.clone());
        d.settle(Settlement::Ack).await.unwrap();
    }
    assert_eq!(rest, vec![Bytes::from_static(b"two")]);
    src.close().await;
    drop(src);

    // Everything acked: a third session sees nothing.
    let mut src = sluice::sources::mqtt::open(&cfg, "ack").await.unwrap();
    assert!(
        next(&mut src, Duration::from_secs(1)).await.is_none(),
        "nothing left after acks"
    );
}

/// Password file: the right password connects, a wrong one fails `open` fast
/// with the broker's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_right_and_wrong() {
    let b = Mosquitto::start(Opts {
        users: vec![("sluice".into(), "s3cret".into())],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("bad"), "nope\n").unwrap();
    for version in ["5", "3.1.1"] {
        for (file, ok) in [("good", true), ("bad", false)] {
            let mut cfg = source_cfg(&format!(
                "url = \"{}\"\ntopics = [\"t/#\"]\nversion = \"{version}\"\nusername = \"sluice\"\npassword = {{ file = \"{file}\" }}\nconnect_timeout = \"5s\"",
                b.url()
            ));
            cfg.resolve_paths(dir.path());
            let t = Instant::now();
            let r = sluice::sources::mqtt::open(&cfg, "auth").await;
            let mut sink = sink_cfg(&format!(
                "url = \"{}\"\ntopic = \"t/x\"\nversion = \"{version}\"\nusername = \"sluice\"\npassword = {{ file = \"{file}\" }}",
                b.url()
            ));
            sink.resolve_paths(dir.path());
            let rs = sluice::sinks::mqtt::open(&sink, "auth").await;
            if ok {
                r.expect("right password");
                rs.expect("right password (sink)");
            } else {
                let e = format!("{:#}", r.err().expect("wrong password must fail"));
                let es = format!("{:#}", rs.err().expect("wrong password must fail (sink)"));
                eprintln!(
                    "[mqtt auth {version}] wrong password after {:?}: {e}",
                    t.elapsed()
                );
                assert!(
                    t.elapsed() < Duration::from_secs(3),
                    "fails fast, took {:?}",
                    t.elapsed()
                );
                for e in [&e, &es] {
                    assert!(
                        e.contains("user name or password") || e.contains("not authorized"),
                        "clear error: {e}"
                    );
                    assert!(!e.contains("nope"), "secret not echoed: {e}");
                }
            }
        }
    }
}

/// Two sources on one MQTT 5 shared subscription split the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_between_sources() {
    let b = Mosquitto::start(Opts::default());
    let topic = common::unique("mqtt-share");
    let open = |id: &str| {
        source_cfg(&format!(
            "url = \"{}\"\ntopics = [\"$share/g/{topic}\"]\nclient_id = \"{id}\"\nclean_session = true",
            b.url()
        ))
    };
    let mut a = sluice::sources::mqtt::open(&open("share-a"), "share")
        .await
        .unwrap();
    let mut c = sluice::sources::mqtt::open(&open("share-b"), "share")
        .await
        .unwrap();
    let pubc = client(b.port, false, &format!("{topic}-pub"), false).await;
    let msgs: Vec<(Vec<u8>, Vec<(String, String)>)> = (0..100)
        .map(|i| (format!("s{i}").into_bytes(), Vec::new()))
        .collect();
    pubc.publish(&topic, 1, &msgs).await;
    let (mut na, mut nb) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while na + nb < 100 && Instant::now() < deadline {
        tokio::select! {
            Some(d) = next(&mut a, Duration::from_millis(500)) => { na += 1; d.settle(Settlement::Ack).await.unwrap(); }
            Some(d) = next(&mut c, Duration::from_millis(500)) => { nb += 1; d.settle(Settlement::Ack).await.unwrap(); }
            else => {}
        }
    }
    eprintln!("[mqtt shared subscription] 100 messages: {na} + {nb}");
    assert_eq!(na + nb, 100);
    assert!(na > 0 && nb > 0, "both instances got work: {na} + {nb}");
}

/// Sink → source over MQTT 5 keeps headers as user properties; QoS 0, 1 and 2
/// all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_user_properties_round_trip_and_qos_levels() {
    let b = Mosquitto::start(Opts::default());
    for qos in [0u8, 1, 2] {
        let topic = common::unique("mqtt-props");
        let mut src = sluice::sources::mqtt::open(
            &source_cfg(&format!(
                "url = \"{}\"\ntopics = [\"{topic}\"]\nqos = {qos}\nclean_session = true",
                b.url()
            )),
            "props",
        )
        .await
        .unwrap();
        let sink = sluice::sinks::mqtt::open(
            &sink_cfg(&format!(
                "url = \"{}\"\ntopic = \"{topic}\"\nqos = {qos}",
                b.url()
            )),
            "props",
        )
        .await
        .unwrap();
        let mut recs: Vec<Record> = (0..50).map(|i| record(&format!("q{qos}-{i}"))).collect();
        recs[0].headers = vec![
            Header::new("trace", "abc"),
            Header::new("trace", "def"),
            Header::new("é", "ü"),
        ];
        let t = Instant::now();
        sink.publish(&recs).await.expect("publish");
        let took = t.elapsed();
        let mut got = Vec::new();
        while got.len() < recs.len() {
            let Some(d) = next(&mut src, Duration::from_secs(5)).await else {
                break;
            };
            got.push(d.message.clone());
            d.settle(Settlement::Ack).await.unwrap();
        }
        eprintln!(
            "[mqtt qos {qos}] 50 records published (acked) in {took:?}, received {}",
            got.len()
        );
        assert_eq!(got.len(), 50, "qos {qos}");
        assert_eq!(
            got[0].headers, recs[0].headers,
            "user properties, order and repeats kept"
        );
        assert_eq!(got[49].payload, recs[49].payload);
        sink.close().await.unwrap();
    }
}

/// A message over Mosquitto's `message_size_limit`: MQTT 5 gets a refusal in
/// the PUBACK and the sink reports `rejected`; a record with no topic is
/// rejected too. MQTT 3.1.1 has no refusal (Mosquitto acks and drops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_rejected() {
    let b = Mosquitto::start(Opts {
        message_size_limit: Some(1000),
        ..Default::default()
    });
    let topic = common::unique("mqtt-big");
    let sink = sluice::sinks::mqtt::open(
        &sink_cfg(&format!("url = \"{}\"\ntopic = \"{topic}\"", b.url())),
        "big",
    )
    .await
    .unwrap();
    let big = record(&"x".repeat(5000));
    let e = sink
        .publish(std::slice::from_ref(&big))
        .await
        .expect_err("too large");
    eprintln!("[mqtt rejected v5] {e}");
    assert_eq!(e.class, FailureClass::Rejected, "{e}");
    // The connection survives: the next small message goes through.
    sink.publish(&[record("small")])
        .await
        .expect("small after big");
    let no_topic = sluice::sinks::mqtt::open(&sink_cfg(&format!("url = \"{}\"", b.url())), "big")
        .await
        .unwrap();
    let e = no_topic
        .publish(&[record("x")])
        .await
        .expect_err("no topic");
    assert_eq!(e.class, FailureClass::Rejected);
    let mut wild = record("x");
    wild.topic = Some("a/+".into());
    assert_eq!(
        sink.publish(&[wild]).await.expect_err("wildcard").class,
        FailureClass::Rejected
    );

    let v3 = sluice::sinks::mqtt::open(
        &sink_cfg(&format!(
            "url = \"{}\"\ntopic = \"{topic}\"\nversion = \"3.1.1\"",
            b.url()
        )),
        "big",
    )
    .await
    .unwrap();
    let r = v3.publish(std::slice::from_ref(&big)).await;
    eprintln!(
        "[mqtt rejected 3.1.1] oversize publish answered {r:?} (Mosquitto acks and drops it)"
    );
}

/// The sink fails with `sink` (transient) while the broker is down, and works
/// again after it restarts; the source reconnects and resumes its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_is_transient() {
    let mut b = Mosquitto::start(Opts {
        persistence: true,
        ..Default::default()
    });
    let topic = common::unique("mqtt-restart");
    let mut src = sluice::sources::mqtt::open(
        &source_cfg(&format!(
            "url = \"{}\"\ntopics = [\"{topic}\"]\nclient_id = \"{topic}\"\nreconnect_max = \"500ms\"",
            b.url()
        )),
        "restart",
    )
    .await
    .unwrap();
    let sink = sluice::sinks::mqtt::open(
        &sink_cfg(&format!(
            "url = \"{}\"\ntopic = \"{topic}\"\ntimeout = \"2s\"\nreconnect_max = \"500ms\"",
            b.url()
        )),
        "restart",
    )
    .await
    .unwrap();
    sink.publish(&[record("before")]).await.unwrap();
    let d = next(&mut src, Duration::from_secs(5))
        .await
        .expect("before");
    d.settle(Settlement::Ack).await.unwrap();
    b.stop();
    let e = sink
        .publish(&[record("during")])
        .await
        .expect_err("broker down");
    assert_eq!(e.class, FailureClass::Sink, "{e}");
    b.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match sink.publish(&[record("after")]).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.class, FailureClass::Sink);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("sink did not recover: {e}"),
        }
    }
    let d = next(&mut src, Duration::from_secs(10))
        .await
        .expect("after, via the resumed session");
    assert_eq!(&d.message.payload[..], b"after");
    d.settle(Settlement::Ack).await.unwrap();
}

/// A message queued in a session made before the source first connects
/// (what the conformance fixture does) is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_made_in_advance() {
    let b = Mosquitto::start(Opts::default());
    let topic = common::unique("mqtt-advance");
    create_session(b.port, false, &topic, &topic).await;
    let pubc = client(b.port, false, &format!("{topic}-pub"), false).await;
    pubc.publish(&topic, 1, &[(b"early".to_vec(), vec![])])
        .await;
    let mut src = sluice::sources::mqtt::open(
        &source_cfg(&format!(
            "url = \"{}\"\ntopics = [\"{topic}\"]\nclient_id = \"{topic}\"",
            b.url()
        )),
        "advance",
    )
    .await
    .unwrap();
    let d = next(&mut src, Duration::from_secs(5)).await.expect("early");
    assert_eq!(&d.message.payload[..], b"early");
    d.settle(Settlement::Ack).await.unwrap();
}

/// A dead-letter record with a header MQTT 5 cannot carry (a value that is
/// not UTF-8) is sent with that header encoded (`sluice-encoded-header`:
/// base64 name `=` base64 value) instead of being refused for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_with_a_binary_header_is_sent_encoded() {
    use std::sync::Arc;
    let b = Mosquitto::start(Opts::default());
    let topic = common::unique("mqtt-dlq");
    let mut src = sluice::sources::mqtt::open(
        &source_cfg(&format!(
            "url = \"{}\"\ntopics = [\"{topic}\"]\nqos = 1\nclean_session = true",
            b.url()
        )),
        "dlq-reader",
    )
    .await
    .unwrap();
    let dlq = sluice::sinks::mqtt::open(
        &sink_cfg(&format!(
            "url = \"{}\"\ntopic = \"{topic}\"\nqos = 1",
            b.url()
        )),
        "dlq",
    )
    .await
    .unwrap();
    let mut m = sluice::message::Message::new("in", "bad apple");
    m.headers.push(Header::new("bin", vec![0xffu8, 0]));
    m.headers.push(Header::new("trace", "abc"));
    let plugin = run::plugin(&common::plugin("fatal-on"), &[], Duration::from_secs(5)).await;
    let p = run::start(
        Box::new(sluice::sources::memory::MemorySource::new([m])),
        plugin,
        None,
        Some(Arc::new(dlq)),
        sluice::config::ErrorsConfig::default(),
        run::retry(1, Duration::from_millis(10)),
    );
    let snap = p
        .ended(Duration::from_secs(30))
        .await
        .expect("pipeline ends");
    assert_eq!(snap.dead_lettered, 1, "{snap:?}");
    let d = next(&mut src, Duration::from_secs(10))
        .await
        .expect("the dead letter arrives");
    assert_eq!(&d.message.payload[..], b"bad apple");
    let get = |k: &str| d.message.header(k).map(|v| v.to_vec());
    assert_eq!(get("trace"), Some(b"abc".to_vec()));
    assert_eq!(get("sluice-encoded-header"), Some(b"Ymlu=/wA=".to_vec()));
    assert_eq!(get("sluice-error-class"), Some(b"fatal".to_vec()));
    d.settle(Settlement::Ack).await.unwrap();
}

/// QoS 2 end to end at the source: a message's PUBREC goes out only when it
/// is settled. The connection is lost (no DISCONNECT) with one message
/// settled and two not: the broker sends the two again, never the settled
/// one; once those are settled too, a third connection gets nothing — each
/// message acknowledged exactly once across the reconnect. MQTT 5 and 3.1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_pubrec_waits_for_the_settle_across_a_reconnect() {
    let b = Mosquitto::start(Opts::default());
    for v311 in [false, true] {
        let version = if v311 { "3.1.1" } else { "5" };
        let topic = common::unique("mqtt-qos2");
        let cfg = source_cfg(&format!(
            "url = \"{}\"\ntopics = [\"{topic}\"]\nqos = 2\nversion = \"{version}\"\nclient_id = \"{topic}\"",
            b.url()
        ));
        let mut src = sluice::sources::mqtt::open(&cfg, "qos2").await.unwrap();
        let pubc = client(b.port, v311, &format!("{topic}-pub"), false).await;
        let msgs: Vec<(Vec<u8>, Vec<(String, String)>)> = ["m0", "m1", "m2"]
            .iter()
            .map(|p| (p.as_bytes().to_vec(), Vec::new()))
            .collect();
        pubc.publish(&topic, 2, &msgs).await;
        let mut held = Vec::new();
        for want in ["m0", "m1", "m2"] {
            let d = next(&mut src, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("MQTT {version}: {want}"));
            assert_eq!(&d.message.payload[..], want.as_bytes(), "MQTT {version}");
            held.push(d);
        }
        let m0 = held.remove(0);
        m0.settle(Settlement::Ack).await.unwrap();
        // m0's PUBREC, the broker's PUBREL and our PUBCOMP.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for d in held {
            let (_, _, handle) = d.into_parts();
            std::mem::forget(handle); // never settled
        }
        drop(src);

        let mut src = sluice::sources::mqtt::open(&cfg, "qos2").await.unwrap();
        let mut again = Vec::new();
        while let Some(d) = next(&mut src, Duration::from_secs(3)).await {
            again.push(String::from_utf8_lossy(&d.message.payload).into_owned());
            d.settle(Settlement::Ack).await.unwrap();
        }
        assert_eq!(
            again,
            ["m1", "m2"],
            "MQTT {version}: the unsettled two again, the settled one never"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        src.close().await;
        drop(src);

        let mut src = sluice::sources::mqtt::open(&cfg, "qos2").await.unwrap();
        let left = next(&mut src, Duration::from_secs(2)).await;
        assert!(
            left.is_none(),
            "MQTT {version}: nothing left once all three were settled, got {:?}",
            left.map(|d| d.message.payload.clone())
        );
        src.close().await;
        eprintln!(
            "[mqtt qos 2 {version}] 3 sent, 1 settled before the cut, 2 redelivered, 0 after"
        );
    }
}

/// A `sluice run` pipeline file over an MQTT 5 shared subscription: tag
/// `tag` on every output, its own `client_id`, each message waiting for its
/// output's PUBACK (so a stream takes long enough to be cut in its middle).
fn shared_pipeline(dir: &std::path::Path, b: &Mosquitto, u: &str, tag: &str) -> std::path::PathBuf {
    let file = dir.join(format!("share-{tag}.toml"));
    std::fs::write(
        &file,
        format!(
            r#"name = "share-{tag}"
[source]
type = "mqtt"
url = "{url}"
topics = ["$share/g/{u}/in"]
qos = 1
version = "5"
client_id = "{u}-{tag}"
[handler]
plugin = "{plugin}"
config = {{ tag = "{tag}" }}
batch = 1
publish_window = 1
[sink]
type = "mqtt"
url = "{url}"
topic = "{u}/out"
qos = 1
[dead_letter]
type = "file"
path = "{dlq}"
"#,
            url = b.url(),
            plugin = common::plugin("tagger").display(),
            dlq = dir.join(format!("dlq-{tag}.jsonl")).display(),
        ),
    )
    .unwrap();
    file
}

/// MQTT 5 shared subscription across two `sluice` processes: both take a
/// share, `a` is SIGKILLed in the middle of a second wave, `b` takes the
/// rest of the stream; what `a` held unacknowledged stays in its session
/// (missing until then) and comes out when `a` restarts with its
/// `client_id`. Nothing lost; duplicates within `a`'s in-flight window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_survives_sigkill_and_restart_of_one_instance() {
    let b = Mosquitto::start(Opts::default());
    let dir = tempfile::tempdir().unwrap();
    let u = common::unique("mqtt-scale");
    let cap = client(b.port, false, &format!("{u}-cap"), false).await;
    cap.subscribe(&format!("{u}/out")).await;
    let pubc = client(b.port, false, &format!("{u}-pub"), false).await;
    let (fa, fb) = (
        shared_pipeline(dir.path(), &b, &u, "a"),
        shared_pipeline(dir.path(), &b, &u, "b"),
    );
    let pa = common::spawn_sluice(&fa);
    let pb = common::spawn_sluice(&fb);
    let outputs = || -> Vec<String> {
        cap.received()
            .iter()
            .map(|(_, p, _)| String::from_utf8_lossy(p).into_owned())
            .collect()
    };
    let tagged = |out: &[String], t: &str| out.iter().filter(|p| p.starts_with(t)).count();
    let logs = || {
        ["a", "b"]
            .map(|t| {
                std::fs::read_to_string(dir.path().join(format!("share-{t}.log")))
                    .unwrap_or_default()
            })
            .join("\n")
    };

    // A message published before a group member subscribed has nowhere to go.
    let deadline = Instant::now() + Duration::from_secs(60);
    while logs().matches("connected and subscribed").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the instances never subscribed; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Wave 1: batches of 20 until both instances answered.
    let mut sent: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tagged(&outputs(), "a:") == 0 || tagged(&outputs(), "b:") == 0 {
        assert!(
            Instant::now() < deadline,
            "the two instances never split the stream; logs:\n{}",
            logs()
        );
        let batch: Vec<(Vec<u8>, Vec<(String, String)>)> = (sent.len()..sent.len() + 20)
            .map(|i| (format!("w1-{i:05}").into_bytes(), Vec::new()))
            .collect();
        pubc.publish(&format!("{u}/in"), 1, &batch).await;
        sent.extend(
            batch
                .into_iter()
                .map(|(p, _)| String::from_utf8(p).unwrap()),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wave1 = sent.len();

    // Wave 2; `a` is killed once it answered 30 of it.
    let wave2: Vec<(Vec<u8>, Vec<(String, String)>)> = (0..3000)
        .map(|i| (format!("w2-{i:05}").into_bytes(), Vec::new()))
        .collect();
    pubc.publish(&format!("{u}/in"), 1, &wave2).await;
    sent.extend(
        wave2
            .into_iter()
            .map(|(p, _)| String::from_utf8(p).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while tagged(&outputs(), "a:w2-") < 30 {
        assert!(
            Instant::now() < deadline,
            "wave 2 does not progress; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pa.signal("KILL");
    drop(pa);
    let unique = |out: &[String]| {
        out.iter()
            .map(|p| p.get(2..).unwrap_or_default().to_string())
            .collect::<std::collections::HashSet<_>>()
    };
    let at_kill = unique(&outputs()).len();
    assert!(
        at_kill < sent.len() * 3 / 4,
        "killed mid-stream: {at_kill} of {} out at the kill",
        sent.len()
    );

    // `b` alone: until its output stops growing.
    let mut last = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    while last.1.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
        let n = outputs().len();
        if n != last.0 {
            last = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_restart = outputs();
    let held = sent.len() - unique(&before_restart).len();
    assert!(
        held > 0,
        "the killed instance's unacknowledged messages wait in its session"
    );

    // `a` again, with its client_id: its session's messages come out.
    let pa = common::spawn_sluice(&fa);
    let deadline = Instant::now() + Duration::from_secs(60);
    while unique(&outputs()).len() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    pa.signal("TERM");
    pb.signal("TERM");
    let got = outputs();
    let after_restart_by_a = tagged(&got[before_restart.len()..], "a:");
    let mut count: std::collections::HashMap<&str, usize> = Default::default();
    for p in &got {
        *count.entry(p.get(2..).unwrap_or_default()).or_default() += 1;
    }
    let lost: Vec<&String> = sent
        .iter()
        .filter(|p| !count.contains_key(p.as_str()))
        .collect();
    let dups: usize = count.values().map(|c| c - 1).sum();
    common::report(
        &format!(
            "mqtt shared subscription (wave 1 {wave1}; {at_kill} out at the kill of a; \
             {held} held in a's session; {after_restart_by_a} by a after its restart)"
        ),
        sent.len(),
        got.len(),
        0,
        0,
        dups,
    );
    assert!(
        lost.is_empty(),
        "lost {} messages, e.g. {:?}; logs:\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        logs()
    );
    assert!(
        after_restart_by_a >= held,
        "the restarted instance put out what its session held ({held}), got {after_restart_by_a}"
    );
    // a's receive window (64) and its worker's queue (16).
    assert!(
        dups <= 64 + 16,
        "{dups} duplicates, more than a's in-flight window"
    );
}

/// TLS: Mosquitto serves TLS with a certificate for 127.0.0.1 signed by a
/// test CA. Sink and source (MQTT 5 and 3.1.1) connect over `mqtts://` with
/// that CA as `tls.ca_file` and carry messages; with another CA both fail
/// `open` at once with an error that says it is about the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_and_an_unknown_ca_fails_open() {
    let ca = common::tls::TestCa::new();
    let b = Mosquitto::start(Opts {
        tls: Some((
            ca.file("ca.pem"),
            ca.file("server.pem"),
            ca.file("server.key"),
        )),
        ..Default::default()
    });
    let url = format!("mqtts://127.0.0.1:{}", b.tls_port.unwrap());
    for version in ["5", "3.1.1"] {
        let topic = common::unique("mqtt-tls");
        let tls = |pem: &str| format!("tls = {{ ca_file = \"{}\" }}", ca.file(pem).display());
        let src_cfg = |pem: &str| {
            source_cfg(&format!(
                "url = \"{url}\"\ntopics = [\"{topic}\"]\nqos = 1\nversion = \"{version}\"\nclean_session = true\nconnect_timeout = \"5s\"\n{}",
                tls(pem)
            ))
        };
        let sink_cfg_for = |pem: &str| {
            sink_cfg(&format!(
                "url = \"{url}\"\ntopic = \"{topic}\"\nqos = 1\nversion = \"{version}\"\nconnect_timeout = \"5s\"\n{}",
                tls(pem)
            ))
        };
        let mut src = sluice::sources::mqtt::open(&src_cfg("ca.pem"), "tls")
            .await
            .expect("source over TLS");
        let sink = sluice::sinks::mqtt::open(&sink_cfg_for("ca.pem"), "tls")
            .await
            .expect("sink over TLS");
        let recs: Vec<Record> = (0..20).map(|i| record(&format!("tls-{i}"))).collect();
        sink.publish(&recs).await.expect("publish over TLS");
        let mut got = Vec::new();
        while got.len() < recs.len() {
            let Some(d) = next(&mut src, Duration::from_secs(5)).await else {
                break;
            };
            got.push(d.message.payload.clone());
            d.settle(Settlement::Ack).await.unwrap();
        }
        let want: Vec<Bytes> = recs.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(
            got, want,
            "MQTT {version}: 20 messages sink → source over TLS"
        );
        sink.close().await.unwrap();
        src.close().await;

        // A refused certificate is retried like a broker not answering yet:
        // each open fails within its `connect_timeout` (5 s), naming why.
        let timed = |t: Instant| {
            let took = t.elapsed();
            assert!(
                took < Duration::from_secs(7),
                "within connect_timeout: {took:?}"
            );
            took
        };
        let t = Instant::now();
        let e = format!(
            "{:#}",
            sluice::sources::mqtt::open(&src_cfg("other.pem"), "tls")
                .await
                .err()
                .expect("an unknown CA must fail the source")
        );
        let took = timed(t);
        let t = Instant::now();
        let es = format!(
            "{:#}",
            sluice::sinks::mqtt::open(&sink_cfg_for("other.pem"), "tls")
                .await
                .err()
                .expect("an unknown CA must fail the sink")
        );
        timed(t);
        eprintln!("[mqtt tls {version}] unknown CA refused in {took:?}: {e}");
        for e in [&e, &es] {
            let l = e.to_lowercase();
            assert!(
                l.contains("certificate") || l.contains("tls"),
                "the error says it is about TLS: {e}"
            );
        }
    }
}
