//! Several messages per handler call (`handle-batch`): every message keeps
//! its own budgets, its own answer and its own failure, and a pipeline that
//! batches loses, duplicates and misattributes nothing.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::engine::{Plugin, PluginSpec, Worker};
use sluice::failure::FailureClass;
use sluice::message::Message;
use sluice::pipeline::Pipeline;
use sluice::sinks::memory::MemorySink;
use sluice::sources::memory::MemorySource;

fn spec(name: &str) -> PluginSpec {
    let mut s = PluginSpec::new(common::plugin(name));
    s.fuel = 200_000_000;
    s.timeout = Duration::from_millis(300);
    s.memory = 32 << 20;
    s.max_output_bytes = 1 << 20;
    s
}

fn msgs(payloads: &[&str]) -> Vec<Message> {
    payloads
        .iter()
        .map(|p| Message::new("t", p.to_string()))
        .collect()
}

fn payload(r: &Result<Vec<sluice::message::Output>, sluice::failure::Failure>) -> String {
    match r {
        Ok(o) => String::from_utf8_lossy(&o[0].payload).into_owned(),
        Err(f) => panic!("expected an output, got {f}"),
    }
}

/// A pipeline from an in-memory source to an in-memory sink
/// ([`common::memory_parts`]).
fn memory_pipeline(
    name: &str,
    source: MemorySource,
    plugin: Plugin,
    sink: &Arc<MemorySink>,
    dead_letter: Option<Arc<MemorySink>>,
) -> Pipeline {
    Pipeline::new(common::memory_parts(
        name,
        source,
        plugin,
        sink,
        dead_letter,
    ))
}

/// A batch `[before, trigger, after]`: `before` answered, the trigger's
/// failure pinned on it with the class it has alone, `after` left for a
/// call of its own (which a fresh instance answers). Also returns how long
/// the batch call took (the plugin's load and compilation not counted).
async fn trigger_in_a_batch(spec: PluginSpec, trigger: &str) -> (FailureClass, String, Duration) {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec).await.expect("load");
    assert!(
        plugin.takes_batches(),
        "Rust SDK plugins export handle-batch"
    );
    let mut w = Worker::new(plugin);
    // Messages after the trigger make a deadline per batch (timeout × 8)
    // far from the one the trigger has (its own timeout).
    let batch = msgs(&["before", trigger, "after", "4", "5", "6", "7", "8"]);
    let refs: Vec<&Message> = batch.iter().collect();
    let start = Instant::now();
    let answers = w.handle_batch(&refs).await;
    let took = start.elapsed();
    assert_eq!(answers.len(), 2, "before + the trigger; after is not run");
    assert_eq!(payload(&answers[0].0), "before");
    let failure = answers[1]
        .0
        .as_ref()
        .expect_err("the trigger fails")
        .clone();
    let (after, _) = w.handle(&batch[2]).await;
    assert_eq!(payload(&after), "after");
    (failure.class, failure.message, took)
}

#[tokio::test]
async fn a_panic_in_a_batch_is_pinned_on_its_message() {
    let (class, msg, _) = trigger_in_a_batch(spec("panic"), "panic").await;
    assert_eq!(class, FailureClass::Trap, "{msg}");
    assert!(msg.contains("the payload asked for a panic"), "{msg}");
}

#[tokio::test]
async fn a_loop_in_a_batch_times_out_on_its_own_deadline() {
    let mut s = spec("infinite-loop");
    s.fuel = u64::MAX / 2;
    s.timeout = Duration::from_millis(200);
    let (class, msg, took) = trigger_in_a_batch(s, "loop").await;
    assert_eq!(class, FailureClass::Timeout, "{msg}");
    // Its own deadline, not the batch's: well under 8 × 200 ms even on a
    // loaded machine.
    assert!(took < Duration::from_millis(200 * 5), "{took:?}");
}

