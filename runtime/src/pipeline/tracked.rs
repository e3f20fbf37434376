//! A delivery's settle handle wrapped so that dedup knows its message is in
//! flight until it is settled or dropped, whichever path the message took.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::policy::dedup::Dedup;
use crate::sources::{Answer, Settle, Settlement};
use crate::wait::settled;

/// A delivery's settle handle that keeps its id in flight in `dedup` until
/// it is settled or dropped, whichever path the message took.
pub struct Tracked {
    inner: Option<Box<dyn Settle>>,
    dedup: Arc<Mutex<Dedup>>,
    id: Vec<u8>,
}

impl Tracked {
    /// Marks `id` in flight and wraps `inner`.
    pub fn new(inner: Box<dyn Settle>, dedup: Arc<Mutex<Dedup>>, id: Vec<u8>) -> Tracked {
        dedup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .begin(id.clone());
        Tracked {
            inner: Some(inner),
            dedup,
            id,
        }
    }
}

impl Settle for Tracked {
    fn settle(mut self: Box<Self>, how: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
        match self.inner.take() {
            Some(inner) => inner.settle(how),
            None => settled(),
        }
    }

    fn in_progress(&self) -> BoxFuture<'static, ()> {
        match &self.inner {
            Some(inner) => inner.in_progress(),
            None => Box::pin(async {}),
        }
    }

    fn wants_answer(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.wants_answer())
    }

    fn answer(&mut self, answer: Answer) {
        if let Some(inner) = &mut self.inner {
            inner.answer(answer);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dedup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .end(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DedupConfig;
    use crate::config::units::Dur;
    use crate::policy::dedup::Seen;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn in_flight_until_the_handle_is_settled_or_dropped() {
        struct Nothing;
        impl Settle for Nothing {
            fn settle(self: Box<Self>, _: Settlement) -> BoxFuture<'static, anyhow::Result<()>> {
                settled()
            }
        }
        let cfg = DedupConfig {
            by: "key".into(),
            window: Dur(Duration::from_secs(10)),
            max_entries: 10,
        };
        let d = Arc::new(Mutex::new(Dedup::new(&cfg).unwrap()));
        let check = |id: &[u8]| d.lock().unwrap().check(id);
        let a = Box::new(Tracked::new(Box::new(Nothing), d.clone(), b"a".to_vec()));
        let a2 = Box::new(Tracked::new(Box::new(Nothing), d.clone(), b"a".to_vec()));
        assert_eq!(check(b"a"), Seen::InFlight);
        assert_eq!(check(b"b"), Seen::New);
        a.settle(Settlement::Ack).await.unwrap();
        assert_eq!(check(b"a"), Seen::InFlight, "a second copy still held");
        drop(a2);
        assert_eq!(check(b"a"), Seen::New, "handed back: not a duplicate");
        d.lock().unwrap().remember(b"a".to_vec());
        assert_eq!(check(b"a"), Seen::Settled);
    }
}
