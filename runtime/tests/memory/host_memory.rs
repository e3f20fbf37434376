//! What a guest can make the host allocate: outputs that all alias one
//! region of guest memory, handed over for every message of a batch. The
//! host checks each answer as it arrives and never copies much more than
//! `max_output_bytes` out of one call, so its memory does not grow with the
//! aliasing or with `batch`. (A test binary of its own: it measures the
//! process's peak RSS.)

use crate::common;

use std::time::Duration;

use common::guest::{Guest, ONE_OUTPUT, OUTPUTS};
use sluice::engine::{Plugin, PluginSpec, Worker};
use sluice::failure::FailureClass;
use sluice::message::Message;

use crate::MEASURING;

#[tokio::test]
async fn aliased_outputs_in_a_batch_do_not_grow_the_host() {
    let _one = MEASURING.lock().await;
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

/// A component (written by hand: a core module cannot hold more than one
/// memory in the instance pool) of `hogs` core instances besides the
/// handler's own, each with a memory of its own; `handle` grows each of them
/// by `pages` and writes every byte, then answers with no outputs.
fn memory_hogs(hogs: usize, pages: u32) -> String {
    let mut instances = String::new();
    let mut imports = String::new();
    let mut calls = String::new();
    let mut with = String::new();
    for i in 0..hogs {
        instances.push_str(&format!(
            "(core instance $h{i} (instantiate $Hog))\n(alias core export $h{i} \"hog\" (core func $hog{i}))\n"
        ));
        imports.push_str(&format!("(import \"h\" \"{i}\" (func $hog{i}))\n"));
        calls.push_str(&format!("(call $hog{i})\n"));
        with.push_str(&format!("(export \"{i}\" (func $hog{i}))"));
    }
    format!(
        r#"(component
  (core module $Hog
    (memory 1)
    (func (export "hog")
      (drop (memory.grow (i32.const {pages})))
      (memory.fill (i32.const 0) (i32.const 1) (i32.mul (memory.size) (i32.const 65536)))))
  {instances}
  (core instance $hogs {with})
  (core module $Main
    {imports}
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (if (i32.gt_u (global.get $bump) (i32.const 60000)) (then (global.set $bump (i32.const 1024))
        (local.set $p (i32.const 1024))))
      (local.get $p))
    (func (export "init") (param i32 i32) (result i32)
      (i32.store8 (i32.const 0) (i32.const 0)) (i32.const 0))
    (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i64 i32) (result i32)
      {calls}
      (i32.store8 (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 0))
      (i32.store (i32.const 24) (i32.const 0))
      (i32.const 16)))
  (core instance $main (instantiate $Main (with "h" (instance $hogs))))
  (alias core export $main "memory" (core memory $mem))
  (alias core export $main "cabi_realloc" (core func $realloc))
  (type $header (record (field "key" string) (field "value" (list u8))))
  (export $h "header" (type $header))
  (type $message (record (field "topic" string) (field "key" (option (list u8)))
    (field "payload" (list u8)) (field "headers" (list $h))
    (field "timestamp-ms" (option u64)) (field "attempt" u32)))
  (export $m "message" (type $message))
  (type $output (record (field "sink" (option string)) (field "topic" (option string))
    (field "key" (option (list u8))) (field "payload" (list u8)) (field "headers" (list $h))))
  (export $o "output" (type $output))
  (type $error (variant (case "retriable" string) (case "fatal" string)))
  (export $e "handler-error" (type $error))
  (type $init (func (param "config" (list (tuple string string))) (result (result (error string)))))
  (type $handle (func (param "msg" $m) (result (result (list $o) (error $e)))))
  (func (export "init") (type $init)
    (canon lift (core func $main "init") (memory $mem) (realloc $realloc)))
  (func (export "handle") (type $handle)
    (canon lift (core func $main "handle") (memory $mem) (realloc $realloc)))
)"#
    )
}

/// `handler.memory` caps all of a handler's memories together: seven
/// memories of 56 MiB each under a 64 MiB cap is a `memory` failure, and
/// the host does not grow by what the guest asked for.
#[tokio::test]
async fn the_memory_cap_holds_for_all_of_an_instances_memories() {
    let _one = MEASURING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hogs.wasm");
    let wasm = wat::parse_str(memory_hogs(7, 900)).expect("the component assembles");
    std::fs::write(&path, wasm).unwrap();
    let mut spec = PluginSpec::new(&path);
    spec.memory = 64 << 20;
    spec.timeout = Duration::from_secs(10);
    // `memory.fill` costs fuel by the byte.
    spec.fuel = 1 << 40;
    let plugin = Plugin::load(&common::engine(), spec).await.expect("load");
    let mut w = Worker::new(plugin);
    let before = common::reset_peak_rss();
    let (r, _) = w.handle(&Message::new("t", "m")).await;
    let grew = common::peak_rss().saturating_sub(before);
    println!("peak RSS grew by {} MiB", grew >> 20);
    let f = r.expect_err("over the memory cap");
    assert_eq!(f.class, FailureClass::Memory, "{f}");
    assert!(
        grew < 128 << 20,
        "the host grew by {} MiB under a 64 MiB cap",
        grew >> 20
    );
    // The same guest within the cap works.
    let path = dir.path().join("fits.wasm");
    std::fs::write(&path, wat::parse_str(memory_hogs(3, 200)).unwrap()).unwrap();
    let mut spec = PluginSpec::new(&path);
    spec.memory = 64 << 20;
    spec.fuel = 1 << 40;
    let plugin = Plugin::load(&common::engine(), spec).await.expect("load");
    let (r, _) = Worker::new(plugin).handle(&Message::new("t", "m")).await;
    assert_eq!(r.expect("within the cap"), vec![]);
}

/// A shared memory (the threads proposal) grows without asking the store's
/// limiter: wasmtime shares it between threads, so `handler.memory` could
/// not cap it. The engine does not take such memories (nor does the
/// instance pool; this runs on an engine without one, as when the pool is
/// unavailable).
#[tokio::test]
async fn a_shared_memory_is_refused_rather_than_left_uncapped() {
    let _one = MEASURING.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = format!(
        "(drop (memory.grow $shared (i32.const 2000)))
         (memory.fill $shared (i32.const 0) (i32.const 1) (i32.const 131072000))
         {ONE_OUTPUT}"
    );
    let path = Guest {
        handle: Some(&handle),
        funcs: "(memory $shared 1 65536 shared)",
        ..Default::default()
    }
    .write(dir.path(), "shared-memory");
    let engine = sluice::engine::Engine::new(sluice::engine::EngineOptions {
        cache_dir: Some(common::cache_dir()),
        pooling: false,
        ..Default::default()
    })
    .expect("engine");
    let mut spec = PluginSpec::new(&path);
    spec.memory = 64 << 20;
    spec.fuel = 1 << 40;
    let before = common::reset_peak_rss();
    let outcome = match Plugin::load(&engine, spec).await {
        Ok(plugin) => Some(Worker::new(plugin).handle(&Message::new("t", "m")).await.0),
        Err(e) => {
            println!("refused: {e}");
            None
        }
    };
    let grew = common::peak_rss().saturating_sub(before);
    println!("peak RSS grew by {} MiB", grew >> 20);
    if let Some(r) = outcome {
        let f = r.expect_err("a shared memory past the cap must not be granted");
        assert_eq!(f.class, FailureClass::Memory, "{f}");
    }
    assert!(
        grew < 100 << 20,
        "the host grew by {} MiB under a 64 MiB cap",
        grew >> 20
    );
}
