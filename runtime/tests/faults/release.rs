//! A QoS 2 release lost with a connection: Sluice's MQTT source at QoS 2
//! reaches Mosquitto through a TCP proxy. Mid-stream the proxy holds every
//! chunk for 1 s and, 4 s later, cuts the connection, so PUBRECs Sluice
//! sent have reached the broker while the broker's PUBRELs for them have
//! not reached Sluice. On the resumed session the broker sends those
//! PUBRELs again and the client must answer each with PUBCOMP, although
//! the packet ids belong to a connection it no longer has. A client that
//! drops a connection bringing a PUBREL it does not know can never resume
//! the session: every reconnect ends the same way and nothing more comes.
//! The broker also sends again every message whose PUBREC it did not get
//! (Mosquitto 2.0 keeps far more than the Receive Maximum in flight, so
//! thousands at once); a message Sluice already settled is acknowledged
//! again, not handled again.

use std::time::Duration;

use crate::account::{
    MQTT_WINDOW, WORKER_QUEUE, assert_recovered, log_of, through_fault, with_bad,
};
use crate::capture::{Topics, mqtt_capture};
use crate::common;
use crate::common::mqtt::{Mosquitto, Opts, client};
use crate::common::proxy::Proxy;
use crate::pipelines::{BREAKER, RETRY, Urls, handler, mqtt_pipeline, write_pipeline};
use crate::switchover::session;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_qos2_release_lost_with_the_connection() {
    let name = "mqtt-qos2-release-lost";
    let b = Mosquitto::start(Opts {
        debug_log: true,
        ..Opts::default()
    });
    let proxy = Proxy::start(b.port);
    let base = common::unique("mrel");
    let [input, output, dlq] = ["in", "out", "dlq"].map(|w| format!("{base}/{w}"));
    let t = Topics {
        base: base.clone(),
        input: input.clone(),
        output: output.clone(),
        dlq: dlq.clone(),
        out: mqtt_capture(b.port, &output).await,
        dead: mqtt_capture(b.port, &dlq).await,
    };
    // Sluice's session subscribed at QoS 2, so what is queued for it stays
    // QoS 2; then the input, published at QoS 2.
    session(b.port, &t.client_id(), &input, 2).await;
    let msgs = with_bad(20_000);
    let producer = client(b.port, false, &common::unique("producer"), false).await;
    let batch: Vec<common::mqtt::Msg> = msgs.iter().map(|m| (m.clone(), vec![])).collect();
    producer.publish(&input, 2, &batch).await;
    producer.disconnect().await;
    let (direct, through) = (b.url(), format!("mqtt://{}", proxy.addr()));
    let urls = Urls {
        source: &through,
        ..Urls::all(&direct)
    };
    let body = mqtt_pipeline(
        &t,
        &urls,
        "2s",
        &handler("fatal-on", ""),
        &format!("{RETRY}{BREAKER}"),
    )
    .replace("qos = 1", "qos = 2");
    assert_eq!(body.matches("qos = 2").count(), 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_pipeline(dir.path(), name, &body);
    let (tally, rec, at_cut) =
        through_fault(name, &file, &msgs, (&t.out, &t.dead), (60, 60), async {
            // With every chunk held 1 s, each QoS 2 exchange (PUBLISH, PUBREC,
            // PUBREL, PUBCOMP) takes seconds: after 2 s some of the window is
            // always at the PUBREL on its way to Sluice when the cut comes.
            proxy.delay(Duration::from_secs(1));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let at_cut = t.out.seen.unique() + t.dead.seen.unique();
            proxy.cut();
            proxy.delay(Duration::ZERO);
            proxy.restore();
            at_cut
        })
        .await;
    // The cut came mid-stream: most of the stream was still to come, and
    // only a resumed session could bring it.
    assert!(
        at_cut + msgs.len() / 4 < msgs.len(),
        "[{name}] {at_cut} of {} were out at the cut: the fault came too late to tell",
        msgs.len()
    );
    // The fault happened: the broker sent some PUBREL to Sluice twice (on
    // the cut connection, and again on the resumed session).
    let client_id = t.client_id();
    let mut sent = std::collections::HashMap::<String, usize>::new();
    for l in b.log().lines() {
        if let Some(rest) = l.split(&format!("Sending PUBREL to {client_id} ")).nth(1) {
            *sent.entry(rest.to_string()).or_default() += 1;
        }
    }
    let again = sent.values().filter(|n| **n > 1).count();
    let reconnects = std::fs::read_to_string(file.with_extension("log"))
        .unwrap_or_default()
        .matches("mqtt source reconnected")
        .count();
    eprintln!(
        "[{name}] PUBRELs the broker sent again on the resumed session: {again}; Sluice's source reconnected {reconnects} times"
    );
    assert!(
        again > 0,
        "[{name}] no PUBREL came again after the cut: the fault was not injected; log:\n{}",
        log_of(&file)
    );
    // Exactly once for what was settled: a message whose PUBREC was lost
    // comes again and is acknowledged, not handled again. Only a message
    // still being handled at the cut (the source's window and the worker's
    // queue) can come out twice: its copy arrives before it is settled.
    assert!(
        tally.dup <= 64 + WORKER_QUEUE,
        "[{name}] {} duplicates: settled QoS 2 messages were handled again",
        tally.dup
    );
    assert_recovered(
        name,
        (&tally, MQTT_WINDOW),
        rec,
        &file,
        &msgs,
        &t.dead,
        "the cut",
    );
}
