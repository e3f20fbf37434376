//! What a guest can make the host allocate: outputs that all alias one
//! region of guest memory, handed over for every message of a batch. The
//! host checks each answer as it arrives and never copies much more than
//! `max_output_bytes` out of one call, so its memory does not grow with the
//! aliasing or with `batch`. (A test binary of its own: it measures the
//! process's peak RSS.)

mod common;

use std::time::Duration;

use common::guest::{Guest, OUTPUTS};
use sluice::engine::{Plugin, PluginSpec, Worker};
use sluice::failure::FailureClass;
use sluice::message::Message;

#[tokio::test]
async fn aliased_outputs_in_a_batch_do_not_grow_the_host() {
    // One call: 127 outputs of the same 1 MiB, just under wasmtime's default
    // of 128 MiB copied per host call. A batch's answer cannot alias (every
    // output's bytes lie in one list): three outputs of 1 MiB each, 3 MiB
    // read in place for each of the 16 messages, within the hostcall budget
    // and over max_output_bytes.
    let fill = "(call $outputs (i32.const 127) (i32.const 1048576))";
    let handle = format!("{fill} (call $ok (i32.const 127))");
    let batch = format!(
        "(block $end (loop $next
           (br_if $end (i32.ge_u (local.get $i) (local.get $len)))
           (call $outputs (i32.const 3) (i32.const 1048576))
           (call $done (local.get $i) (i32.const 0) (i32.const {OUTPUTS}) (i32.const 3) (i32.const 0))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br $next)))"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = Guest {
        handle: Some(&handle),
        batch: Some(&batch),
        ..Default::default()
    }
    .write(dir.path(), "aliasing");
    let mut spec = PluginSpec::new(&path);
    spec.max_output_bytes = 1 << 20;
    spec.timeout = Duration::from_secs(10);
    let plugin = Plugin::load(&common::engine(), spec).await.expect("load");
    let mut w = Worker::new(plugin);
    let msgs: Vec<Message> = (0..16)
        .map(|i| Message::new("t", format!("m{i}")))
        .collect();
    let refs: Vec<&Message> = msgs.iter().collect();

    let before = common::reset_peak_rss();
    let mut answers = w.handle_batch(&refs).await;
    assert_eq!(answers.len(), 16, "the batch answered every message");
    for m in &msgs {
        answers.push(w.handle(m).await);
    }
    let grew = common::peak_rss().saturating_sub(before);
    println!("peak RSS grew by {} MiB", grew >> 20);
    assert_eq!(answers.len(), 32);
    for (r, _) in &answers {
        let f = r.as_ref().expect_err("over max_output_bytes");
        assert_eq!(f.class, FailureClass::Trap, "{f}");
        assert!(f.message.starts_with("bad output"), "{f}");
    }
    assert!(
        grew < 128 << 20,
        "the host grew by {} MiB for answers it refused",
        grew >> 20
    );
}
