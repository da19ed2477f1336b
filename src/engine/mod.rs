//! The payment engine's facade: [`Engine`] (its settings, its shared state, the queue
//! worker's wiring, outside events through the one transition path, shutdown). Sale start is
//! in `sale`, views and long-polls in `watch`, start-up recovery in `recovery`, the task that
//! owns an open payment in `driver`. Every decision comes from `domain::machine` through
//! `transition::plan`; every change is a compare-and-set in `store`.

pub mod backoff;
pub mod clock;
mod driver;
pub mod failpoint;
#[cfg(test)]
pub(crate) mod fake;
pub mod notify;
pub mod queue;
pub mod recording;
mod recovery;
mod refund;
mod sale;
mod tasks;
mod transition;
mod watch;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use tokio::sync::{watch as channel, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use clock::local_time;
pub(crate) use transition::{context_of, make_refund_id, Rules, SlipIdentity};

use crate::config::Config;
use crate::domain::code::PaymentCode;
use crate::domain::machine::{Event, State};
use crate::domain::money::Amount;
use crate::gateway::Gateway;
use crate::store::payments::{self, Change, EventRecord, PaymentRecord};
use crate::store::Store;

/// The flow's timings and the terminal facts the engine needs.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Terminal id, part of every request id.
    pub terminal_id: String,
    /// Time zone for request ids and `storeTerminalRequestTime`; `None` = system local.
    pub timezone: Option<crate::config::Tz>,
    /// `orderDescription` sent with every pay.
    pub description: String,
    /// Merchant name on slips.
    pub merchant_name: String,
    /// Store name on slips.
    pub store_name: String,
    /// Deadline of the pay call (the client enforces it; the engine adds a safety margin).
    pub pay_timeout: Duration,
    /// Pause between inquiries.
    pub inquiry_interval: Duration,
    /// Deadline of each inquiry.
    pub inquiry_timeout: Duration,
    /// Inquiry budget.
    pub inquiry_max: u32,
    /// Deadline of cancel and refund calls.
    pub cancel_timeout: Duration,
    /// How long to resend an unanswered cancel or refund before queueing it.
    pub cancel_retry_window: Duration,
    /// Shortest pause between resends.
    pub cancel_retry_min: Duration,
    /// Longest pause between resends.
    pub cancel_retry_max: Duration,
    /// First delay of a queued reversal.
    pub queue_backoff_initial: Duration,
    /// Sent with every pay: the gateway does not process it after request time + this.
    pub payment_expiry: Duration,
    /// Added to a pay's expiry before "no such payment" may mean "never charged".
    pub payment_expiry_margin: Duration,
}

impl EngineSettings {
    /// Takes the settings from the config.
    pub fn from_config(cfg: &Config) -> EngineSettings {
        let f = &cfg.flow;
        EngineSettings {
            terminal_id: cfg.terminal.id.clone(),
            timezone: cfg.timezone(),
            description: format!("{} purchase", cfg.terminal.store_name),
            merchant_name: cfg.terminal.merchant_name.clone(),
            store_name: cfg.terminal.store_name.clone(),
            pay_timeout: f.pay_timeout.0,
            inquiry_interval: f.inquiry_interval.0,
            inquiry_timeout: f.inquiry_timeout.0,
            inquiry_max: f.inquiry_max,
            cancel_timeout: f.cancel_timeout.0,
            cancel_retry_window: f.cancel_retry_window.0,
            cancel_retry_min: f.cancel_retry_min.0,
            cancel_retry_max: f.cancel_retry_max.0,
            queue_backoff_initial: f.queue_backoff_initial.0,
            payment_expiry: f.payment_expiry.0,
            payment_expiry_margin: f.payment_expiry_margin.0,
        }
    }
}

/// What the engine refuses, with what to do. Each maps to a 4xx in the API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no payment {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the daemon is shutting down; try again when it is back")]
    ShuttingDown,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub use recording::{Fault as RecordingBlocked, RecordingFault};

/// A payment with its journal, as the API shows it.
#[derive(Debug, Clone)]
pub struct PaymentView {
    /// The stored payment.
    pub payment: PaymentRecord,
    /// Its journal, oldest first.
    pub events: Vec<EventRecord>,
    /// Set while an answer for this payment cannot be recorded (the database refuses
    /// writes): its stored state is behind, and goods must not be handed over.
    pub recording: Option<RecordingBlocked>,
}

