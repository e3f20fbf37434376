//! The admin API from a test: `sluice run --admin` as a child process, a
//! minimal HTTP client, and readers for `/pipelines` JSON and `/metrics` text.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Starts `sluice run <args>` with an admin port; stderr into `log`.
pub fn spawn(args: &[&str], admin: u16, log: &Path) -> super::Proc {
    spawn_env(args, admin, log, &[])
}

/// [`spawn`] with these environment variables set.
pub fn spawn_env(args: &[&str], admin: u16, log: &Path, env: &[(&str, &str)]) -> super::Proc {
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new(super::sluice_bin())
        .arg("run")
        .args(args)
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin}"))
        .env("SLUICE_CACHE_DIR", super::cache_dir())
        .env_remove("SLUICE_ADMIN_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sluice");
    assert!(
        super::wait_for_port(admin, Duration::from_secs(30)),
        "admin port never opened"
    );
    super::Proc { child }
}

/// A minimal HTTP/1.1 request: (status, body).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .expect("send");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read response");
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

pub fn pipelines(port: u16) -> Value {
    let (status, body) = http(port, "GET", "/pipelines", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

pub fn pipeline(port: u16, name: &str) -> Option<Value> {
    pipelines(port)["pipelines"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// The value of the sample `name{labels}` in Prometheus text.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
