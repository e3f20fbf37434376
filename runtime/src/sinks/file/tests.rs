//! Tests of the `file` sink.

use super::*;
use bytes::Bytes;

fn rec(payload: &[u8]) -> Record {
    Record {
        topic: None,
        key: None,
        payload: Bytes::copy_from_slice(payload),
        headers: Vec::new(),
        id: String::new(),
    }
}

fn cfg(path: &Path, format: Option<FileSinkFormat>) -> FileSinkConfig {
    FileSinkConfig {
        path: path.to_path_buf(),
        format,
        fsync: false,
    }
}

#[tokio::test]
async fn appends_lines_and_creates_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    std::fs::write(&path, b"old\n").unwrap();
    let sink = open(&cfg(&path, None), FileSinkFormat::Lines).unwrap();
    sink.publish(&[rec(b"a"), rec(b"\xff b")]).await.unwrap();
    sink.publish(&[]).await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"old\na\n\xff b\n");

    let path2 = dir.path().join("new.txt");
    let sink = open(
        &FileSinkConfig {
            fsync: true,
            ..cfg(&path2, None)
        },
        FileSinkFormat::Lines,
    )
    .unwrap();
    sink.publish(&[rec(b"x")]).await.unwrap();
    assert_eq!(std::fs::read(&path2).unwrap(), b"x\n");
}

#[tokio::test]
async fn default_format_applies_only_when_none_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let sink = open(&cfg(&path, None), FileSinkFormat::Envelope).unwrap();
    assert_eq!(sink.format(), FileSinkFormat::Envelope);
    sink.publish(&[rec(b"p")]).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"payload\":\"p\",\"headers\":[]}\n"
    );
    let sink = open(
        &cfg(&path, Some(FileSinkFormat::Lines)),
        FileSinkFormat::Envelope,
    )
    .unwrap();
    assert_eq!(sink.format(), FileSinkFormat::Lines);
}

#[tokio::test]
async fn missing_directories_are_created_but_a_file_in_the_way_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    open(
        &cfg(&dir.path().join("no/such/file"), None),
        FileSinkFormat::Lines,
    )
    .unwrap();
    assert!(dir.path().join("no/such/file").exists());
    std::fs::write(dir.path().join("plain"), "x").unwrap();
    let err = open(
        &cfg(&dir.path().join("plain/file"), None),
        FileSinkFormat::Lines,
    )
    .err()
    .unwrap();
    assert!(format!("{err:#}").contains("file sink"), "{err:#}");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn io_error_is_a_sink_failure() {
    let sink = open(&cfg(Path::new("/dev/full"), None), FileSinkFormat::Lines).unwrap();
    let err = sink.publish(&[rec(b"x")]).await.unwrap_err();
    assert_eq!(err.class, FailureClass::Sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    let sink = Arc::new(open(&cfg(&path, None), FileSinkFormat::Lines).unwrap());
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let sink = Arc::clone(&sink);
        tasks.push(tokio::spawn(async move {
            for i in 0..50usize {
                // Long lines, several per batch, so a torn write would show.
                let line = vec![b'a' + t; 1000 + i * 37];
                let batch = [rec(&line), rec(&line), rec(&line)];
                sink.publish(&batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let data = std::fs::read(&path).unwrap();
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    assert_eq!(lines.last(), Some(&&b""[..]));
    let lines = &lines[..lines.len() - 1];
    assert_eq!(lines.len(), 8 * 50 * 3);
    for chunk in lines.chunks(3) {
        // Each batch is written whole: three equal lines of one letter.
        assert!(chunk.iter().all(|l| l == &chunk[0]));
        assert!(chunk[0].iter().all(|&b| b == chunk[0][0]));
    }
}

/// Sends waiting together are written together, and each is accepted only
/// once its bytes are in the file.
#[tokio::test]
async fn sends_are_accepted_once_written_and_share_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    let sink = open(&cfg(&path, None), FileSinkFormat::Lines).unwrap();
    let mut pending = Vec::new();
    for i in 0..100u32 {
        let r = [rec(format!("line-{i}").as_bytes())];
        pending.push(sink.send(&r).await.unwrap());
    }
    for (i, p) in pending.into_iter().enumerate() {
        p.await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("line-{i}\n")),
            "send {i} accepted unwritten"
        );
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 100);
    assert_eq!(sink.inner.lock().written, 100);
}

/// A sink whose syncing was taken over writes without syncing, hands out
/// the file to sync, and still syncs at close.
#[tokio::test]
async fn deferred_sync_hands_the_file_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    let plain = open(&cfg(&path, None), FileSinkFormat::Lines).unwrap();
    assert!(
        plain.defer_sync().is_none(),
        "nothing to defer without fsync"
    );
    let sink = open(
        &FileSinkConfig {
            fsync: true,
            ..cfg(&path, None)
        },
        FileSinkFormat::Lines,
    )
    .unwrap();
    let target = sink.defer_sync().expect("a file with fsync");
    assert!(!sink.inner.lock().sync_each);
    assert_eq!(target.path(), path.as_path());
    sink.publish(&[rec(b"x")]).await.unwrap();
    target.sync().unwrap();
    sink.close().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
    let stdout = open(&cfg(Path::new("-"), None), FileSinkFormat::Lines).unwrap();
    assert!(stdout.defer_sync().is_none());
}
