//! The conformance suite against the embedded `file` source and sink
//! (envelope format, `follow = true`), the reference every broker matches.

use crate::conformance;

use std::path::PathBuf;
use std::time::Duration;

use conformance::{Collector, Fixture, TestMsg};
use futures::future::BoxFuture;
use sluice::envelope;

struct FileFixture {
    dir: tempfile::TempDir,
}

impl FileFixture {
    fn path(&self, topic: &str) -> PathBuf {
        self.dir.path().join(format!("{topic}.jsonl"))
    }
}

struct FileCollector {
    path: PathBuf,
}

fn read_all(path: &PathBuf) -> Vec<TestMsg> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| envelope::decode(l).ok())
        .map(|e| TestMsg {
            key: e.key.map(|k| k.to_vec()),
            payload: e.payload.to_vec(),
            headers: e
                .headers
                .into_iter()
                .map(|h| (h.key, h.value.to_vec()))
                .collect(),
        })
        .collect()
}

impl Collector for FileCollector {
    fn collect(&mut self, n: usize, timeout: Duration) -> BoxFuture<'_, Vec<TestMsg>> {
        Box::pin(conformance::poll(
            n,
            timeout,
            Duration::from_millis(50),
            || read_all(&self.path),
        ))
    }
}

impl Fixture for FileFixture {
    fn name(&self) -> String {
        "file".into()
    }

    fn source_toml(&self, topic: &str, _group: &str) -> String {
        format!(
            "type = \"file\"\npath = \"{}\"\nformat = \"envelope\"\nfollow = true",
            self.path(topic).display()
        )
    }

    /// The source hands out at most 2 × `max_in_flight` (1024) lines past
    /// the checkpoint written last, and a kill repeats at most those.
    fn duplicate_window(&self) -> usize {
        2 * 1024
    }

    fn sink_toml(&self, topic: &str) -> String {
        format!(
            "type = \"file\"\npath = \"{}\"\nformat = \"envelope\"",
            self.path(topic).display()
        )
    }

    fn collector<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn Collector>>> {
        Box::pin(async move {
            Ok(Box::new(FileCollector {
                path: self.path(topic),
            }) as Box<dyn Collector>)
        })
    }

    fn produce<'a>(
        &'a self,
        topic: &'a str,
        msgs: &'a [TestMsg],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut text = String::new();
            for m in msgs {
                let headers: Vec<sluice::message::Header> = m
                    .headers
                    .iter()
                    .map(|(k, v)| sluice::message::Header::new(k.clone(), v.clone()))
                    .collect();
                text += &envelope::encode_parts(None, m.key.as_deref(), &m.payload, &headers);
                text.push('\n');
            }
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(topic))?;
            f.write_all(text.as_bytes())?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_conformance() {
    let fx = FileFixture {
        dir: tempfile::tempdir().unwrap(),
    };
    conformance::run_all(&fx).await;
}
