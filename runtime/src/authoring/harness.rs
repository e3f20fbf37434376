//! Runs one case of a fixtures file. A single call goes through the engine
//! as a pipeline worker makes it; a case with an `outcome` runs its message
//! through a real [`Pipeline`] — the pipeline's policy table, retries,
//! circuit breaker and dead-letter path — with a one-message source and
//! sinks that fail as the case's faults say, and reports what the broker
//! would see. Retry delays are not waited for (the policy's decisions do not
//! depend on them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::fixtures::{BreakerFault, Case, Fixtures, Outcome, SinkFault};
use crate::config::units::Dur;
use crate::config::{BreakerConfig, Jitter, PipelineConfig};
use crate::engine::{Engine, Plugin, PluginSpec, Worker};
use crate::failure::{Failure, FailureClass};
use crate::message::{Header, Message, Output};
use crate::pipeline::{Parts, Pipeline, PipelineError, Sinks};
use crate::router::Policy;
use crate::router::breaker::BreakerState;
use crate::router::dead_letter::headers as dl;
use crate::sinks::{Accepted, Record, Sink, done};
use crate::sources::{Delivery, Settle, Settlement, Source, SourceError};

/// Longest one case may run through the pipeline.
const CASE_LIMIT: Duration = Duration::from_secs(60);

/// What the cases of one fixtures file share: the handler, the policy and
/// the pipeline's sinks.
#[derive(Debug, Clone)]
pub struct Setup {
    pub pipeline: String,
    pub spec: PluginSpec,
    pub policy: Policy,
    pub breaker: BreakerConfig,
    /// Named sinks of the pipeline (besides the default one).
    pub sinks: Vec<String>,
    pub has_default_sink: bool,
    pub has_dead_letter: bool,
    /// The source answers requests (NATS `request_reply`).
    pub requests: bool,
    /// The source's `fallback` reply.
    pub fallback: Option<bytes::Bytes>,
}

impl Setup {
    /// The pipeline's parts, or the defaults of a pipeline with one sink and
    /// a dead letter when the fixtures name only a plugin.
    pub fn of(f: &Fixtures) -> anyhow::Result<Setup> {
        let mut setup = match &f.pipeline {
            Some(p) => {
                let cfg = crate::config::load(p).map_err(|e| anyhow::anyhow!("{e}"))?;
                Setup::of_pipeline(&cfg)
            }
            None => Setup {
                pipeline: "test".into(),
                spec: PluginSpec::new(""),
                policy: Policy {
                    errors: Default::default(),
                    retry: Default::default(),
                },
                breaker: BreakerConfig::default(),
                sinks: Vec::new(),
                has_default_sink: true,
                has_dead_letter: true,
                requests: false,
                fallback: None,
            },
        };
        if let Some(p) = &f.plugin {
            setup.spec.path = p.clone();
        }
        Ok(setup)
    }

    fn of_pipeline(cfg: &PipelineConfig) -> Setup {
        let (requests, fallback) = match &cfg.source {
            crate::config::SourceConfig::Nats(n) => {
                (n.request_reply, n.fallback.clone().map(bytes::Bytes::from))
            }
            _ => (false, None),
        };
        Setup {
            requests,
            fallback,
            pipeline: cfg.name.clone(),
            spec: PluginSpec::from_config(&cfg.name, &cfg.handler),
            policy: Policy {
                errors: cfg.errors.clone(),
                retry: cfg.retry.clone(),
            },
            breaker: cfg.circuit_breaker.clone(),
            sinks: cfg.sinks.keys().cloned().collect(),
            has_default_sink: cfg.sink.is_some(),
            has_dead_letter: cfg.dead_letter.is_some(),
        }
    }

    /// The plugin spec of `case`: config and budgets of the pipeline, then
    /// of the file, then of the case.
    fn spec_of(&self, f: &Fixtures, case: &Case) -> PluginSpec {
        let mut spec = self.spec.clone();
        let mut config: BTreeMap<String, String> = spec.config.drain(..).collect();
        config.extend(f.config.clone());
        config.extend(case.config.clone());
        spec.config = config.into_iter().collect();
        for b in [&f.budgets, &case.budgets] {
            if let Some(fuel) = b.fuel {
                spec.fuel = fuel;
            }
            if let Some(t) = b.timeout {
                spec.timeout = t.0;
            }
            if let Some(m) = b.memory {
                spec.memory = m.0;
            }
        }
        spec
    }
}

/// What happened to a case's message.
#[derive(Debug)]
pub enum Got {
    /// A single call answered with outputs.
    Outputs(Vec<Output>),
    /// A single call failed.
    Failed(Failure),
    /// Through the pipeline: the outcome, the attempt reached, the class of
    /// the last failure, what the sinks accepted and the dead-letter record.
    Pipeline {
        outcome: Outcome,
        attempts: u32,
        class: Option<FailureClass>,
        outputs: Vec<Output>,
        dead_letter: Option<Record>,
        /// A request's reply: its payload and the failure class it names.
        reply: Option<(bytes::Bytes, Option<String>)>,
    },
    /// The case could not run (the plugin did not load, the run hung).
    Error(String),
}