#[tokio::test]
async fn fuel_memory_and_stack_failures_in_a_batch_keep_their_class() {
    let mut s = spec("infinite-loop");
    s.fuel = 5_000_000;
    s.timeout = Duration::from_secs(5);
    assert_eq!(trigger_in_a_batch(s, "loop").await.0, FailureClass::Fuel);
    let (class, msg, _) = trigger_in_a_batch(spec("alloc-bomb"), "alloc").await;
    assert_eq!(class, FailureClass::Memory, "{msg}");
    let (class, msg, _) = trigger_in_a_batch(spec("deep-recursion"), "recurse").await;
    assert_eq!(class, FailureClass::Trap, "{msg}");
}

/// Memory that runs out before the first answer may have gone to lowering
/// the batch: nothing is pinned, and the messages run again one per call,
/// where the culprit meets its failure alone.
#[tokio::test]
async fn a_memory_failure_before_the_first_answer_is_found_one_per_call() {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec("alloc-bomb"))
        .await
        .expect("load");
    let mut w = Worker::new(plugin);
    let batch = msgs(&["alloc", "a", "b"]);
    let refs: Vec<&Message> = batch.iter().collect();
    assert!(w.handle_batch(&refs).await.is_empty(), "not pinned");
    let f = w.handle(&batch[0]).await.0.expect_err("alone, it fails");
    assert_eq!(f.class, FailureClass::Memory, "{}", f.message);
    assert_eq!(payload(&w.handle(&batch[1]).await.0), "a");
    assert_eq!(payload(&w.handle(&batch[2]).await.0), "b");
}

/// Fuel is re-armed for each message: a batch of messages that each need
/// most of the budget succeeds, and a message that needs more than its
/// budget fails even when its neighbours left plenty unused.
#[tokio::test]
async fn every_message_of_a_batch_has_its_own_fuel() {
    let engine = common::engine();
    let mut s = spec("fuel-burner");
    s.config.push(("iterations".into(), "200000".into()));
    s.timeout = Duration::from_secs(5);
    let plugin = Plugin::load(&engine, s.clone()).await.expect("load");
    let one = Worker::new(plugin)
        .handle(&Message::new("t", "burn"))
        .await
        .1
        .fuel_used;
    assert!(one > 200_000, "a burn uses fuel: {one}");

    // Budget 1.6 burns: three burns in one batch all pass, each measured alone.
    s.fuel = one * 8 / 5;
    let mut w = Worker::new(Plugin::load(&engine, s.clone()).await.expect("load"));
    let batch = msgs(&["burn", "burn", "burn"]);
    let refs: Vec<&Message> = batch.iter().collect();
    let answers = w.handle_batch(&refs).await;
    assert_eq!(answers.len(), 3);
    for (r, cost) in &answers {
        assert!(r.is_ok(), "{r:?}");
        let ratio = cost.fuel_used as f64 / one as f64;
        assert!(
            (0.9..1.1).contains(&ratio),
            "fuel {} vs {one} alone",
            cost.fuel_used
        );
    }

    // Budget 0.8 burns: three cheap messages before it leave most of theirs
    // unused, and the burn still runs out of its own.
    s.fuel = one * 4 / 5;
    let mut w = Worker::new(Plugin::load(&engine, s).await.expect("load"));
    let batch = msgs(&["a", "b", "c", "burn"]);
    let refs: Vec<&Message> = batch.iter().collect();
    let answers = w.handle_batch(&refs).await;
    assert_eq!(answers.len(), 4);
    assert_eq!(payload(&answers[2].0), "c");
    let f = answers[3].0.as_ref().expect_err("out of fuel");
    assert_eq!(f.class, FailureClass::Fuel, "{}", f.message);
}

/// Handler errors are answers, not sandbox failures: the batch goes on on
/// the same instance.
#[tokio::test]
async fn handler_errors_in_a_batch_do_not_stop_it() {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec("fatal-on")).await.expect("load");
    let mut w = Worker::new(plugin);
    let batch = msgs(&["a", "bad-1", "b", "bad-2", "c"]);
    let refs: Vec<&Message> = batch.iter().collect();
    let answers = w.handle_batch(&refs).await;
    assert_eq!(answers.len(), 5);
    let classes: Vec<Option<FailureClass>> = answers
        .iter()
        .map(|(r, _)| r.as_ref().err().map(|f| f.class))
        .collect();
    assert_eq!(
        classes,
        [
            None,
            Some(FailureClass::Fatal),
            None,
            Some(FailureClass::Fatal),
            None
        ]
    );
}

