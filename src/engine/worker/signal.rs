//! The reversal queue's wake signal: an enqueue, a replay on demand, or the gateway answering
//! again after an unanswered call (network back) wakes the worker; [`Watched`] is the
//! engine's gateway, every answer observed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::gateway::{Answer, Gateway, Inquiry, PayOrder, RefundOrder, Reply};

/// Wakes the worker: on enqueue, on demand, and when the gateway answers again after an
/// unanswered call (network back).
#[derive(Debug)]
pub struct QueueSignal {
    pub(super) wake: Notify,
    /// The last gateway call went unanswered (starts true: after a restart the first answer
    /// replays the queue at once).
    down: AtomicBool,
    /// The gateway answered after being down; the worker makes every item due.
    pub(super) back: AtomicBool,
}

impl Default for QueueSignal {
    fn default() -> Self {
        QueueSignal {
            wake: Notify::new(),
            down: AtomicBool::new(true),
            back: AtomicBool::new(false),
        }
    }
}

impl QueueSignal {
    /// Wakes the worker now (an item was enqueued, or someone asked for a replay).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Notes whether a gateway call got a certain answer.
    pub fn observe(&self, certain: bool) {
        if !certain {
            self.down.store(true, Ordering::SeqCst);
        } else if self.down.swap(false, Ordering::SeqCst) {
            self.back.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }
}

/// The engine's gateway, watched: every outcome feeds the [`QueueSignal`]. (A wrapper rather
/// than `AmsClient::with_observer`, whose single slot is the metrics hook's.)
pub(crate) struct Watched {
    pub(crate) inner: Arc<dyn Gateway>,
    pub(crate) signal: Arc<QueueSignal>,
}

#[async_trait]
impl Gateway for Watched {
    async fn pay(&self, order: &PayOrder) -> Reply<Answer> {
        let o = self.inner.pay(order).await;
        self.signal.observe(o.is_certain());
        o
    }
    fn prepare_pay(&self, order: PayOrder) -> crate::gateway::PreparedPay {
        self.inner.prepare_pay(order)
    }
    async fn send_pay(&self, prepared: crate::gateway::PreparedPay) -> Reply<Answer> {
        let o = self.inner.send_pay(prepared).await;
        self.signal.observe(o.is_certain());
        o
    }
    async fn inquiry_payment(&self, id: &str) -> Reply<Inquiry> {
        let o = self.inner.inquiry_payment(id).await;
        self.signal.observe(o.is_certain());
        o
    }
    async fn cancel(&self, id: &str) -> Reply<Answer> {
        let o = self.inner.cancel(id).await;
        self.signal.observe(o.is_certain());
        o
    }
    async fn refund(&self, order: &RefundOrder) -> Reply<Answer> {
        let o = self.inner.refund(order).await;
        self.signal.observe(o.is_certain());
        o
    }
    async fn inquiry_refund(&self, refund: &RefundOrder) -> Reply<Answer> {
        let o = self.inner.inquiry_refund(refund).await;
        self.signal.observe(o.is_certain());
        o
    }
}