/// The message of a case.
pub fn message_of(case: &Case) -> Message {
    let i = &case.input;
    let mut m = Message::new(i.topic.clone(), i.payload.clone().into_bytes());
    m.key = i.key.clone().map(|k| k.into_bytes().into());
    m.headers = i
        .headers
        .iter()
        .map(|(k, v)| Header::new(k.clone(), v.clone().into_bytes()))
        .collect();
    m.attempt = i.attempt;
    m
}

/// Runs one case.
pub async fn run(engine: &Engine, setup: &Setup, f: &Fixtures, case: &Case) -> Got {
    let mut spec = setup.spec_of(f, case);
    spec.pipeline = setup.pipeline.clone();
    // A plugin per case: the kv store starts from the case's state only.
    let plugin = match Plugin::load(engine, spec).await {
        Ok(p) => p,
        Err(e) => return Got::Error(format!("the plugin did not load: {e}")),
    };
    for (k, v) in &case.kv {
        plugin.kv_preset(k, v.as_bytes());
    }
    let msg = message_of(case);
    if !case.through_pipeline() {
        let (result, _) = Worker::new(plugin).handle(&msg).await;
        return match result {
            Ok(outputs) => Got::Outputs(outputs),
            Err(f) => Got::Failed(f),
        };
    }
    through_pipeline(setup, case, plugin, msg).await
}

