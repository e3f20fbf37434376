//! A worker's publish window: messages whose outputs were sent, settled in
//! the order they were sent, each once its sinks accepted it or its publish
//! deadline passed.
//!
//! Only the oldest entry is waited on. Entries settle in order, so a later
//! acceptance can wait until it is the oldest; the sinks' acceptances are
//! passive (a delivery report, a PUBACK, a flush that covers every earlier
//! send), so not polling them loses nothing. Deadlines grow with the send
//! order, so one timer — re-armed only when the oldest entry is still
//! waiting — bounds the whole window, instead of a timer per message.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::failure::Failure;
use crate::sinks::Accepted;

/// Sent items (`T`) waiting for their acceptance, oldest first.
pub(super) struct Window<T> {
    entries: VecDeque<Entry<T>>,
    /// The publish timeout, for the failure of an entry whose deadline passed.
    timeout: Duration,
    /// Armed at `armed_for` while the oldest entry waits.
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

struct Entry<T> {
    item: T,
    accepted: Accepted,
    deadline: Instant,
}

impl<T> Window<T> {
    pub(super) fn new(timeout: Duration) -> Self {
        Window {
            entries: VecDeque::new(),
            timeout,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed_for: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the newest entry: `accepted` resolves once its sinks took it,
    /// and it fails as a publish timeout if that has not happened by `deadline`.
    pub(super) fn push(&mut self, item: T, accepted: Accepted, deadline: Instant) {
        self.entries.push_back(Entry {
            item,
            accepted,
            deadline,
        });
    }

    /// The oldest entry once it is settled-ready: accepted, failed, or past
    /// its deadline (a `sink` failure). `None` when the window is empty.
    pub(super) async fn next(&mut self) -> Option<(T, Result<(), Failure>)> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(T, Result<(), Failure>)>> {
        let Some(front) = self.entries.front_mut() else {
            return Poll::Ready(None);
        };
        let outcome = match front.accepted.as_mut().poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                if self.armed_for != Some(front.deadline) {
                    // A later deadline only moves the armed timer forward,
                    // which tokio does without touching its wheel.
                    self.timer.as_mut().reset(front.deadline);
                    self.armed_for = Some(front.deadline);
                }
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Err(super::publish::publish_timed_out(self.timeout))
            }
        };
        let Some(front) = self.entries.pop_front() else {
            return Poll::Ready(None);
        };
        Poll::Ready(Some((front.item, outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureClass;

    fn pending() -> Accepted {
        Box::pin(std::future::pending())
    }

    #[tokio::test]
    async fn settles_in_send_order_and_times_out_the_oldest() {
        let step = Duration::from_millis(100);
        let mut w = Window::new(step);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let now = Instant::now();
        // The second is accepted at once but waits behind the first.
        w.push(1, pending(), now + step);
        w.push(2, crate::sinks::done(), now + step);
        w.push(
            3,
            Box::pin(async move {
                rx.await
                    .map_err(|_| Failure::new(FailureClass::Sink, "gone"))
            }),
            now + 20 * step,
        );
        assert_eq!(w.len(), 3);
        let (first, r) = w.next().await.expect("an entry");
        assert_eq!(first, 1);
        let f = r.expect_err("the first is never accepted: it times out");
        assert_eq!(f.class, FailureClass::Sink);
        assert!(f.message.contains("timed out"), "{}", f.message);
        assert!(Instant::now() - now >= step, "not before its deadline");
        let (second, r) = w.next().await.expect("an entry");
        assert_eq!((second, r.is_ok()), (2, true));
        tx.send(()).expect("receiver alive");
        let (third, r) = w.next().await.expect("an entry");
        assert_eq!((third, r.is_ok()), (3, true));
        assert!(
            Instant::now() - now < 10 * step,
            "the third settled when accepted, not at its deadline"
        );
        assert!(w.is_empty());
        assert!(w.next().await.is_none());
    }
}
