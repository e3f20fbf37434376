//! Tests of the `file` source: lines, offsets, formats, settling in any
//! order, the checkpoint, following, truncation and rotation.

use super::checkpoint::RECORD_LEN;
use super::*;
use crate::config::units::Dur;
use crate::config::{FileSinkConfig, FileSinkFormat};
use crate::message::Header;
use crate::sinks::{Record, Sink as _};
use crate::sources::Settlement;
use std::fs::OpenOptions;
use std::io::Write as _;

fn cfg(path: &Path) -> FileSourceConfig {
    FileSourceConfig {
        path: path.to_path_buf(),
        format: FileSourceFormat::Lines,
        follow: false,
        checkpoint: None,
        topic: None,
        max_in_flight: 1024,
        // On every advance, so that a test reads it right after a settle.
        checkpoint_every: Dur(Duration::ZERO),
    }
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

async fn next(src: &mut FileSource) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), src.next())
        .await
        .expect("next() timed out")
        .unwrap()
        .expect("source finished early")
}

/// `next()` stays pending for a while (and is cancel-safe to abandon).
async fn pending(src: &mut FileSource) {
    let r = tokio::time::timeout(Duration::from_millis(300), src.next()).await;
    assert!(r.is_err(), "next() should have been pending");
}

fn payload(d: &Delivery) -> &[u8] {
    &d.message.payload
}

fn checkpoint_offset(path: &Path) -> u64 {
    let text = std::fs::read_to_string(default_checkpoint_path(path)).unwrap();
    assert_eq!(text.len(), RECORD_LEN);
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn lines_are_byte_exact_with_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"a\r\n\nb\xff\nlast").unwrap();
    let mut src = open(&cfg(&path)).unwrap();
    let mut got = Vec::new();
    while let Some(d) = src.next().await.unwrap() {
        assert_eq!(d.message.attempt, 1);
        assert_eq!(d.message.topic, path.display().to_string());
        assert!(d.decode_error.is_none());
        got.push((d.message.offset.unwrap(), payload(&d).to_vec()));
        d.settle(Settlement::Ack).await.unwrap();
    }
    assert_eq!(
        got,
        vec![
            (0, b"a\r".to_vec()),
            (3, b"".to_vec()),
            (4, b"b\xff".to_vec()),
            (7, b"last".to_vec())
        ]
    );
    assert_eq!(checkpoint_offset(&path), 11);
    // Nothing left after a restart.
    let mut src = open(&cfg(&path)).unwrap();
    assert!(src.next().await.unwrap().is_none());
}

#[tokio::test]
async fn restart_resumes_at_the_first_unsettled_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    let lines: Vec<String> = (0..10).map(|i| format!("line-{i}")).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let offset = |i: usize| (i * 7) as i64;

    let mut src = open(&cfg(&path)).unwrap();
    let mut ds = Vec::new();
    for _ in 0..6 {
        ds.push(Some(next(&mut src).await));
    }
    // Out of order: 2, 0, 5 (beyond a gap), then 1. Lines 3 and 4 stay unsettled.
    for i in [2, 0, 5] {
        ds[i].take().unwrap().settle(Settlement::Ack).await.unwrap();
    }
    assert_eq!(checkpoint_offset(&path), offset(1) as u64);
    ds[1]
        .take()
        .unwrap()
        .settle(Settlement::Terminated)
        .await
        .unwrap();
    assert_eq!(checkpoint_offset(&path), offset(3) as u64);
    // The process "dies": unsettled deliveries and the source are dropped.
    let unsettled: Vec<_> = ds.into_iter().flatten().collect();
    std::mem::forget(unsettled); // as a kill would: no drop handlers run
    drop(src);

    let mut src = open(&cfg(&path)).unwrap();
    let mut again = Vec::new();
    while let Some(d) = src.next().await.unwrap() {
        again.push((d.message.offset.unwrap(), payload(&d).to_vec()));
        d.settle(Settlement::Ack).await.unwrap();
    }
    // Lines 0..=2 never repeat; 3 and 4 come again; 5 settled past the gap
    // comes again (at least once); nothing is lost.
    let want: Vec<_> = (3..10)
        .map(|i| (offset(i), lines[i].as_bytes().to_vec()))
        .collect();
    assert_eq!(again, want);
}

