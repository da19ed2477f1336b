//! The payment engine: starts sales, binds scans, aborts, and runs one tokio task per open
//! payment that performs the state machine's effects against the gateway. Every decision
//! comes from `domain::machine`; every change is a compare-and-set in `store`.

pub mod backoff;
pub mod clock;
mod driver;
pub mod failpoint;
#[cfg(test)]
pub(crate) mod fake;
pub mod notify;
pub mod queue;
pub mod recording;
mod refund;
mod transition;
pub mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset, TimeZone};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::domain::code::PaymentCode;
use crate::domain::machine::{self, Context, Event, State};
use crate::domain::money::Amount;
use crate::domain::request_id::{self, IdParts};
use crate::gateway::Gateway;
use crate::store::payments::{self, Change, CreateError, EventRecord, NewPayment, PaymentRecord};
use crate::store::{now_ms, Store};

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
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// Bumped after every committed change (metrics, health).
    changes: watch::Sender<u64>,
    /// Wall time for the machine and the pay's expiry (tokio-driven in tests).
    clock: Arc<dyn clock::Clock>,
    /// Commits that fail right now.
    recording: recording::Recording,
    /// Per-payment state watchers for long-polls: only the waiters of a payment wake.
    watchers: Mutex<HashMap<String, watch::Sender<State>>>,
    /// Signalled when a slip was written to the print journal.
    slips: Arc<Notify>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Wakes the reversal queue's worker (enqueue, on demand, gateway back).
    queue: Arc<worker::QueueSignal>,
    /// The daemon's queue replayer and its worker task, once the worker runs.
    replayer: OnceLock<(worker::Replayer, tokio::task::AbortHandle)>,
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
                wakers: Mutex::new(HashMap::new()),
                changes: watch::channel(0).0,
                watchers: Mutex::new(HashMap::new()),
                slips: Arc::new(Notify::new()),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                queue,
                replayer: OnceLock::new(),
            }),
        }
    }

    /// Starts the reversal queue's worker task (once) and returns its replayer, which the API
    /// also uses for on-demand replays.
    pub fn start_queue_worker(&self, settings: worker::QueueSettings) -> worker::Replayer {
        self.start_queue_worker_with(settings, Arc::new(clock::SystemClock))
    }

    /// [`Engine::start_queue_worker`] with an injected wall clock (tests).
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

    /// The gateway.
    pub fn gateway(&self) -> &Arc<dyn Gateway> {
        &self.inner.gateway
    }

    /// The settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

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
        let w = self
            .inner
            .watchers
            .lock()
            .expect("watchers lock is never held across a panic");
        if let Some(tx) = w.get(id) {
            tx.send_replace(state);
        }
    }

    /// Notified whenever a slip is written to the print journal (the print worker waits on it).
    pub fn slips_written(&self) -> Arc<Notify> {
        self.inner.slips.clone()
    }

    /// The slip a move from `rec`'s state to `to` prints, if any: SALE on success, CANCEL on a
    /// confirmed reversal by cancel, REFUND (for `refund`) on a confirmed refund.
    pub fn slip_for(
        &self,
        rec: &PaymentRecord,
        to: State,
        refund: Option<&crate::store::payments::RefundRecord>,
    ) -> Option<crate::domain::slip::SlipData> {
        let s = &self.inner.settings;
        slip_data(
            &SlipIdentity {
                merchant_name: &s.merchant_name,
                store_name: &s.store_name,
                terminal_id: &s.terminal_id,
            },
            self.local_now().naive_local(),
            rec,
            to,
            refund,
        )
    }

    /// Local time at the terminal, with its offset.
    pub fn local_now(&self) -> DateTime<FixedOffset> {
        local_time(self.inner.settings.timezone, chrono::Utc::now())
    }

    /// The engine's wall clock, epoch ms.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The terminal around a transition planned now.
    pub(crate) fn env(&self) -> transition::Env<'_> {
        let s = &self.inner.settings;
        let now_ms = self.now_ms();
        let utc = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
        transition::Env {
            rules: s.rules(),
            now_ms,
            local: local_time(s.timezone, utc).naive_local(),
            who: SlipIdentity {
                merchant_name: &s.merchant_name,
                store_name: &s.store_name,
                terminal_id: &s.terminal_id,
            },
            backoff_initial: s.queue_backoff_initial,
        }
    }

    /// The `paymentExpiryTime` of a pay requested now: `payment_expiry` later, rounded up to
    /// the second it is sent with, as epoch ms and as terminal-local time.
    fn pay_expiry(&self) -> (i64, DateTime<FixedOffset>) {
        let expiry = i64::try_from(self.inner.settings.payment_expiry.as_millis()).unwrap_or(0);
        let at = self.now_ms().saturating_add(expiry);
        let at = at.saturating_add(999).div_euclid(1000).saturating_mul(1000);
        let utc = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
        (at, local_time(self.inner.settings.timezone, utc))
    }

    /// Starts a sale. With a code the pay intent is committed (rule 1) and the pay is sent by
    /// the payment's task; without one the sale waits for the next scan.
    pub async fn start_sale(&self, req: SaleRequest) -> Result<PaymentRecord, EngineError> {
        self.start_sale_once(req, None).await.map(|(rec, _)| rec)
    }

    /// [`Engine::start_sale`] under an `Idempotency-Key`, stored in the intent's transaction:
    /// the same key and request return the payment they created (`true`: nothing new was
    /// started), the same key with another request is refused.
    pub async fn start_sale_once(
        &self,
        req: SaleRequest,
        key: Option<crate::store::idempotency::Idempotency>,
    ) -> Result<(PaymentRecord, bool), EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let now_local = self.local_now();
        let terminal_time = now_local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let (expires_ms, expires_at) = self.pay_expiry();
        let new = NewPayment {
            pay_expires_at: req.code.is_some().then_some(expires_ms),
            order_ref: req.order_ref.clone(),
            amount: req.amount,
            state: if req.code.is_some() {
                State::Paying
            } else {
                State::AwaitingCode
            },
            code_masked: req.code.as_ref().map(PaymentCode::masked),
            terminal_time,
        };
        let terminal = self.inner.settings.terminal_id.clone();
        let local = now_local.naive_local();
        let amount_minor = req.amount.minor();
        // The id exists as soon as the transaction has taken its sequence number: it is
        // handed out then, so the pay request is serialized and signed while the intent's
        // commit is still on its way to disk. Nothing is sent before that commit returns.
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<String>();
        let commit = self.inner.store.call(move |c| {
            let make_id = |seq| {
                let id = make_payment_id(local, &terminal, amount_minor, seq);
                let _ = id_tx.send(id.clone());
                id
            };
            let created = match &key {
                None => payments::create(c, &new, now_ms(), make_id).map(|rec| (rec, false)),
                Some(k) => payments::create_once(c, &new, now_ms(), make_id, k),
            };
            match created {
                // A database error fails the job, so its savepoint rolls the whole of it back.
                Err(CreateError::Db(e)) => Err(e.into()),
                other => Ok(other),
            }
        });
        let prepare = async {
            let code = req.code.clone()?;
            let id = id_rx.await.ok()?;
            Some(self.inner.gateway.prepare_pay(crate::gateway::PayOrder {
                payment_request_id: id,
                amount: req.amount,
                code,
                order_ref: req.order_ref.clone(),
                description: self.inner.settings.description.clone(),
                terminal_time: now_local,
                expires_at: Some(expires_at),
            }))
        };
        let (committed, prepared) = tokio::join!(commit, prepare);
        let (rec, replayed) = committed?.map_err(create_error)?;
        if replayed {
            tracing::info!(payment = %rec.payment_request_id, "sale retried with its Idempotency-Key; nothing new started");
            return Ok((rec, true));
        }
        self.changed();
        tracing::info!(payment = %rec.payment_request_id, amount = %rec.amount, state = %rec.state, "sale started");
        if let Some(prepared) = prepared {
            failpoint::hit("intent_committed");
            debug_assert_eq!(prepared.order.payment_request_id, rec.payment_request_id);
            self.spawn_driver(
                rec.payment_request_id.clone(),
                machine::Effect::SendPay,
                Some(prepared),
            );
        }
        Ok((rec, false))
    }

    /// Binds a scanned code to the sale waiting for one and sends the pay.
    pub async fn bind_code(&self, code: PaymentCode) -> Result<PaymentRecord, EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let masked = code.masked();
        let now_local = self.local_now();
        let terminal_time = now_local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let (expires_ms, expires_at) = self.pay_expiry();
        // As in `start_sale`: the waiting sale is handed out from inside the transaction, so
        // the pay request is signed while the commit is on its way to disk.
        let (found_tx, found_rx) = tokio::sync::oneshot::channel::<PaymentRecord>();
        let engine = self.clone();
        let commit = self.inner.store.call(move |c| {
            let Some(waiting) = payments::awaiting_code(c)? else {
                return Ok(None);
            };
            let _ = found_tx.send(waiting.clone());
            let env = engine.env();
            let transition::Planned::Move(p) = transition::plan(
                &env,
                &waiting,
                &Event::CodeBound,
                &crate::gateway::Facts::default(),
                None,
                &mut || Ok(payments::next_sequence(c)?),
            )?
            else {
                return Ok(None);
            };
            // The intent of the pay: the masked code, the time and the expiry it is sent with.
            let change = Change {
                cause: format!("code {masked} scanned; pay intent committed"),
                code_masked: Some(masked),
                terminal_time: Some(terminal_time),
                pay_expires_at: Some(expires_ms),
                ..p.change
            };
            Ok(payments::apply(
                c,
                &waiting.payment_request_id,
                waiting.state,
                &change,
                env.now_ms,
            )?)
        });
        let prepare = async {
            let waiting = found_rx.await.ok()?;
            Some(self.inner.gateway.prepare_pay(crate::gateway::PayOrder {
                payment_request_id: waiting.payment_request_id,
                amount: waiting.amount,
                code,
                order_ref: waiting.order_ref,
                description: self.inner.settings.description.clone(),
                terminal_time: now_local,
                expires_at: Some(expires_at),
            }))
        };
        let (committed, prepared) = tokio::join!(commit, prepare);
        let rec = committed?.ok_or_else(|| {
            EngineError::Conflict(
                "no sale is waiting for a code: start one (posd pay --amount X) before scanning"
                    .into(),
            )
        })?;
        self.changed();
        failpoint::hit("intent_committed");
        // The compare-and-set moved exactly the sale that was handed out.
        let prepared = prepared.filter(|p| p.order.payment_request_id == rec.payment_request_id);
        self.spawn_driver(
            rec.payment_request_id.clone(),
            machine::Effect::SendPay,
            prepared,
        );
        Ok(rec)
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
                for _ in 0..16 {
                    let Some(rec) = payments::get(c, &id_owned)? else {
                        return Ok(Err(EngineError::NotFound(id_owned)));
                    };
                    let refund = match &rec.active_refund_id {
                        Some(r) => payments::get_refund(c, r)?,
                        None => None,
                    };
                    let planned = transition::plan(
                        &env,
                        &rec,
                        &event,
                        &crate::gateway::Facts::default(),
                        refund.as_ref(),
                        &mut || Ok(payments::next_sequence(c)?),
                    )?;
                    match planned {
                        transition::Planned::Move(p) => {
                            let mut change = p.change;
                            let tx = c.savepoint()?;
                            extend(&tx, &rec, &mut change)?;
                            if let Some(new) = payments::apply_in(&tx, &id_owned, rec.state, &change, env.now_ms)? {
                                tx.commit()?;
                                return Ok(Ok((new, true)));
                            }
                        }
                        transition::Planned::Ignore { why, .. } => {
                            tracing::info!(payment = %id_owned, state = %rec.state, why, "event changes nothing");
                            return Ok(Ok((rec, false)));
                        }
                        transition::Planned::Refuse { why } => return Ok(Err(EngineError::Conflict(why))),
                    }
                }
                Err(anyhow::anyhow!("payment {id_owned} kept changing; try again"))
            })
            .await??;
        let (rec, changed) = outcome;
        if changed {
            self.changed_payment(&rec.payment_request_id, rec.state);
            self.inner.slips.notify_one();
        }
        Ok(rec)
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
        let w = self
            .inner
            .watchers
            .lock()
            .expect("watchers lock is never held across a panic");
        if let Some(tx) = w.get(id) {
            tx.send_modify(|_| {});
        }
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
        let deadline = tokio::time::Instant::now() + wait;
        // A commit from another process (a back-office command on the same database) does
        // not signal us: re-read at least this often.
        const REREAD: Duration = Duration::from_secs(1);
        loop {
            let next = (tokio::time::Instant::now() + REREAD).min(deadline);
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
            if v.payment.state.is_final()
                || blocked_changed
                || tokio::time::Instant::now() >= deadline
            {
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

    /// Drives every payment that is not final on to a final state (rule 6). Called once at
    /// start-up, before the API accepts sales.
    pub async fn recover(&self) -> Result<usize, EngineError> {
        let open = self
            .inner
            .store
            .call(|c| Ok(payments::open_payments(c)?))
            .await?;
        let n = open.len();
        for rec in open {
            if self.refund_is_queued(&rec).await? {
                // The queue owns this refund now; a driver would send it a second time.
                tracing::info!(payment = %rec.payment_request_id, "refund is in the queue; the queue worker delivers it");
                continue;
            }
            tracing::info!(payment = %rec.payment_request_id, state = %rec.state, "recovering payment");
            let after = self
                .apply_event(&rec.payment_request_id, Event::Restarted)
                .await?;
            let effect = machine::resume_effect(after.state);
            if effect != machine::Effect::None {
                self.spawn_driver(after.payment_request_id.clone(), effect, None);
            }
        }
        Ok(n)
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

    fn wake_or_spawn(&self, rec: &PaymentRecord) {
        let waker = self
            .inner
            .wakers
            .lock()
            .expect("wakers lock is never held across a panic")
            .get(&rec.payment_request_id)
            .cloned();
        match waker {
            Some(w) => w.notify_one(),
            None => self.spawn_driver(
                rec.payment_request_id.clone(),
                machine::resume_effect(rec.state),
                None,
            ),
        }
    }

    fn spawn_driver(
        &self,
        id: String,
        effect: machine::Effect,
        code: Option<crate::gateway::PreparedPay>,
    ) {
        let waker = Arc::new(Notify::new());
        {
            let mut w = self
                .inner
                .wakers
                .lock()
                .expect("wakers lock is never held across a panic");
            if w.contains_key(&id) {
                // A driver already owns this payment; it will see the new state.
                if let Some(existing) = w.get(&id) {
                    existing.notify_one();
                }
                return;
            }
            w.insert(id.clone(), waker.clone());
        }
        let engine = self.clone();
        self.inner.tracker.spawn(async move {
            driver::drive(&engine, &id, effect, code, &waker).await;
            engine
                .inner
                .wakers
                .lock()
                .expect("wakers lock is never held across a panic")
                .remove(&id);
        });
    }
}

fn create_error(e: CreateError) -> EngineError {
    match e {
        CreateError::OrderBusy { .. }
        | CreateError::AlreadyAwaiting { .. }
        | CreateError::KeyReused { .. } => EngineError::Conflict(e.to_string()),
        CreateError::Db(e) => EngineError::Internal(e.into()),
    }
}

/// What the machine's context takes from the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// The inquiry budget.
    pub(crate) inquiry_max: u32,
    /// Added to a pay's expiry before it can no longer arrive.
    pub(crate) expiry_margin: Duration,
}

impl EngineSettings {
    pub(crate) fn rules(&self) -> Rules {
        Rules {
            inquiry_max: self.inquiry_max,
            expiry_margin: self.payment_expiry_margin,
        }
    }
}

/// The machine's context for a stored payment at `now_ms` (epoch ms).
pub(crate) fn context_of(rec: &PaymentRecord, rules: Rules, now_ms: i64) -> Context {
    let margin = i64::try_from(rules.expiry_margin.as_millis()).unwrap_or(i64::MAX);
    Context {
        now_ms,
        pay_dead_at: rec.pay_expires_at.map(|at| at.saturating_add(margin)),
        inquiries_done: rec.inquiries,
        inquiry_max: rules.inquiry_max,
        refund_kind: if rec.refund_return_to.is_some() {
            machine::RefundKind::Requested
        } else {
            machine::RefundKind::Reversal
        },
        refund_return_to: rec.refund_return_to.unwrap_or(State::Succeeded),
        gateway_saw_payment: rec.payment_id.is_some(),
    }
}

/// Who prints a slip: the names on its header.
pub(crate) struct SlipIdentity<'a> {
    pub(crate) merchant_name: &'a str,
    pub(crate) store_name: &'a str,
    pub(crate) terminal_id: &'a str,
}

