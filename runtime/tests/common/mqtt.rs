//! Helpers for the mqtt tests: a private Mosquitto on a free port (killed by
//! PID on drop) and small rumqttc clients to publish, capture and pre-create
//! sessions.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

use super::{Proc, free_port, wait_for_port};

/// How to configure a private Mosquitto.
#[derive(Default, Clone)]
pub struct Opts {
    /// Users for a password file; none = anonymous access.
    pub users: Vec<(String, String)>,
    /// Keep sessions and queued messages across restarts (a SIGTERM saves them).
    pub persistence: bool,
    /// With `persistence`: write the persistence file after every change
    /// (`autosave_on_changes`), not once a second, so a SIGKILL loses only
    /// what changed since the last write, not a second of acknowledged work.
    pub save_every_change: bool,
    /// `message_size_limit` in bytes.
    pub message_size_limit: Option<usize>,
    /// Log every packet (`log_type debug`), to see what the broker sent.
    pub debug_log: bool,
    /// A second listener serving TLS with this (CA, certificate, key), on
    /// [`Mosquitto::tls_port`]; the first stays plain for the test clients.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// A private Mosquitto. Killed (SIGKILL) on drop.
pub struct Mosquitto {
    pub port: u16,
    /// The TLS listener's port, when started with [`Opts::tls`].
    pub tls_port: Option<u16>,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    proc: Option<Proc>,
}

impl Mosquitto {
    /// Starts one on a free port and waits until it accepts connections.
    pub fn start(opts: Opts) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\n\
             user root\n\
             max_queued_messages 1000000\n\
             max_inflight_messages 100\n\
             persistent_client_expiration 1h\n\
             log_dest file {log}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            log = dir.path().join("mosquitto.log").display()
        );
        if opts.users.is_empty() {
            conf += "allow_anonymous true\n";
        } else {
            let pw = dir.path().join("passwd");
            std::fs::write(&pw, "").expect("password file");
            for (u, p) in &opts.users {
                let ok = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&pw)
                    .arg(u)
                    .arg(p)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run mosquitto_passwd")
                    .success();
                assert!(ok, "mosquitto_passwd failed");
            }
            conf += &format!("allow_anonymous false\npassword_file {}\n", pw.display());
        }
        if opts.persistence {
            conf += &format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            );
            if opts.save_every_change {
                conf += "autosave_on_changes true\n";
            }
        }
        if opts.debug_log {
            conf += "log_type debug\n";
        }
        if let Some(n) = opts.message_size_limit {
            conf += &format!("message_size_limit {n}\n");
        }
        let tls_port = opts.tls.as_ref().map(|(ca, cert, key)| {
            let p = free_port();
            conf += &format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                ca.display(),
                cert.display(),
                key.display()
            );
            p
        });
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            tls_port,
            dir,
            conf: conf_path,
            proc: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.proc = Some(Proc { child });
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)),
            "mosquitto did not listen on {}; log:\n{}",
            self.port,
            self.log()
        );
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops it with SIGTERM (Mosquitto saves its persistence file) and waits.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("TERM");
            p.wait_timeout(Duration::from_secs(10));
        }
    }

    /// Kills it (SIGKILL: nothing saved since the last autosave) and waits.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            p.wait_timeout(Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port with the same configuration.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

/// A received publish: topic, payload, MQTT 5 user properties.
pub type Got = (String, Bytes, Vec<(String, String)>);
/// A message to publish: payload and MQTT 5 user properties.
pub type Msg = (Vec<u8>, Vec<(String, String)>);

/// A v5 or v3.1.1 test client's event loop, polled in the background,
/// recording received publishes and acks.
#[derive(Default)]
struct Seen {
    publishes: Vec<Got>,
    acks: usize,
    suback: bool,
    connack: Option<bool>,
    error: Option<String>,
}