#[tokio::test]
async fn redeliver_brings_the_line_back_with_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"one\ntwo\n").unwrap();
    let mut src = open(&cfg(&path)).unwrap();
    let d = next(&mut src).await;
    assert_eq!(payload(&d), b"one");
    d.settle(Settlement::Redeliver {
        delay: Duration::from_millis(200),
    })
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    let two = next(&mut src).await; // not due yet: the next line comes first
    assert_eq!(payload(&two), b"two");
    let d = next(&mut src).await;
    assert!(t0.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        (payload(&d), d.message.offset, d.message.attempt),
        (&b"one"[..], Some(0), 2)
    );
    two.settle(Settlement::Ack).await.unwrap();
    assert_eq!(
        checkpoint_offset(&path),
        0,
        "nothing is checkpointed past a redelivery"
    );
    d.settle(Settlement::Redeliver {
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let d = next(&mut src).await;
    assert_eq!(d.message.attempt, 3);
    d.settle(Settlement::Ack).await.unwrap();
    assert_eq!(checkpoint_offset(&path), 8);
    assert!(src.next().await.unwrap().is_none());
}

#[tokio::test]
async fn dropped_delivery_is_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"x\n").unwrap();
    let mut src = open(&cfg(&path)).unwrap();
    drop(next(&mut src).await);
    let d = next(&mut src).await;
    assert_eq!((payload(&d), d.message.attempt), (&b"x"[..], 2));
    d.settle(Settlement::Ack).await.unwrap();
    assert!(src.next().await.unwrap().is_none());
}

#[tokio::test]
async fn without_follow_the_end_waits_for_outstanding_settles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"only\n").unwrap();
    let mut src = open(&cfg(&path)).unwrap();
    let d = next(&mut src).await;
    pending(&mut src).await;
    // A redelivery decided late still arrives.
    let settler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.settle(Settlement::Redeliver {
            delay: Duration::ZERO,
        })
        .await
        .unwrap();
    });
    let d = next(&mut src).await;
    assert_eq!(d.message.attempt, 2);
    settler.await.unwrap();
    let settler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.settle(Settlement::Ack).await.unwrap();
    });
    let t0 = std::time::Instant::now();
    assert!(src.next().await.unwrap().is_none());
    assert!(t0.elapsed() >= Duration::from_millis(80));
    settler.await.unwrap();
}

#[tokio::test]
async fn follow_sees_appended_lines_and_waits_for_the_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"a\n").unwrap();
    let mut src = open(&FileSourceConfig {
        follow: true,
        ..cfg(&path)
    })
    .unwrap();
    let a = next(&mut src).await;
    a.settle(Settlement::Ack).await.unwrap();
    pending(&mut src).await;
    append(&path, b"bb");
    pending(&mut src).await; // no newline yet
    append(&path, b"b\nc\n");
    let b = next(&mut src).await;
    assert_eq!((payload(&b), b.message.offset), (&b"bbb"[..], Some(2)));
    let c = next(&mut src).await;
    assert_eq!((payload(&c), c.message.offset), (&b"c"[..], Some(6)));
    b.settle(Settlement::Ack).await.unwrap();
    c.settle(Settlement::Ack).await.unwrap();
    pending(&mut src).await; // following never finishes
    assert_eq!(checkpoint_offset(&path), 8);
}

#[tokio::test]
async fn follow_starts_over_after_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"first line\n").unwrap();
    let mut src = open(&FileSourceConfig {
        follow: true,
        ..cfg(&path)
    })
    .unwrap();
    let d = next(&mut src).await;
    pending(&mut src).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, b"new\n");
    pending(&mut src).await; // the old line is still in flight
    d.settle(Settlement::Ack).await.unwrap();
    let d = next(&mut src).await;
    assert_eq!((payload(&d), d.message.offset), (&b"new"[..], Some(0)));
    d.settle(Settlement::Ack).await.unwrap();
    assert_eq!(checkpoint_offset(&path), 4);
}