/// The slip a move from `rec`'s state to `to` prints, if any: SALE on success, CANCEL on a
/// confirmed reversal by cancel, REFUND (for `refund`) on a confirmed refund. Shared by the
/// payment tasks and the queue.
pub(crate) fn slip_data(
    who: &SlipIdentity<'_>,
    local: NaiveDateTime,
    rec: &PaymentRecord,
    to: State,
    refund: Option<&crate::store::payments::RefundRecord>,
) -> Option<crate::domain::slip::SlipData> {
    use crate::domain::slip::{SlipData, SlipKind};
    if to == rec.state {
        return None;
    }
    let (kind, amount, refund_request_id) = match to {
        State::Succeeded => (SlipKind::Sale, rec.amount, None),
        State::Cancelled if matches!(rec.state, State::Cancelling | State::CancelQueued) => {
            (SlipKind::Cancel, rec.amount, None)
        }
        State::Refunded | State::PartiallyRefunded => match refund {
            Some(r) => (
                SlipKind::Refund,
                r.amount,
                Some(r.refund_request_id.clone()),
            ),
            None => (SlipKind::Refund, rec.amount, None),
        },
        _ => return None,
    };
    Some(SlipData {
        kind,
        merchant_name: who.merchant_name.to_string(),
        store_name: who.store_name.to_string(),
        terminal_id: who.terminal_id.to_string(),
        amount,
        payment_request_id: rec.payment_request_id.clone(),
        payment_id: rec.payment_id.clone(),
        refund_request_id,
        local_time: local,
        copy: false,
    })
}

/// Local time in `tz` (or the system's zone) with its offset.
pub fn local_time(
    tz: Option<crate::config::Tz>,
    utc: DateTime<chrono::Utc>,
) -> DateTime<FixedOffset> {
    match tz {
        Some(tz) => {
            let t = tz.from_utc_datetime(&utc.naive_utc());
            t.with_timezone(&t.offset().fix())
        }
        None => {
            let t = utc.with_timezone(&chrono::Local);
            t.with_timezone(t.offset())
        }
    }
}

fn make_payment_id(local: NaiveDateTime, terminal: &str, amount_minor: i64, seq: u64) -> String {
    request_id::payment_request_id(&IdParts {
        local_time: local,
        terminal_id: terminal,
        amount_minor,
        sequence: seq,
        random: rand::random::<u32>(),
    })
}

/// Builds a refund id from a fresh sequence number.
pub(crate) fn make_refund_id(
    local: NaiveDateTime,
    terminal: &str,
    amount_minor: i64,
    seq: u64,
) -> String {
    request_id::refund_request_id(&IdParts {
        local_time: local,
        terminal_id: terminal,
        amount_minor,
        sequence: seq,
        random: rand::random::<u32>(),
    })
}

#[cfg(test)]
mod tests;