/// A pipeline batching a stream with poison in it: every message ends up
/// once in the sink or once in the dead letter, each dead letter is a poison
/// message, and batches were used between the poison.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_pipeline_loses_and_misattributes_nothing() {
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec("panic")).await.expect("load");
    let total = 2_000;
    // Poison every 97th message: rare enough that batches resume between.
    let payload_of = |i: usize| {
        if i % 97 == 13 {
            "panic".to_string()
        } else {
            format!("m{i}")
        }
    };
    let source = MemorySource::new((0..total).map(|i| Message::new("t", payload_of(i))));
    let settled = source.settled();
    let sink = Arc::new(MemorySink::keeping());
    let dlq = Arc::new(MemorySink::keeping());
    let p = memory_pipeline("batching", source, plugin, &sink, Some(dlq.clone()));
    let stats = p.run(std::future::pending()).await.expect("run");

    let poison = (0..total).filter(|i| i % 97 == 13).count();
    let out: Vec<String> = sink
        .kept()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    let expected: Vec<String> = (0..total)
        .map(payload_of)
        .filter(|p| p != "panic")
        .collect();
    println!(
        "{total} messages: {} in the sink, {} dead-lettered, {} answered in batches",
        out.len(),
        dlq.kept().len(),
        stats.batched
    );
    assert_eq!(out, expected, "every good message once, in order");
    assert_eq!(dlq.kept().len(), poison);
    for r in dlq.kept() {
        let text = String::from_utf8_lossy(&r.payload);
        assert!(
            text.contains("panic"),
            "a dead letter of a good message: {text}"
        );
    }
    assert_eq!(stats.succeeded as usize, total - poison);
    assert_eq!(stats.dead_lettered as usize, poison);
    assert_eq!(
        settled.acked.load(std::sync::atomic::Ordering::Relaxed) as usize,
        total - poison
    );
    assert_eq!(
        settled
            .terminated
            .load(std::sync::atomic::Ordering::Relaxed) as usize,
        poison
    );
    assert!(
        stats.batched as usize > total / 2,
        "batches carried most messages: {}",
        stats.batched
    );
}

/// Shutdown while the source always has a message ready (the dispatcher
/// then takes them without waiting): intake stops, and every message taken
/// is settled once — acked after its output reached the sink, or handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_source_that_is_never_empty_and_settles_what_it_took() {
    use std::sync::atomic::Ordering::Relaxed;
    let engine = common::engine();
    let plugin = Plugin::load(&engine, spec("echo")).await.expect("load");
    let total = 300_000u64;
    let source = MemorySource::new((0..total).map(|i| Message::new("t", format!("m{i}"))));
    let settled = source.settled();
    let sink = Arc::new(MemorySink::keeping());
    let p = memory_pipeline("shutdown", source, plugin, &sink, None);
    let started = Instant::now();
    let stats = p
        .run(tokio::time::sleep(Duration::from_millis(100)))
        .await
        .expect("run");
    let (acked, redelivered) = (
        settled.acked.load(Relaxed),
        settled.redelivered.load(Relaxed),
    );
    println!(
        "shut down after {:?}: received {}, acked {acked}, handed back {redelivered}, {} in the sink",
        started.elapsed(),
        stats.received,
        sink.kept().len()
    );
    assert!(
        stats.received < total,
        "intake stopped before the source ran dry ({} of {total})",
        stats.received
    );
    assert_eq!(
        acked + redelivered,
        stats.received,
        "every taken message settled once"
    );
    assert_eq!(acked, stats.succeeded);
    assert_eq!(
        sink.kept().len() as u64,
        acked,
        "an ack only after the sink has it"
    );
    assert_eq!(settled.terminated.load(Relaxed), 0);
}