/// What a sale needs.
#[derive(Debug, Clone)]
pub struct SaleRequest {
    /// Amount.
    pub amount: Amount,
    /// The POS's order reference.
    pub order_ref: Option<String>,
    /// The code, or `None` to wait for the next scan.
    pub code: Option<PaymentCode>,
}

/// The engine handle, cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    gateway: Arc<dyn Gateway>,
    settings: EngineSettings,
    /// Wakes the driver of a payment (an abort arrived while it waited).
    tasks: tasks::Tasks,
    /// Bumped after every committed change (metrics, health).
    changes: channel::Sender<u64>,
    /// Wall time for the machine and the pay's expiry (tokio-driven in tests).
    clock: Arc<dyn clock::Clock>,
    /// Commits that fail right now.
    recording: recording::Recording,
    /// Per-payment state watchers for long-polls: only the waiters of a payment wake.
    watchers: Mutex<HashMap<String, channel::Sender<State>>>,
    /// Signalled when a slip was written to the print journal.
    slips: Arc<Notify>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Wakes the reversal queue's worker (enqueue, on demand, gateway back).
    queue: Arc<worker::QueueSignal>,
    /// The daemon's queue replayer and its worker task, once the worker runs.
    replayer: OnceLock<(worker::Replayer, tokio::task::AbortHandle)>,
    /// Sequence numbers taken ahead for sales' ids (engine/sale.rs).
    spare: Mutex<sale::SpareSequences>,
    /// The sale this engine last started without a code: a hint that lets a scan's pay be
    /// signed before its transaction finds the waiting sale (engine/sale.rs).
    awaiting: Mutex<Option<PaymentRecord>>,
}

impl Engine {
    /// Builds an engine; no task runs until a sale starts or [`Engine::recover`] is called.
    pub fn new(store: Store, gateway: Arc<dyn Gateway>, settings: EngineSettings) -> Engine {
        Engine::with_clock(store, gateway, settings, Arc::new(clock::SystemClock))
    }

    /// [`Engine::new`] with an injected wall clock (tests run the pay's expiry in paused time).
    pub fn with_clock(
        store: Store,
        gateway: Arc<dyn Gateway>,
        settings: EngineSettings,
        clock: Arc<dyn clock::Clock>,
    ) -> Engine {
        let queue = Arc::new(worker::QueueSignal::default());
        // Every outcome feeds the queue's "the gateway answers again" wake-up.
        let gateway = Arc::new(worker::Watched {
            inner: gateway,
            signal: queue.clone(),
        });
        Engine {
            inner: Arc::new(Inner {
                store,
                gateway,
                settings,
                clock,
                recording: recording::Recording::default(),
                tasks: tasks::Tasks::default(),
                changes: channel::channel(0).0,
                watchers: Mutex::new(HashMap::new()),
                slips: Arc::new(Notify::new()),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                queue,
                replayer: OnceLock::new(),
                spare: Mutex::default(),
                awaiting: Mutex::default(),
            }),
        }
    }

    /// Starts the reversal queue's worker task (once) on the engine's clock and returns its
    /// replayer, which the API also uses for on-demand replays.
    pub fn start_queue_worker(&self, settings: worker::QueueSettings) -> worker::Replayer {
        self.start_queue_worker_with(settings, self.inner.clock.clone())
    }

    /// [`Engine::start_queue_worker`] with another wall clock (tests that move the queue's
    /// time by hand).
    pub fn start_queue_worker_with(
        &self,
        settings: worker::QueueSettings,
        clock: Arc<dyn clock::Clock>,
    ) -> worker::Replayer {
        let engine = self.clone();
        let replayer = self
            .inner
            .replayer
            .get_or_init(|| {
                let r = worker::Replayer::new(
                    self.inner.store.clone(),
                    self.inner.gateway.clone(),
                    clock,
                    settings,
                    "daemon",
                )
                .with_on_change({
                    let engine = engine.clone();
                    move |id, state| engine.changed_payment(id, state)
                })
                .with_on_fault(move |error| match error {
                    Some(e) => engine.inner.recording.queue_failed(engine.now_ms(), e),
                    None => engine.inner.recording.queue_ok(),
                })
                .with_shutdown(self.inner.shutdown.clone());
                let task = self.inner.tracker.spawn(worker::run(
                    r.clone(),
                    self.inner.queue.clone(),
                    self.inner.shutdown.clone(),
                ));
                (r, task.abort_handle())
            })
            .0
            .clone();
        replayer
    }

