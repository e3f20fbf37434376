//! NATS cluster failover: three `nats-server` nodes on loopback (routes
//! between them, JetStream on each with its own store), every stream in 3
//! replicas, Sluice given all three URLs. One node is killed (SIGKILL)
//! mid-stream: the one Sluice's source is connected to, or the input
//! stream's leader. JetStream loses nothing (RPO 0) and the output pauses
//! less than 10 s after the kill (the first output after it, and every gap
//! between outputs after it).

use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

use crate::account::{assert_recovered, through_fault, with_bad};
use crate::capture::{Got, js_produce, js_topics_r};
use crate::common;
use crate::common::nats::stream_of;
use crate::pipelines::{BREAKER, RETRY, Urls, handler, js_pipeline, write_pipeline};

/// One node: its client, route and monitoring ports, and its process.
struct Node {
    name: String,
    port: u16,
    monitor: u16,
    child: Option<Child>,
}

/// Three clustered nodes in one temporary directory; killed by PID on drop.
struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
        let route_list = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let (name, port, monitor) = (format!("n{i}"), common::free_port(), common::free_port());
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
                     jetstream {{ store_dir: {store:?} }}\n\
                     cluster {{ name: sluice, listen: \"127.0.0.1:{route}\", routes: [{route_list}] }}\n"
                ),
            )
            .expect("write node conf");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn nats-server (apt-get install nats-server)");
            nodes.push(Node {
                name,
                port,
                monitor,
                child: Some(child),
            });
        }
        for n in &nodes {
            assert!(
                common::wait_for_port(n.port, Duration::from_secs(10)),
                "node {} did not start",
                n.name
            );
        }
        Cluster { nodes, _dir: dir }
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Kills node `i` (SIGKILL, by PID) and waits for it to exit.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The node whose `/connz` lists a client named `client`.
    fn node_of_client(&self, client: &str) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.child.is_some()
                && monitor_get(n.monitor, "/connz?limit=1024").contains(&format!("\"{client}\""))
        })
    }

    fn index_of(&self, server: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A GET on a node's monitoring port; empty when it does not answer.
fn monitor_get(port: u16, path: &str) -> String {
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if c.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = c.read_to_string(&mut body);
    body
}

/// A client of the whole cluster, and its JetStream context once the
/// cluster can place a 3-replica stream (its meta leader elected).
async fn cluster_js(c: &Cluster) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(c.urls())
        .await
        .expect("connect to the cluster");
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = js
            .create_stream(stream::Config {
                name: "READY_PROBE".into(),
                subjects: vec!["ready.probe".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await;
        if probe.is_ok() {
            let _ = js.delete_stream("READY_PROBE").await;
            return js;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never placed a 3-replica stream: {probe:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Which node a test kills.
#[derive(Clone, Copy)]
enum Victim {
    /// The node Sluice's source connection is on.
    Connected,
    /// The leader of the input stream.
    StreamLeader,
}

/// JetStream through the cluster; `victim` killed once a quarter of the
/// messages came out. Nothing lost, only the bad messages dead-lettered,
/// the first output within 10 s of the kill.
async fn jetstream_failover(name: &str, victim: Victim) {
    let mut cluster = Cluster::start();
    let js = cluster_js(&cluster).await;
    let t = js_topics_r(&js, "jsn", 3).await;
    let msgs = with_bad(3000);
    js_produce(&js, &t.input, &msgs).await;
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let body = js_pipeline(
        &t,
        &Urls::all("CLUSTER"),
        ("ack_wait = \"5s\"\n", "timeout = \"5s\"\n"),
        &handler("fatal-on", ""),
        &format!("{RETRY}{BREAKER}"),
    )
    .replace("url = \"CLUSTER\"", &format!("urls = [{urls}]"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_pipeline(dir.path(), name, &body);
    let input = stream_of(&t.input);
    let (tally, rec, killed) =
        through_fault(name, &file, &msgs, (&t.out, &t.dead), (60, 120), async {
            let i = match victim {
                Victim::Connected => cluster
                    .node_of_client(&format!("sluice:{name}:source"))
                    .expect("no node lists Sluice's source connection"),
                Victim::StreamLeader => {
                    let mut s = js.get_stream(&input).await.expect("input stream");
                    let info = s.info().await.expect("stream info");
                    let leader = info
                        .cluster
                        .as_ref()
                        .and_then(|c| c.leader.clone())
                        .expect("the input stream has a leader");
                    cluster.index_of(&leader).expect("leader is a node")
                }
            };
            let killed = cluster.nodes[i].name.clone();
            cluster.kill(i);
            (killed, Instant::now())
        })
        .await;
    let (killed, at) = killed;
    let gap = longest_pause(&t.out.seen.all(), at);
    eprintln!(
        "[{name}] killed {killed}; first output {rec:?} after the kill, longest pause in the output after it {gap:?}"
    );
    assert_recovered(name, &tally, rec, &file, &msgs, &t.dead, "the kill");
    assert!(
        gap < Duration::from_secs(10),
        "[{name}] the output paused {gap:?} after the kill"
    );
    if let Victim::Connected = victim {
        let log = std::fs::read_to_string(file.with_extension("log")).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains("NATS disconnected")
                    && l.contains(&format!("sluice:{name}:source"))),
            "[{name}] Sluice's source never lost its connection: the wrong node was killed"
        );
    }
}

/// The longest time without output from `from` to the last output: from
/// `from` to the first output after it, or between two outputs after it.
fn longest_pause(out: &[Got], from: Instant) -> Duration {
    let mut at: Vec<Instant> = out.iter().map(|g| g.at).filter(|t| *t >= from).collect();
    at.sort();
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for t in at {
        longest = longest.max(t - prev);
        prev = t;
    }
    longest
}

/// The node Sluice's source is connected to killed mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_cluster_connected_node_killed() {
    jetstream_failover("jetstream-cluster-connected-killed", Victim::Connected).await;
}

/// The input stream's leader killed mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_cluster_stream_leader_killed() {
    jetstream_failover("jetstream-cluster-leader-killed", Victim::StreamLeader).await;
}
