//! Views and long-polls: one payment with its journal, the per-payment watchers that wake only
//! that payment's waiters, the "something changed" tick, and the "cannot record" flag's
//! wake-ups.

use std::time::Duration;

use tokio::sync::watch;

use super::{clock, payments, Engine, EngineError, PaymentView, RecordingFault};
use crate::domain::machine::State;

impl Engine {
    /// Subscribes to "something changed" ticks (long-polls, metrics).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Tells waiters that a commit happened.
    pub fn changed(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    /// Tells the waiters of one payment its new state (and bumps the global tick).
    pub fn changed_payment(&self, id: &str, state: State) {
        self.changed();
        self.with_watcher(id, |tx| {
            tx.send_replace(state);
        });
    }

    /// Runs `f` on the watcher of payment `id`, if anyone waits on it.
    fn with_watcher(&self, id: &str, f: impl FnOnce(&watch::Sender<State>)) {
        let w = self
            .inner
            .watchers
            .lock()
            .expect("watchers lock is never held across a panic");
        if let Some(tx) = w.get(id) {
            f(tx);
        }
    }

    /// One payment with its journal.
    pub async fn view(&self, id: &str) -> Result<PaymentView, EngineError> {
        let id = id.to_string();
        let v = self
            .inner
            .store
            .read(move |c| {
                let Some(payment) = payments::get(c, &id)? else {
                    return Ok(Err(EngineError::NotFound(id)));
                };
                let events = payments::events(c, &id)?;
                Ok(Ok((payment, events)))
            })
            .await?;
        let (payment, events) = v?;
        let recording = self.inner.recording.of(&payment.payment_request_id);
        Ok(PaymentView {
            payment,
            events,
            recording,
        })
    }

    /// Whether answers cannot be recorded right now (the health check's flag): which payments
    /// wait, since when, and the latest error. `None` while every commit goes through.
    pub fn recording_fault(&self) -> Option<RecordingFault> {
        self.inner.recording.summary()
    }

    /// A commit of `id`'s answer failed: flags it; the first failure wakes its long-polls so
    /// the cashier learns at once.
    pub(crate) fn cannot_record(&self, id: &str, error: &anyhow::Error) {
        let text = format!("{error:#}");
        if self
            .inner
            .recording
            .payment_failed(id, self.now_ms(), &text)
        {
            tracing::error!(payment = %id, error = %text, "cannot record an answer; retrying the commit, the payment stays open");
            self.wake_watchers(id);
        }
    }

    /// A commit of `id`'s answer went through after failing.
    pub(crate) fn recorded(&self, id: &str) {
        if self.inner.recording.payment_recorded(id) {
            tracing::info!(payment = %id, "the answer is recorded again");
            self.wake_watchers(id);
        }
    }

    fn wake_watchers(&self, id: &str) {
        self.with_watcher(id, |tx| tx.send_modify(|_| {}));
    }

    /// Waits until the payment is final or `wait` passes, then returns it. Only this
    /// payment's commits wake the waiter; the database is read once before and once after.
    pub async fn wait_final(&self, id: &str, wait: Duration) -> Result<PaymentView, EngineError> {
        let mut rx = {
            let mut w = self
                .inner
                .watchers
                .lock()
                .expect("watchers lock is never held across a panic");
            w.entry(id.to_string())
                .or_insert_with(|| watch::channel(State::AwaitingCode).0)
                .subscribe()
        };
        let v = self.view(id).await?;
        if v.payment.state.is_final() || wait.is_zero() {
            self.drop_watcher(id);
            return Ok(v);
        }
        // A wait that began while recording was blocked returns at its deadline (the view
        // carries the condition); one in progress returns as soon as it begins or clears.
        let blocked_at_start = v.recording.is_some();
        let deadline = clock::instant() + wait;
        // A commit from another process (a back-office command on the same database) does
        // not signal us: re-read at least this often.
        const REREAD: Duration = Duration::from_secs(1);
        loop {
            let next = (clock::instant() + REREAD).min(deadline);
            let woken = match tokio::time::timeout_at(next, rx.changed()).await {
                Ok(Ok(())) => {
                    let fin = rx.borrow_and_update().is_final();
                    let blocked = self.inner.recording.of(id).is_some();
                    if !fin && blocked == blocked_at_start {
                        continue;
                    }
                    true
                }
                _ => false,
            };
            let v = self.view(id).await?;
            let blocked_changed = woken && v.recording.is_some() != blocked_at_start;
            if v.payment.state.is_final() || blocked_changed || clock::instant() >= deadline {
                self.drop_watcher(id);
                return Ok(v);
            }
        }
    }

    fn drop_watcher(&self, id: &str) {
        let mut w = self
            .inner
            .watchers
            .lock()
            .expect("watchers lock is never held across a panic");
        if w.get(id).is_some_and(|tx| tx.receiver_count() <= 1) {
            w.remove(id);
        }
    }
}