async fn through_pipeline(setup: &Setup, case: &Case, plugin: Plugin, msg: Message) -> Got {
    let faults = &case.faults;
    let accepted = Arc::new(Mutex::new(Vec::<Output>::new()));
    let sink = |name: Option<String>| -> Arc<dyn Sink> {
        Arc::new(FaultSink {
            name,
            fault: faults.sink,
            times: faults.times,
            failed: AtomicU32::new(0),
            kept: accepted.clone(),
        })
    };
    let mut sinks = Sinks::default();
    if setup.has_default_sink {
        sinks.default = Some(sink(None));
    }
    for n in &setup.sinks {
        sinks.named.insert(n.clone(), sink(Some(n.clone())));
    }
    let dead = Arc::new(Mutex::new(Vec::<Output>::new()));
    let dead_letter: Option<Arc<dyn Sink>> = setup.has_dead_letter.then(|| {
        Arc::new(FaultSink {
            name: None,
            fault: faults.dead_letter,
            times: None,
            failed: AtomicU32::new(0),
            kept: dead.clone(),
        }) as Arc<dyn Sink>
    });
    let mut policy = setup.policy.clone();
    policy.retry.initial = Dur(Duration::ZERO);
    policy.retry.max = Dur(Duration::ZERO);
    policy.retry.jitter = Jitter::None;
    let request = case.input.request.unwrap_or(setup.requests);
    let state = Arc::new(CaseState {
        request,
        ..CaseState::default()
    });
    let source = CaseSource {
        pending: Some(msg.clone()),
        state: state.clone(),
    };
    let pipeline = Pipeline::new(Parts {
        name: setup.pipeline.clone(),
        source: Box::new(source),
        plugin,
        sinks,
        dead_letter,
        policy,
        breaker: setup.breaker.clone(),
        dedup: None,
        concurrency: 1,
        publish_window: 1,
        batch: 1,
        publish_timeout: Duration::from_secs(10),
    });
    let stats = pipeline.stats();
    let breaker = pipeline.breaker();
    if faults.breaker == Some(BreakerFault::Open) {
        breaker.trip();
    }
    // Once the breaker opens, the message is held: shut down, and the
    // pipeline hands it back to the source, as it would to a broker.
    let watch = breaker.clone();
    let shutdown = async move {
        while watch.state() == BreakerState::Closed {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let result = match tokio::time::timeout(CASE_LIMIT, pipeline.run(shutdown)).await {
        Ok(r) => r,
        Err(_) => return Got::Error(format!("the pipeline did not finish within {CASE_LIMIT:?}")),
    };
    let snap = stats.snapshot();
    let last = state
        .settled
        .lock()
        .map(|s| s.last().copied())
        .ok()
        .flatten();
    let mut class = snap
        .last_error
        .as_deref()
        .and_then(|e| e.split(':').next())
        .and_then(|c| FailureClass::ALL.into_iter().find(|k| k.as_str() == c));
    let outcome = match result {
        Err(PipelineError::Stopped { failure, .. }) => {
            class = Some(failure.class);
            Outcome::Stopped
        }
        Err(e) => return Got::Error(e.to_string()),
        Ok(_) if request => Outcome::Answered,
        Ok(_) => match last {
            Some(Settlement::Ack) if snap.dropped > 0 => Outcome::Dropped,
            Some(Settlement::Ack) => Outcome::Acked,
            Some(Settlement::Terminated) => Outcome::DeadLettered,
            Some(Settlement::Redeliver { .. }) | None => {
                if breaker.state() == BreakerState::Closed {
                    Outcome::Redelivered
                } else {
                    Outcome::Held
                }
            }
        },
    };
    let attempts = if snap.received == 0 {
        0
    } else {
        msg.attempt
            .saturating_add(u32::try_from(snap.retries).unwrap_or(u32::MAX))
    };
    let dead_letter = dead
        .lock()
        .ok()
        .and_then(|d| d.last().cloned())
        .map(|o| Record {
            topic: o.topic,
            key: o.key,
            payload: o.payload,
            headers: o.headers,
            id: String::new(),
        });
    if let Some(c) = dead_letter.as_ref().and_then(|r| {
        r.headers
            .iter()
            .find(|h| h.key == dl::CLASS)
            .and_then(|h| std::str::from_utf8(&h.value).ok())
            .and_then(|v| FailureClass::ALL.into_iter().find(|k| k.as_str() == v))
    }) {
        class = Some(c);
    }
    let outputs = accepted.lock().map(|a| a.clone()).unwrap_or_default();
    let reply = request.then(|| {
        let answer = state.answer.lock().ok().and_then(|a| a.clone());
        let how = last.unwrap_or(Settlement::Redeliver {
            delay: Duration::ZERO,
        });
        let (payload, headers) =
            crate::sources::nats::reply::reply_to(answer.as_ref(), setup.fallback.as_ref(), how);
        let class = headers
            .get(crate::sources::nats::reply::CLASS_HEADER)
            .map(|v| v.as_str().to_string());
        (payload, class)
    });
    if let Some((_, Some(c))) = &reply
        && let Some(k) = FailureClass::ALL.into_iter().find(|k| k.as_str() == c)
    {
        class = Some(k);
    }
    Got::Pipeline {
        reply,
        outcome,
        attempts,
        class,
        outputs,
        dead_letter,
    }
}

/// A sink that fails as a case's faults say and keeps what it accepts.
struct FaultSink {
    name: Option<String>,
    fault: Option<SinkFault>,
    /// Failures before it works; `None` = it never does.
    times: Option<u32>,
    failed: AtomicU32,
    kept: Arc<Mutex<Vec<Output>>>,
}

impl Sink for FaultSink {
    fn send<'a>(&'a self, records: &'a [Record]) -> BoxFuture<'a, Result<Accepted, Failure>> {
        let failing = self.fault.filter(|_| {
            let n = self.failed.load(Relaxed);
            self.times.is_none_or(|t| n < t)
        });
        let result = match failing {
            Some(f) => {
                self.failed.fetch_add(1, Relaxed);
                Err(match f {
                    SinkFault::Transient => Failure::new(
                        FailureClass::Sink,
                        "injected fault: the broker is unavailable",
                    ),
                    SinkFault::Rejected => Failure::new(
                        FailureClass::Rejected,
                        "injected fault: the broker refused the record",
                    ),
                })
            }
            None => {
                if let Ok(mut k) = self.kept.lock() {
                    k.extend(records.iter().map(|r| Output {
                        sink: self.name.clone(),
                        topic: r.topic.clone(),
                        key: r.key.clone(),
                        payload: r.payload.clone(),
                        headers: r.headers.clone(),
                    }));
                }
                Ok(done())
            }
        };
        Box::pin(async move { result })
    }
}

/// How the case's one delivery was settled.
#[derive(Default)]
struct CaseState {
    settled: Mutex<Vec<Settlement>>,
    done: Notify,
    /// The delivery is a request: the pipeline records its answer here.
    request: bool,
    answer: Mutex<Option<crate::sources::Answer>>,
}

/// Hands out the case's message once; ends once it was settled (a message
/// handed back is not delivered again: the case reports it).
struct CaseSource {
    pending: Option<Message>,
    state: Arc<CaseState>,
}

struct CaseHandle(Arc<CaseState>);

impl Settle for CaseHandle {
    fn settle(self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        if let Ok(mut s) = self.0.settled.lock() {
            s.push(how);
        }
        self.0.done.notify_one();
        crate::sources::settled()
    }

    fn wants_answer(&self) -> bool {
        self.0.request
    }

    fn answer(&mut self, answer: crate::sources::Answer) {
        if let Ok(mut a) = self.0.answer.lock() {
            *a = Some(answer);
        }
    }
}

impl Source for CaseSource {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Delivery>, SourceError>> {
        Box::pin(async move {
            if let Some(m) = self.pending.take() {
                let handle = Box::new(CaseHandle(self.state.clone()));
                return Ok(Some(Delivery::new(m, handle)));
            }
            let settled = self
                .state
                .settled
                .lock()
                .map(|s| !s.is_empty())
                .unwrap_or(true);
            if !settled {
                self.state.done.notified().await;
            }
            Ok(None)
        })
    }
}