#[tokio::test]
async fn bad_json_is_undecodable_with_its_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    std::fs::write(
        &path,
        b"{\"a\":1}\r\nnot json\xff\n\n  \n[1, 2]\n{\"s\":\"\xff\"}",
    )
    .unwrap();
    let mut src = open(&FileSourceConfig {
        format: FileSourceFormat::Json,
        ..cfg(&path)
    })
    .unwrap();
    let mut got = Vec::new();
    while let Some(d) = src.next().await.unwrap() {
        got.push((
            d.message.offset.unwrap(),
            payload(&d).to_vec(),
            d.decode_error.is_some(),
        ));
        d.settle(Settlement::Ack).await.unwrap();
    }
    assert_eq!(
        got,
        vec![
            (0, b"{\"a\":1}\r".to_vec(), false),
            (9, b"not json\xff".to_vec(), true),
            (23, b"[1, 2]".to_vec(), false),
            // JSON text is UTF-8, inside strings too.
            (30, b"{\"s\":\"\xff\"}".to_vec(), true),
        ]
    );
}

#[tokio::test]
async fn over_long_line_is_undecodable_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"short\n0123456789abcdef\nok\n").unwrap();
    let mut src = open_inner(&cfg(&path), Vec::new(), 8).unwrap();
    let a = next(&mut src).await;
    let b = next(&mut src).await;
    let c = next(&mut src).await;
    assert!(a.decode_error.is_none());
    assert_eq!((payload(&b), b.message.offset), (&b"01234567"[..], Some(6)));
    assert!(b.decode_error.as_deref().unwrap().contains("16 bytes"));
    assert_eq!((payload(&c), c.message.offset), (&b"ok"[..], Some(23)));
    assert!(c.decode_error.is_none());
    for d in [a, b, c] {
        d.settle(Settlement::Ack).await.unwrap();
    }
    assert!(src.next().await.unwrap().is_none());
}

#[tokio::test]
async fn envelope_round_trip_through_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dlq.jsonl");
    let sink = crate::sinks::file::open(
        &FileSinkConfig {
            path: path.clone(),
            format: None,
            fsync: false,
        },
        FileSinkFormat::Envelope,
    )
    .unwrap();
    let records = vec![
        Record {
            topic: Some("orders".into()),
            key: Some(Bytes::from_static(b"\x00k\xff")),
            payload: Bytes::from_static(b"line\nwith newline \xc3\x28"),
            headers: vec![
                Header::new("sluice-error-class", "fatal"),
                Header::new("dup", &b"\xff"[..]),
                Header::new("dup", "2"),
            ],
            id: "1".into(),
        },
        Record {
            topic: None,
            key: None,
            payload: Bytes::from_static("héllo\r".as_bytes()),
            headers: Vec::new(),
            id: "2".into(),
        },
    ];
    sink.publish(&records).await.unwrap();
    append(&path, b"{not an envelope}\n");
    let mut src = open(&FileSourceConfig {
        format: FileSourceFormat::Envelope,
        ..cfg(&path)
    })
    .unwrap();
    for r in &records {
        let d = next(&mut src).await;
        assert!(d.decode_error.is_none(), "{:?}", d.decode_error);
        let want_topic = r
            .topic
            .clone()
            .unwrap_or_else(|| path.display().to_string());
        assert_eq!(d.message.topic, want_topic);
        assert_eq!(d.message.key, r.key);
        assert_eq!(d.message.payload, r.payload);
        assert_eq!(d.message.headers, r.headers);
        d.settle(Settlement::Ack).await.unwrap();
    }
    let bad = next(&mut src).await;
    assert_eq!(payload(&bad), b"{not an envelope}");
    assert!(bad.decode_error.is_some());
    bad.settle(Settlement::Ack).await.unwrap();
    assert!(src.next().await.unwrap().is_none());
}

