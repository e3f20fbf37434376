//! A Kafka member that holds no partition consumes nothing: two pipelines
//! of one process in one consumer group on a one-partition topic. The one
//! without the partition is not ready, its lag reads unknown (never 0), and
//! past the session timeout the log and `/pipelines` say why.

use crate::common;

use std::time::Duration;

use common::admin::{http, metric, pipeline, spawn, wait_until};
use common::kafka::{KafkaBroker, Kind, TestRecord};

fn pipeline_file(dir: &std::path::Path, broker: &KafkaBroker, name: &str, topic: &str) -> String {
    let f = dir.join(format!("{name}.toml"));
    std::fs::write(
        &f,
        format!(
            "name = \"{name}\"\n[source]\n{}\n[handler]\nplugin = \"{}\"\n\
             [sink]\ntype = \"file\"\npath = \"{d}/{name}.out\"\n\
             [dead_letter]\ntype = \"file\"\npath = \"{d}/{name}.dlq\"\n",
            common::kafka::source_toml(broker, topic, "readiness", ""),
            common::plugin("echo").display(),
            d = dir.display(),
        ),
    )
    .unwrap();
    f.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_partitions_is_not_ready_and_says_so() {
    let broker = KafkaBroker::start(Kind::Noida);
    let topic = common::unique("ready");
    broker.create_topic(&topic, 1).await;
    let records: Vec<TestRecord> = (0..10).map(|i| TestRecord::new(format!("m{i}"))).collect();
    broker.produce(&topic, Some(0), &records).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (
        pipeline_file(d, &broker, "member-a", &topic),
        pipeline_file(d, &broker, "member-b", &topic),
    );
    let port = common::free_port();
    let log = d.join("sluice.log");
    let proc = spawn(&[&a, &b], port, &log);
    let out_dir = d.to_path_buf();
    let outputs = move |name: &str| {
        std::fs::read_to_string(out_dir.join(format!("{name}.out")))
            .map_or(0, |t| t.lines().count())
    };
    let (holder, idle) = tokio::task::spawn_blocking({
        let outputs = outputs.clone();
        move || {
            wait_until(
                "one member to consume the 10 records",
                Duration::from_secs(90),
                || outputs("member-a") + outputs("member-b") >= 10,
            );
            if outputs("member-a") >= 10 {
                ("member-a", "member-b")
            } else {
                ("member-b", "member-a")
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(outputs(idle), 0, "one partition, one member consumes it");
    let (p, i) = tokio::task::spawn_blocking(move || {
        // The session timeout is 6 s; statistics (the lag) come every 5 s.
        wait_until("the idle member to say so", Duration::from_secs(60), || {
            pipeline(port, idle).is_some_and(|p| {
                p["source_idle"]
                    .as_str()
                    .is_some_and(|s| s.contains("no partitions assigned"))
            }) && pipeline(port, holder).is_some_and(|p| p["source_lag"].is_u64())
        });
        (
            pipeline(port, holder).unwrap(),
            pipeline(port, idle).unwrap(),
        )
    })
    .await
    .unwrap();
    eprintln!(
        "[kafka readiness] holder {holder}: ready {} lag {}; idle {idle}: ready {} lag {} ({})",
        p["ready"], p["source_lag"], i["ready"], i["source_lag"], i["source_idle"]
    );
    assert_eq!(p["ready"], true, "{p}");
    assert_eq!(p["source_lag"], 0, "{p}");
    assert!(p["source_idle"].is_null(), "{p}");
    assert_eq!(i["ready"], false, "{i}");
    assert!(i["source_lag"].is_null(), "unknown, not 0: {i}");
    let (status, body) = http(port, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(idle) && body.contains("no partitions assigned"),
        "{body}"
    );
    let (_, m) = http(port, "GET", "/metrics", None);
    assert_eq!(
        metric(&m, &format!("sluice_pipeline_up{{pipeline=\"{idle}\"}}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, &format!("sluice_pipeline_up{{pipeline=\"{holder}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, &format!("sluice_source_lag{{pipeline=\"{idle}\"}}")),
        None,
        "{m}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains(idle) && l.contains("no partitions assigned for"))
            .count(),
        1,
        "logged once:\n{text}"
    );
    drop(proc);
}