    /// The daemon's queue replayer, when its worker runs.
    pub fn replayer(&self) -> Option<&worker::Replayer> {
        self.inner.replayer.get().map(|(r, _)| r)
    }

    /// The queue worker's task, for the health check (it runs until shutdown).
    pub fn queue_worker_task(&self) -> Option<tokio::task::AbortHandle> {
        self.inner.replayer.get().map(|(_, t)| t.clone())
    }

    /// Wakes the queue worker (after an enqueue, or on demand).
    pub fn wake_queue(&self) {
        self.inner.queue.wake();
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The clock the engine reads (the print worker and the queue share it).
    pub fn clock(&self) -> Arc<dyn clock::Clock> {
        self.inner.clock.clone()
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<dyn Gateway> {
        &self.inner.gateway
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// Notified whenever a slip is written to the print journal (the print worker waits on it).
    pub fn slips_written(&self) -> Arc<Notify> {
        self.inner.slips.clone()
    }

    /// Local time at the terminal, with its offset.
    pub fn local_now(&self) -> DateTime<FixedOffset> {
        clock::local_at(self.inner.settings.timezone, self.now_ms())
    }

    /// The engine's wall clock, epoch ms.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The terminal around a transition planned now.
    pub(crate) fn env(&self) -> transition::Env<'_> {
        let s = &self.inner.settings;
        let now_ms = self.now_ms();
        transition::Env {
            rules: s.rules(),
            now_ms,
            local: clock::local_at(s.timezone, now_ms).naive_local(),
            who: SlipIdentity {
                merchant_name: &s.merchant_name,
                store_name: &s.store_name,
                terminal_id: &s.terminal_id,
            },
            backoff_initial: s.queue_backoff_initial,
        }
    }

    /// The cashier aborts a sale that is not final: a cancel (flow step 5).
    pub async fn abort(&self, id: &str) -> Result<PaymentRecord, EngineError> {
        let rec = self.apply_event(id, Event::Abort).await?;
        if rec.state == State::Cancelling {
            self.wake_or_spawn(&rec);
        }
        Ok(rec)
    }

    /// Applies an outside event (abort, notification, refund request) with compare-and-set,
    /// retrying on a concurrent change. Returns the payment after the event.
    pub async fn apply_event(&self, id: &str, event: Event) -> Result<PaymentRecord, EngineError> {
        self.apply_event_with(id, event, |_, _, _| Ok(())).await
    }

    /// [`Engine::apply_event`] where `extend` adds to the machine's change inside the same
    /// transaction, after the machine said go (rows written with the move: a refund and its
    /// queue item, a reason). A move to NEEDS_ATTENTION stores its cause as the reason.
    pub async fn apply_event_with<F>(
        &self,
        id: &str,
        event: Event,
        extend: F,
    ) -> Result<PaymentRecord, EngineError>
    where
        F: Fn(&crate::store::transition::Tx, &PaymentRecord, &mut Change) -> anyhow::Result<()>
            + Send
            + 'static,
    {
        let id_owned = id.to_string();
        let engine = self.clone();
        let outcome = self
            .inner
            .store
            .call(move |c| {
                let env = engine.env();
                let facts = crate::gateway::Facts::default();
                Ok(match transition::commit_event(c, &env, &id_owned, &event, &facts, &extend)? {
                    None => Err(EngineError::NotFound(id_owned)),
                    Some(transition::Committed::Moved { after, .. }) => Ok((*after, true)),
                    Some(transition::Committed::Ignored { rec, why, .. }) => {
                        tracing::info!(payment = %id_owned, state = %rec.state, why, "event changes nothing");
                        Ok((rec, false))
                    }
                    Some(transition::Committed::Refused { why, .. }) => Err(EngineError::Conflict(why)),
                })
            })
            .await??;
        let (rec, changed) = outcome;
        if changed {
            self.changed_payment(&rec.payment_request_id, rec.state);
            self.inner.slips.notify_one();
        }
        Ok(rec)
    }

    /// Stops drivers at their next safe point and waits (bounded) for in-flight calls.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    /// Number of payment tasks running.
    pub fn active_drivers(&self) -> usize {
        self.inner.tracker.len()
    }
}

#[cfg(test)]
mod tests;