#[tokio::test]
async fn max_in_flight_holds_back_new_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"1\n2\n3\n").unwrap();
    let mut src = open(&FileSourceConfig {
        max_in_flight: 2,
        ..cfg(&path)
    })
    .unwrap();
    let a = next(&mut src).await;
    let b = next(&mut src).await;
    pending(&mut src).await;
    // A redelivery does not need a free slot.
    b.settle(Settlement::Redeliver {
        delay: Duration::ZERO,
    })
    .await
    .unwrap();
    let b = next(&mut src).await;
    assert_eq!((payload(&b), b.message.attempt), (&b"2"[..], 2));
    pending(&mut src).await;
    a.settle(Settlement::Ack).await.unwrap();
    let c = next(&mut src).await;
    assert_eq!(payload(&c), b"3");
    b.settle(Settlement::Ack).await.unwrap();
    c.settle(Settlement::Ack).await.unwrap();
    assert!(src.next().await.unwrap().is_none());
}

#[tokio::test]
async fn pause_resume_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"1\n2\n3\n").unwrap();
    let mut src = open(&FileSourceConfig {
        topic: Some("t".into()),
        ..cfg(&path)
    })
    .unwrap();
    src.pause();
    pending(&mut src).await;
    src.resume();
    let a = next(&mut src).await;
    assert_eq!((payload(&a), a.message.topic.as_str()), (&b"1"[..], "t"));
    src.close().await;
    assert!(src.next().await.unwrap().is_none());
    // Settling after close still advances the checkpoint.
    a.settle(Settlement::Ack).await.unwrap();
    assert_eq!(checkpoint_offset(&path), 2);
}

#[tokio::test]
async fn a_checkpoint_that_does_not_fit_the_file_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    let cp = dir.path().join("custom.cp");
    let c = FileSourceConfig {
        checkpoint: Some(cp.clone()),
        ..cfg(&path)
    };
    std::fs::write(&path, b"aaa\nbbb\n").unwrap();
    let mut src = open(&c).unwrap();
    next(&mut src).await.settle(Settlement::Ack).await.unwrap();
    drop(src);
    assert!(
        std::fs::read_to_string(&cp)
            .unwrap()
            .starts_with("00000000000000000004 ")
    );
    // Same file: resume at line 2.
    let mut src = open(&c).unwrap();
    let d = next(&mut src).await;
    assert_eq!(payload(&d), b"bbb");
    std::mem::forget(d);
    drop(src);
    // Replaced by a different file of the same size: start over.
    std::fs::write(&path, b"xxx\nyyy\n").unwrap();
    let mut src = open(&c).unwrap();
    assert_eq!(payload(&next(&mut src).await), b"xxx");
    drop(src);
    // Replaced by a shorter file (checkpoint written at 0 by the last open;
    // write a stale one by hand).
    std::fs::write(&cp, format!("{:020}\n", 100)).unwrap();
    let mut src = open(&c).unwrap();
    assert_eq!(payload(&next(&mut src).await), b"xxx");
    drop(src);
    // A hand-written offset not at a line start: start over.
    std::fs::write(&cp, "2\n").unwrap();
    let mut src = open(&c).unwrap();
    assert_eq!(payload(&next(&mut src).await), b"xxx");
    drop(src);
    // A hand-written offset at a line start is honoured.
    std::fs::write(&cp, "4\n").unwrap();
    let mut src = open(&c).unwrap();
    assert_eq!(payload(&next(&mut src).await), b"yyy");
}