/// A test client (MQTT 5 unless `v311`), always polled in the background.
pub struct TestClient {
    pub v5: Option<AsyncClient>,
    pub v4: Option<rumqttc::AsyncClient>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects a client; `session` = keep a persistent session (1 h).
pub async fn client(port: u16, v311: bool, id: &str, session: bool) -> TestClient {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let (v5, v4, task) = if v311 {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(!session)
            .set_max_packet_size(1 << 24, 1 << 24)
            .set_inflight(100);
        let (c, mut l) = rumqttc::AsyncClient::new(o, 10_000);
        let task = tokio::spawn(async move {
            loop {
                match l.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => s
                        .lock()
                        .unwrap()
                        .publishes
                        .push((p.topic, p.payload, Vec::new())),
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
                    | Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_))) => {
                        s.lock().unwrap().acks += 1
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        s.lock().unwrap().suback = true
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                        s.lock().unwrap().connack = Some(c.session_present)
                    }
                    Ok(_) => {}
                    Err(e) => {
                        s.lock().unwrap().error = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        (None, Some(c), task)
    } else {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_start(!session)
            .set_max_packet_size(Some(1 << 24))
            .set_outgoing_inflight_upper_limit(100);
        if session {
            o.set_session_expiry_interval(Some(3600));
        }
        let (c, l) = AsyncClient::new(o, 10_000);
        let task = tokio::spawn(poll5(l, s));
        (Some(c), None, task)
    };
    let c = TestClient { v5, v4, seen, task };
    c.wait(|s| s.connack.is_some(), "CONNACK").await;
    c
}

async fn poll5(mut l: EventLoop, s: Arc<Mutex<Seen>>) {
    loop {
        match l.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let props = p.properties.map(|p| p.user_properties).unwrap_or_default();
                s.lock().unwrap().publishes.push((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    p.payload,
                    props,
                ))
            }
            Ok(Event::Incoming(Packet::PubAck(_))) | Ok(Event::Incoming(Packet::PubComp(_))) => {
                s.lock().unwrap().acks += 1
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => s.lock().unwrap().suback = true,
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                s.lock().unwrap().connack = Some(c.session_present)
            }
            Ok(_) => {}
            Err(e) => {
                s.lock().unwrap().error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl TestClient {
    async fn wait(&self, f: impl Fn(&Seen) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let s = self.seen.lock().unwrap();
                if f(&s) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "test client: no {what} within 20s (last error: {:?})",
                    s.error
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Subscribes at QoS 1 and waits for the SUBACK.
    pub async fn subscribe(&self, filter: &str) {
        self.seen.lock().unwrap().suback = false;
        if let Some(c) = &self.v5 {
            c.subscribe_many([Filter::new(filter, QoS::AtLeastOnce)])
                .await
                .unwrap();
        } else if let Some(c) = &self.v4 {
            c.subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        self.wait(|s| s.suback, "SUBACK").await;
    }

    /// Publishes at `qos` and, for QoS 1/2, waits until all were acknowledged.
    pub async fn publish(&self, topic: &str, qos: u8, msgs: &[Msg]) {
        let before = self.seen.lock().unwrap().acks;
        for (payload, props) in msgs {
            if let Some(c) = &self.v5 {
                let q = match qos {
                    0 => QoS::AtMostOnce,
                    2 => QoS::ExactlyOnce,
                    _ => QoS::AtLeastOnce,
                };
                let pr = PublishProperties {
                    user_properties: props.clone(),
                    ..Default::default()
                };
                c.publish_with_properties(topic, q, false, payload.clone(), pr)
                    .await
                    .unwrap();
            } else if let Some(c) = &self.v4 {
                let q = match qos {
                    0 => rumqttc::QoS::AtMostOnce,
                    2 => rumqttc::QoS::ExactlyOnce,
                    _ => rumqttc::QoS::AtLeastOnce,
                };
                c.publish(topic, q, false, payload.clone()).await.unwrap();
            }
        }
        if qos > 0 {
            let n = msgs.len();
            self.wait(move |s| s.acks >= before + n, "acknowledgements")
                .await;
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Received publishes so far: (topic, payload, user properties).
    pub fn received(&self) -> Vec<Got> {
        self.seen.lock().unwrap().publishes.clone()
    }

    /// Waits until at least `n` publishes arrived or `timeout` passed.
    pub async fn received_at_least(&self, n: usize, timeout: Duration) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The session-present flag of the CONNACK.
    pub fn session_present(&self) -> Option<bool> {
        self.seen.lock().unwrap().connack
    }

    /// Disconnects cleanly (the session stays if it was persistent).
    pub async fn disconnect(self) {
        if let Some(c) = &self.v5 {
            let _ = c.disconnect().await;
        } else if let Some(c) = &self.v4 {
            let _ = c.disconnect().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes a persistent session for `client_id` subscribed to `filter` (QoS 1),
/// so messages published before the real subscriber connects are queued.
pub async fn create_session(port: u16, v311: bool, client_id: &str, filter: &str) {
    let c = client(port, v311, client_id, true).await;
    c.subscribe(filter).await;
    c.disconnect().await;
}