/// A file replaced by one with the same first KiB (a constant banner), or
/// rewritten in place with it, is not resumed mid-file: the checkpoint
/// fingerprints the file's inode and the bytes before its offset, and the
/// source starts over. The same file is resumed.
#[tokio::test]
async fn a_file_with_the_same_head_but_other_lines_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    let banner = format!("{}\n", "#".repeat(2047));
    let body = |tag: &str| format!("{banner}{tag}-1\n{tag}-2\n{tag}-3\n{tag}-4\n");
    // Settles the banner and two lines; returns the next line on reopening.
    async fn settle_three(path: &Path) {
        let mut src = open(&cfg(path)).unwrap();
        for _ in 0..3 {
            next(&mut src).await.settle(Settlement::Ack).await.unwrap();
        }
    }
    async fn first_line(path: &Path) -> Vec<u8> {
        let mut src = open(&cfg(path)).unwrap();
        let d = next(&mut src).await;
        let p = payload(&d).to_vec();
        std::mem::forget(d);
        p
    }
    std::fs::write(&path, body("old")).unwrap();
    settle_three(&path).await;
    assert_eq!(first_line(&path).await, b"old-3", "the same file resumes");

    // Replaced through a rename (another inode), same banner, same length.
    let new = dir.path().join("new.txt");
    std::fs::write(&new, body("new")).unwrap();
    std::fs::rename(&new, &path).unwrap();
    assert_eq!(first_line(&path).await, banner.trim_end().as_bytes());

    // Rewritten in place (same inode), same banner, same length.
    settle_three(&path).await;
    std::fs::write(&path, body("cpy")).unwrap();
    assert_eq!(first_line(&path).await, banner.trim_end().as_bytes());

    // The same bytes under another inode (a copy): in doubt, start over.
    settle_three(&path).await;
    std::fs::copy(&path, &new).unwrap();
    std::fs::rename(&new, &path).unwrap();
    assert_eq!(first_line(&path).await, banner.trim_end().as_bytes());
}

/// Waits (up to 5 s) until the checkpoint of `path` holds `want`.
async fn checkpoint_reaches(path: &Path, want: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(default_checkpoint_path(path)).unwrap_or_default();
        let at: Option<u64> = text.split_whitespace().next().and_then(|o| o.parse().ok());
        if at == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint at {at:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn checkpoint_on_an_interval_never_passes_an_unsettled_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"aa\nbb\ncc\n").unwrap();
    let mut src = open(&FileSourceConfig {
        checkpoint_every: Dur(Duration::from_millis(20)),
        ..cfg(&path)
    })
    .unwrap();
    let a = next(&mut src).await;
    let b = next(&mut src).await;
    let c = next(&mut src).await;
    b.settle(Settlement::Ack).await.unwrap();
    c.settle(Settlement::Ack).await.unwrap();
    // Several intervals pass: the checkpoint stays before the unsettled line.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(checkpoint_offset(&path), 0);
    a.settle(Settlement::Ack).await.unwrap();
    checkpoint_reaches(&path, 9).await;
    assert!(src.next().await.unwrap().is_none());
}

#[tokio::test]
async fn close_and_drop_write_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"1\n2\n3\n").unwrap();
    let mut src = open(&FileSourceConfig {
        checkpoint_every: Dur(Duration::from_secs(3600)),
        ..cfg(&path)
    })
    .unwrap();
    let one = next(&mut src).await;
    let two = next(&mut src).await;
    // The first settle wakes the checkpoint thread; it then rests an hour.
    one.settle(Settlement::Ack).await.unwrap();
    checkpoint_reaches(&path, 2).await;
    two.settle(Settlement::Ack).await.unwrap();
    src.close().await;
    assert_eq!(checkpoint_offset(&path), 4, "close writes it");
    let three = next_after_reopen(&path).await;
    assert_eq!(payload(&three), b"3");
    three.settle(Settlement::Ack).await.unwrap();
}

/// Reopens the source of `path` (the last one dropped) and takes a line;
/// the delivery outlives its source, as after a close.
async fn next_after_reopen(path: &Path) -> Delivery {
    let mut src = open(&cfg(path)).unwrap();
    next(&mut src).await
}

#[tokio::test]
async fn a_killed_source_repeats_at_most_twice_max_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    let text: String = (0..100).map(|i| format!("{i:02}\n")).collect();
    std::fs::write(&path, &text).unwrap();
    let mut src = open(&FileSourceConfig {
        max_in_flight: 4,
        checkpoint_every: Dur(Duration::from_secs(3600)),
        ..cfg(&path)
    })
    .unwrap();
    // Settle as fast as lines come: the source stops at 8 lines past the
    // checkpoint until the checkpoint thread, woken after 4 settled, wrote it.
    let mut handed = 0;
    for _ in 0..40 {
        next(&mut src).await.settle(Settlement::Ack).await.unwrap();
        handed += 1;
        let written = checkpoint_offset(&path) / 3;
        assert!(
            handed - written <= 8,
            "{handed} handed out, checkpoint at line {written}"
        );
    }
    // A kill: no drop handler runs, the checkpoint stays where it was written.
    std::mem::forget(src);
    let restart = checkpoint_offset(&path) / 3;
    assert!(
        40 - restart <= 8,
        "a restart repeats {} lines",
        40 - restart
    );
}

#[tokio::test]
async fn follow_sees_a_new_line_without_waiting_for_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, b"").unwrap();
    let mut src = open(&FileSourceConfig {
        follow: true,
        ..cfg(&path)
    })
    .unwrap();
    pending(&mut src).await;
    append(&path, b"now\n");
    let t0 = std::time::Instant::now();
    let d = next(&mut src).await;
    assert_eq!(payload(&d), b"now");
    // The change notice, not the 2 s fallback poll, brought it.
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    d.settle(Settlement::Ack).await.unwrap();
}

#[tokio::test]
async fn follow_moves_to_the_new_file_after_a_rename_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, b"a\nb\n").unwrap();
    let mut src = open(&FileSourceConfig {
        follow: true,
        ..cfg(&path)
    })
    .unwrap();
    let a = next(&mut src).await;
    let b = next(&mut src).await;
    pending(&mut src).await;
    // Rotation: the file is renamed, the writer finishes a line in the old
    // one, then a new file takes the path.
    let old = dir.path().join("app.log.1");
    std::fs::rename(&path, &old).unwrap();
    append(&old, b"c\n");
    std::fs::write(&path, b"d\n").unwrap();
    let c = next(&mut src).await;
    assert_eq!((payload(&c), c.message.offset), (&b"c"[..], Some(4)));
    // The new file's lines wait until the old file's lines settled.
    pending(&mut src).await;
    for d in [a, b, c] {
        d.settle(Settlement::Ack).await.unwrap();
    }
    let d = next(&mut src).await;
    assert_eq!((payload(&d), d.message.offset), (&b"d"[..], Some(0)));
    d.settle(Settlement::Ack).await.unwrap();
    assert_eq!(checkpoint_offset(&path), 2);
    append(&path, b"e\n");
    let e = next(&mut src).await;
    assert_eq!((payload(&e), e.message.offset), (&b"e"[..], Some(2)));
    e.settle(Settlement::Ack).await.unwrap();
    drop(src);
    // The checkpoint belongs to the new file: a restart goes on there.
    append(&path, b"f\n");
    let mut src = open(&cfg(&path)).unwrap();
    assert_eq!(payload(&next(&mut src).await), b"f");
}

#[tokio::test]
async fn follow_reads_a_copy_truncated_file_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, b"one\ntwo\n").unwrap();
    let mut src = open(&FileSourceConfig {
        follow: true,
        ..cfg(&path)
    })
    .unwrap();
    for want in [&b"one"[..], b"two"] {
        let d = next(&mut src).await;
        assert_eq!(payload(&d), want);
        d.settle(Settlement::Ack).await.unwrap();
    }
    // copy-truncate: the content is copied away, the file emptied in place
    // and written again by the same writer.
    std::fs::copy(&path, dir.path().join("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, b"3\n");
    let d = next(&mut src).await;
    assert_eq!((payload(&d), d.message.offset), (&b"3"[..], Some(0)));
    d.settle(Settlement::Ack).await.unwrap();
    assert_eq!(checkpoint_offset(&path), 2);
}
