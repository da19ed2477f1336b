//! The store-and-forward reversal queue (docs/design.md, rule 4 and flow step 8): its
//! settings, the [`Replayer`] (lease, send the stored request, report), with the wake signal
//! (`worker/signal.rs`), the settle (`worker/settle.rs`) and the daemon's task
//! (`worker/task.rs`) beside it. Replays queued cancels and refunds until the gateway
//! confirms them or a human decides.
//!
//! # Replaying
//! A [`Replayer`] leases due items (`store::queue::lease_due`, one immediate transaction),
//! sends each item's identical stored request, and settles the answers: the item's new status,
//! the payment's compare-and-set (`domain::machine::decide` + `payments::apply_in`) and the
//! journal events commit in ONE transaction, guarded by the lease owner, so a replayer whose
//! lease expired and was retaken writes nothing. A batch of answers settles in one commit
//! (group commit): every acknowledgement is durable before any payment is reported moved.
//! Batches overlap: the next is leased once every item of the one before holds a send slot,
//! so the sends never wait for a settle and `concurrency` stays in flight across batches.
//!
//! | answer | item | payment |
//! | --- | --- | --- |
//! | verified S | DONE | CANCEL_QUEUED → CANCELLED; → REFUNDED / PARTIALLY_REFUNDED |
//! | verified S of a cancel that refunded a charge | DONE | CANCEL_QUEUED → REFUNDED, the reversal refund recorded |
//! | cancel F `CANCEL_WINDOW_EXCEED` | DONE; a REFUND item for the full amount | stays CANCEL_QUEUED |
//! | the same, and no inquiry gives the paymentId the refund needs | as unknown | unchanged |
//! | other verified F, unreadable payload | DEAD | → NEEDS_ATTENTION with the reason |
//! | unknown | attempts + 1, next try after backoff | unchanged |
//! | payload from a newer posd | held, retried at the backoff cap | unchanged |
//!
//! # When
//! The daemon's worker task drains due items, then sleeps until the next one is due (or a
//! fallback poll), and wakes at once on an enqueue, on demand (`POST /v1/queue/replay`), and
//! when the gateway answers any request again after an unanswered one (network back).
//! `posd queue replay` with the daemon stopped runs the same [`Replayer`] once, directly on
//! the database.
//!
//! # Leases
//! A lease lasts [`QueueSettings::lease`] (four worst-case calls); an item is only sent while
//! at least two worst-case calls of its lease remain, so its answer is back before another
//! replayer could take it over. A replayer killed mid-send leaves its lease to expire; the item
//! is then retaken and resent (the gateway's idempotency makes the resend harmless).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::clock::{local_at, Clock};
use super::driver::{in_flight, with_deadline, DEADLINE_MARGIN};
use super::queue::{Payload, PAYLOAD_VERSION};
use super::transition::known_payment_id;
use super::{context_of, failpoint, Rules};
use crate::config::Config;
use crate::domain::machine::{self, Answer, Decision, Effect, Event, Inquiry, Refusal, State};
use crate::gateway::{Facts, Gateway};
use crate::store::payments;
use crate::store::queue::{self as q, ItemKind, LeaseRefused, QueueItem};
use crate::store::Store;

mod settle;
mod signal;
mod task;

use settle::{settle_batch, SettleCtx};
pub use signal::QueueSignal;
pub(crate) use signal::Watched;
pub(crate) use task::run;

/// How many worst-case calls a lease covers.
const LEASE_CALLS: u32 = 4;
/// How many worst-case calls of its lease an item must have left to be sent.
const SEND_MARGIN_CALLS: u32 = 2;
/// How many leased batches a drain holds at once: one settling while the next sends.
const BATCHES_IN_FLIGHT: usize = 2;
/// The longest the worker sleeps without looking at the queue (a missed wake-up, another
/// process's write). Every enqueue in the daemon, a replay on demand and the gateway
/// answering again wake it at once, and a pending item sets the timer to its due time, so
/// this bound only matters for what nothing announced: long, so an idle daemon sleeps.
const MAX_POLL: Duration = Duration::from_secs(60);
/// The shortest pause between two passes, so a persistent error cannot spin.
const MIN_PAUSE: Duration = Duration::from_millis(5);
/// The longest reason the back office may give.
pub const MAX_REASON_LEN: usize = 256;

/// The queue's timings and sizes.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// The first retry delay (`flow.queue_backoff_initial`).
    pub backoff_initial: Duration,
    /// The cap (`flow.queue_backoff_max`).
    pub backoff_max: Duration,
    /// Deadline of one cancel or refund (`flow.cancel_timeout`).
    pub call_timeout: Duration,
    /// Deadline of the inquiry that learns a paymentId (`flow.inquiry_timeout`).
    pub inquiry_timeout: Duration,
    /// Items leased and settled together.
    pub batch: usize,
    /// Items in flight at once.
    pub concurrency: usize,
    /// Terminal id, part of the refund ids the queue creates.
    pub terminal_id: String,
    /// Time zone of those ids and of the slips.
    pub timezone: Option<crate::config::Tz>,
    /// Merchant name on the slips the queue's confirmations print.
    pub merchant_name: String,
    /// Store name on those slips.
    pub store_name: String,
    /// The inquiry budget (`flow.inquiry_max`), part of the machine's context.
    pub inquiry_max: u32,
    /// Added to a pay's expiry before "no such payment" may mean "never charged"
    /// (`flow.payment_expiry_margin`).
    pub payment_expiry_margin: Duration,
}

impl QueueSettings {
    /// Takes the settings from the config.
    pub fn from_config(cfg: &Config) -> QueueSettings {
        let f = &cfg.flow;
        QueueSettings {
            backoff_initial: f.queue_backoff_initial.0,
            backoff_max: f.queue_backoff_max.0,
            call_timeout: f.cancel_timeout.0,
            inquiry_timeout: f.inquiry_timeout.0,
            batch: f.queue_batch as usize,
            concurrency: f.queue_concurrency as usize,
            terminal_id: cfg.terminal.id.clone(),
            timezone: cfg.timezone(),
            merchant_name: cfg.terminal.merchant_name.clone(),
            store_name: cfg.terminal.store_name.clone(),
            inquiry_max: f.inquiry_max,
            payment_expiry_margin: f.payment_expiry_margin.0,
        }
    }

    pub(crate) fn rules(&self) -> Rules {
        Rules {
            inquiry_max: self.inquiry_max,
            expiry_margin: self.payment_expiry_margin,
        }
    }

    /// The longest one gateway call of the queue can take.
    pub fn call_worst(&self) -> Duration {
        self.call_timeout.max(self.inquiry_timeout) + DEADLINE_MARGIN
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        self.call_worst() * LEASE_CALLS
    }

    /// The worker's pause after a failed pass (the first retry delay, within bounds).
    pub fn poll(&self) -> Duration {
        self.backoff_initial.clamp(MIN_PAUSE, MAX_POLL)
    }
}

/// What became of one item in a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Confirmed by the gateway; the payment moved.
    Done,
    /// A cancel past its window became a refund item.
    Converted,
    /// Dead letter: the payment needs a human.
    Dead,
    /// Abandoned by a human.
    Abandoned,
    /// No certain answer: rescheduled.
    Retry,
    /// Written by a newer posd: kept, retried at the backoff cap.
    Held,
    /// Not sent: too little lease left; given back.
    Released,
    /// Another replayer took the item over; nothing written.
    LeaseLost,
}

impl ItemOutcome {
    /// The wire name, e.g. `done`.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Done => "done",
            ItemOutcome::Converted => "converted",
            ItemOutcome::Dead => "dead",
            ItemOutcome::Abandoned => "abandoned",
            ItemOutcome::Retry => "retry",
            ItemOutcome::Held => "held",
            ItemOutcome::Released => "released",
            ItemOutcome::LeaseLost => "lease_lost",
        }
    }
}

/// One item's replay, for logs, the API and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemReport {
    /// The item.
    pub id: i64,
    /// Cancel or refund.
    pub kind: ItemKind,
    /// The payment.
    pub payment_request_id: String,
    /// What became of it.
    pub outcome: ItemOutcome,
    /// Why, in words.
    pub detail: String,
    /// The payment's state after the settle, when it was touched.
    pub payment_state: Option<State>,
}

/// Why a by-id replay or an abandon was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no queue item {0}; see `posd queue list`")]
    NotFound(i64),
    #[error("queue item {id} is already {status}; nothing to do")]
    Closed { id: i64, status: &'static str },
    #[error("queue item {id} is being replayed by {owner} right now; try again in a few seconds")]
    Busy { id: i64, owner: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The gateway's answer to one item, before it is settled.
#[derive(Debug, Clone)]
enum Verdict {
    /// The gateway confirmed the cancel or refund; its facts (payment id, refund id, result
    /// code, the refund's time) are recorded with the settle.
    Confirmed {
        facts: Facts,
    },
    CancelWindowPassed {
        payment_id: String,
        code: String,
    },
    Refused {
        code: String,
        message: String,
    },
    Unreadable {
        why: String,
    },
    /// The gateway has no record of the payment, its pay's expiry has passed and the last
    /// inquiry found nothing either: never charged.
    NeverCharged {
        inquiry: Inquiry,
        result_code: Option<String>,
    },
    Unknown {
        why: String,
    },
    Held {
        why: String,
    },
    Release,
    Abandon {
        reason: String,
    },
}

/// Replays queue items. Cheap to clone; the daemon's worker, the API's on-demand replay and
/// `posd queue replay` (direct mode) all use one.
#[derive(Clone)]
pub struct Replayer {
    inner: Arc<ReplayerInner>,
}

struct ReplayerInner {
    store: Store,
    gateway: Arc<dyn Gateway>,
    clock: Arc<dyn Clock>,
    settings: QueueSettings,
    owner: String,
    leases: AtomicU64,
    on_change: OnChange,
    on_fault: OnFault,
    shutdown: CancellationToken,
}

/// Told `(payment, state)` for every payment a settle touched.
type OnChange = Box<dyn Fn(&str, State) + Send + Sync>;

/// Told the error when the queue cannot record (lease or settle), `None` once it can again.
type OnFault = Box<dyn Fn(Option<&str>) + Send + Sync>;

impl Replayer {
    /// A replayer named after `role` (`daemon`, `cli`): its leases carry the role, the process
    /// id and a random tag, so the back office can tell who holds an item.
    pub fn new(
        store: Store,
        gateway: Arc<dyn Gateway>,
        clock: Arc<dyn Clock>,
        settings: QueueSettings,
        role: &str,
    ) -> Replayer {
        let owner = format!(
            "{role}:{}:{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        );
        Replayer {
            inner: Arc::new(ReplayerInner {
                store,
                gateway,
                clock,
                settings,
                owner,
                leases: AtomicU64::new(0),
                on_change: Box::new(|_, _| {}),
                on_fault: Box::new(|_| {}),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Runs `f(payment, state)` for every payment a settle touched, once it is durable (the
    /// engine's long-poll wake-ups).
    pub fn with_on_change(self, f: impl Fn(&str, State) + Send + Sync + 'static) -> Replayer {
        self.rebuild(|i| i.on_change = Box::new(f))
    }

    /// Runs `f(Some(error))` whenever the queue cannot record a lease or a settle (the answers
    /// stay unsettled; the items are retaken when their leases expire), `f(None)` once it can.
    pub fn with_on_fault(self, f: impl Fn(Option<&str>) + Send + Sync + 'static) -> Replayer {
        self.rebuild(|i| i.on_fault = Box::new(f))
    }

    /// Stops draining between batches once `token` is cancelled.
    pub fn with_shutdown(self, token: CancellationToken) -> Replayer {
        self.rebuild(|i| i.shutdown = token)
    }

    fn rebuild(self, f: impl FnOnce(&mut ReplayerInner)) -> Replayer {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("Replayer is configured before it is shared"));
        f(&mut inner);
        Replayer {
            inner: Arc::new(inner),
        }
    }

    /// This replayer's lease-owner prefix.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.inner.settings
    }

    /// A fresh owner for one lease (each batch its own, so two tasks of one process never
    /// share a lease).
    fn lease_owner(&self) -> String {
        let n = self.inner.leases.fetch_add(1, Ordering::Relaxed);
        format!("{}#{n}", self.inner.owner)
    }

    /// A new lease: its owner, now, and until when it holds (epoch ms).
    fn new_lease(&self) -> (String, i64, i64) {
        let now = self.inner.clock.now_ms();
        (
            self.lease_owner(),
            now,
            now.saturating_add(ms(self.inner.settings.lease())),
        )
    }

    /// Replays every item due now, batch after batch, until none is left (or shutdown).
    ///
    /// The batches overlap: the next lease is taken as soon as every item of the newest batch
    /// holds a send slot, so its items start sending the moment a slot frees, while the
    /// batch before it settles. At most [`BATCHES_IN_FLIGHT`] batches are leased and
    /// unsettled at once; `concurrency` bounds the sends across all of them. A lease that
    /// finds nothing is tried again after the next settle (a cancel past its window makes a
    /// refund item due then). The drain stops leasing once a settled batch moved nothing
    /// (every item released or its lease lost) or a settle failed, and finishes the batches
    /// it already holds.
    pub async fn drain(&self) -> anyhow::Result<Vec<ItemReport>> {
        let limit = self.inner.settings.batch.max(1);
        let permits = Arc::new(Semaphore::new(self.inner.settings.concurrency.max(1)));
        let mut in_flight: VecDeque<AbortOnDropHandle<anyhow::Result<Vec<ItemReport>>>> =
            VecDeque::new();
        let mut reports = Vec::new();
        let mut failed: Option<anyhow::Error> = None;
        let mut leasing = true;
        // The last lease found nothing; no new one until a batch settles.
        let mut dry = false;
        loop {
            if leasing && !dry && in_flight.len() < BATCHES_IN_FLIGHT {
                if self.inner.shutdown.is_cancelled() {
                    leasing = false;
                    continue;
                }
                let (owner, now, until) = self.new_lease();
                let o = owner.clone();
                let leased = self
                    .inner
                    .store
                    .call(move |c| Ok(q::lease_due(c, &o, now, until, limit)?))
                    .await;
                let items = match leased {
                    Ok(items) => items,
                    Err(e) => {
                        failed.get_or_insert(e);
                        leasing = false;
                        continue;
                    }
                };
                if items.is_empty() {
                    dry = true;
                    continue;
                }
                failpoint::hit("replay_leased");
                if !in_flight.is_empty() {
                    // Two leases out at once: the crash a replay restart must also survive.
                    failpoint::hit("replay_leased_beside");
                }
                let (started, all_started) = tokio::sync::oneshot::channel();
                let me = self.clone();
                let slots = permits.clone();
                let batch = async move {
                    let verdicts = me.verdicts(items, until, &slots, Some(started)).await;
                    me.settle(&owner, verdicts).await
                };
                in_flight.push_back(AbortOnDropHandle::new(tokio::spawn(
                    batch.instrument(tracing::Span::current()),
                )));
                // Every item of this batch holds a slot (or the batch ended early: the
                // sender is dropped with it): time to lease the next.
                let _ = all_started.await;
                continue;
            }
            let Some(oldest) = in_flight.pop_front() else {
                break;
            };
            match oldest.await {
                Ok(Ok(settled)) => {
                    let progressed = settled.iter().any(|r| {
                        r.outcome != ItemOutcome::Released && r.outcome != ItemOutcome::LeaseLost
                    });
                    leasing &= progressed;
                    dry = false;
                    reports.extend(settled);
                }
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                    leasing = false;
                }
                // A panicked batch leaves its leases to expire; its items are retried then.
                Err(e) => {
                    tracing::error!(error = %e, "queue batch task failed");
                    failed.get_or_insert(anyhow::anyhow!("a queue batch task failed: {e}"));
                    leasing = false;
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }

    /// Makes every pending item due, then drains (`posd queue replay` without an ID).
    pub async fn replay_all(&self) -> anyhow::Result<Vec<ItemReport>> {
        let now = self.inner.clock.now_ms();
        self.inner
            .store
            .call(move |c| Ok(q::make_due(c, now)?))
            .await?;
        self.drain().await
    }

    /// Replays one item now, due or not (`posd queue replay ID`).
    pub async fn replay_item(&self, id: i64) -> Result<ItemReport, ReplayError> {
        let (owner, item, until) = self.lease_by_id(id).await?;
        failpoint::hit("replay_leased");
        let slots = Arc::new(Semaphore::new(1));
        let verdicts = self.verdicts(vec![item], until, &slots, None).await;
        let mut settled = self.settle(&owner, verdicts).await?;
        Ok(settled.remove(0))
    }

    /// Gives up on one item with the back office's reason: the item is ABANDONED and the
    /// payment goes to NEEDS_ATTENTION with the reason in its journal.
    pub async fn abandon(&self, id: i64, reason: &str) -> Result<ItemReport, ReplayError> {
        let reason = check_reason(reason)?;
        let (owner, item, _) = self.lease_by_id(id).await?;
        let mut settled = self
            .settle(&owner, vec![(item, Verdict::Abandon { reason })])
            .await?;
        Ok(settled.remove(0))
    }

    async fn lease_by_id(&self, id: i64) -> Result<(String, QueueItem, i64), ReplayError> {
        let (owner, now, until) = self.new_lease();
        let o = owner.clone();
        let leased = self
            .inner
            .store
            .call(move |c| Ok(q::lease_one(c, id, &o, now, until)?))
            .await?;
        match leased {
            Ok(item) => Ok((owner, item, until)),
            Err(LeaseRefused::NotFound) => Err(ReplayError::NotFound(id)),
            Err(LeaseRefused::Closed(s)) => Err(ReplayError::Closed {
                id,
                status: s.as_str(),
            }),
            Err(LeaseRefused::Leased { owner, .. }) => Err(ReplayError::Busy { id, owner }),
        }
    }

    /// When the next item is due (epoch ms), if any is pending.
    pub async fn next_wakeup(&self) -> anyhow::Result<Option<i64>> {
        self.inner.store.call(|c| Ok(q::next_wakeup(c)?)).await
    }

    /// Sends the items of one lease, in order, each once it holds one of `slots`; tells
    /// `started` when every item holds one.
    async fn verdicts(
        &self,
        items: Vec<QueueItem>,
        until: i64,
        slots: &Arc<Semaphore>,
        started: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Vec<(QueueItem, Verdict)> {
        if items.len() == 1 {
            // The semaphore is never closed, so acquiring cannot fail.
            let _slot = slots.acquire().await.ok();
            if let Some(tx) = started {
                let _ = tx.send(());
            }
            let v = self.verdict(&items[0], until).await;
            return items.into_iter().map(|i| (i, v.clone())).collect();
        }
        let mut set = tokio::task::JoinSet::new();
        let n = items.len();
        for (idx, item) in items.into_iter().enumerate() {
            let slot = slots.clone().acquire_owned().await.ok();
            let me = self.clone();
            set.spawn(
                async move {
                    let _slot = slot;
                    let v = me.verdict(&item, until).await;
                    (idx, item, v)
                }
                .in_current_span(),
            );
        }
        if let Some(tx) = started {
            let _ = tx.send(());
        }
        let mut out: Vec<Option<(QueueItem, Verdict)>> = (0..n).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((idx, item, v)) => out[idx] = Some((item, v)),
                // A panicked send leaves its lease to expire; the item is retried then.
                Err(e) => tracing::error!(error = %e, "queue send task failed"),
            }
        }
        out.into_iter().flatten().collect()
    }

    /// Sends one item's stored request and reads the answer.
    async fn verdict(&self, item: &QueueItem, lease_until: i64) -> Verdict {
        let s = &self.inner.settings;
        let left = lease_until - self.inner.clock.now_ms();
        if left < ms(s.call_worst() * SEND_MARGIN_CALLS) {
            return Verdict::Release;
        }
        let payload = match Payload::decode(item.payload_version, &item.payload) {
            Ok(p) => p,
            Err(why) if item.payload_version > PAYLOAD_VERSION => return Verdict::Held { why },
            Err(why) => return Verdict::Unreadable { why },
        };
        let span = tracing::info_span!("queue_item", id = item.id, kind = item.kind.as_str(), payment = %item.payment_request_id, attempt = item.attempts + 1);
        // `instrument`, not `enter`: a span entered across an await leaks into whatever
        // else the thread polls meanwhile.
        self.send_stored(item, payload, lease_until)
            .instrument(span)
            .await
    }

    /// Sends the stored request of one item (inside its span).
    async fn send_stored(&self, item: &QueueItem, payload: Payload, lease_until: i64) -> Verdict {
        let s = &self.inner.settings;
        let gw = &self.inner.gateway;
        match (item.kind, &payload) {
            (ItemKind::Cancel, Payload::Cancel { payment_request_id })
                if *payment_request_id == item.payment_request_id =>
            {
                let out = in_flight(
                    "replay_sent",
                    with_deadline(s.call_timeout, gw.cancel(payment_request_id)),
                )
                .await;
                if out.is_certain() {
                    failpoint::hit("replay_answered");
                }
                match out.answer {
                    Answer::Success => Verdict::Confirmed {
                        facts: Facts {
                            refund_id: None,
                            ..out.facts
                        },
                    },
                    Answer::Failed {
                        refusal: Refusal::CancelWindowPassed,
                        code,
                        ..
                    } => match self.payment_id_of(payment_request_id, lease_until).await {
                        Some(payment_id) => Verdict::CancelWindowPassed { payment_id, code },
                        None => Verdict::Unknown {
                            why: "cancel window passed; the gateway has not given the paymentId the refund needs yet".into(),
                        },
                    },
                    answer @ Answer::Failed {
                        refusal: Refusal::NoSuchPayment,
                        ..
                    } => {
                        self.no_such_payment(payment_request_id, answer, lease_until)
                            .await
                    }
                    Answer::Failed { code, message, .. } => Verdict::Refused { code, message },
                    Answer::Unknown { why } => Verdict::Unknown { why },
                }
            }
            (ItemKind::Refund, Payload::Refund { .. }) => {
                let order = match payload.refund_order() {
                    Some(Ok(o))
                        if item.refund_request_id.as_deref() == Some(&o.refund_request_id) =>
                    {
                        o
                    }
                    Some(Err(why)) => return Verdict::Unreadable { why },
                    _ => {
                        return Verdict::Unreadable {
                            why: "refund payload does not match the item's refundRequestId".into(),
                        }
                    }
                };
                let out = in_flight(
                    "replay_sent",
                    with_deadline(s.call_timeout, gw.refund(&order)),
                )
                .await;
                if out.is_certain() {
                    failpoint::hit("replay_answered");
                }
                match out.answer {
                    Answer::Success => Verdict::Confirmed { facts: out.facts },
                    Answer::Failed { code, message, .. } => Verdict::Refused { code, message },
                    Answer::Unknown { why } => Verdict::Unknown { why },
                }
            }
            _ => Verdict::Unreadable {
                why: format!(
                    "payload ({}) does not match the item ({} of {})",
                    item.payload,
                    item.kind.as_str(),
                    item.payment_request_id
                ),
            },
        }
    }

    /// A queued cancel answered "no such payment": the machine decides, as it does for the
    /// payment's task. While the pay may still arrive the item is retried; once it cannot, one
    /// last inquiry, and only "no such payment" again means never charged.
    async fn no_such_payment(&self, id: &str, answer: Answer, lease_until: i64) -> Verdict {
        let refused = match &answer {
            Answer::Failed { code, message, .. } => Verdict::Refused {
                code: code.clone(),
                message: message.clone(),
            },
            _ => Verdict::Unknown {
                why: "unexpected answer".into(),
            },
        };
        let owned = id.to_string();
        let rec = match self
            .inner
            .store
            .read(move |c| Ok(payments::get(c, &owned)?))
            .await
        {
            Ok(Some(rec)) => rec,
            Ok(None) => return refused,
            Err(e) => {
                return Verdict::Unknown {
                    why: format!("cannot read the payment: {e}"),
                }
            }
        };
        let rules = self.inner.settings.rules();
        let ctx = context_of(&rec, rules, self.inner.clock.now_ms());
        match machine::decide(rec.state, &ctx, &Event::CancelAnswered(answer)) {
            Decision::Ignore {
                effect: Effect::Cancel,
                why,
            } => Verdict::Unknown { why: why.into() },
            Decision::Ignore {
                effect: Effect::LastInquiry,
                ..
            } => {
                let s = &self.inner.settings;
                if lease_until - self.inner.clock.now_ms() < ms(s.call_worst()) {
                    return Verdict::Unknown {
                        why:
                            "the pay's expiry has passed; the last inquiry waits for the next lease"
                                .into(),
                    };
                }
                let reply =
                    with_deadline(s.inquiry_timeout, self.inner.gateway.inquiry_payment(id)).await;
                let ctx = context_of(&rec, rules, self.inner.clock.now_ms());
                match machine::decide(rec.state, &ctx, &Event::LastInquiry(reply.answer.clone())) {
                    Decision::Go {
                        to: State::Failed, ..
                    } => Verdict::NeverCharged {
                        inquiry: reply.answer,
                        result_code: reply.facts.result_code,
                    },
                    Decision::Ignore { why, .. } => Verdict::Unknown { why: why.into() },
                    Decision::Go { .. } | Decision::Refuse { .. } => Verdict::Unknown {
                        why: "the last inquiry did not settle the payment".into(),
                    },
                }
            }
            _ => refused,
        }
    }

    /// The gateway's paymentId of a payment: stored, or learned by one inquiry while the lease
    /// allows it.
    async fn payment_id_of(&self, id: &str, lease_until: i64) -> Option<String> {
        let s = &self.inner.settings;
        let clock = &self.inner.clock;
        // Only while the lease has room for the inquiry.
        let may_ask = || lease_until - clock.now_ms() >= ms(s.call_worst());
        let gw = self.inner.gateway.as_ref();
        known_payment_id(&self.inner.store, gw, id, s.inquiry_timeout, 1, may_ask)
            .await
            .ok()
            .flatten()
    }

    /// Settles the verdicts of one lease: in one transaction when possible, item by item when
    /// one of them cannot be written (so one bad row never blocks the others).
    async fn settle(
        &self,
        owner: &str,
        verdicts: Vec<(QueueItem, Verdict)>,
    ) -> anyhow::Result<Vec<ItemReport>> {
        if verdicts.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.inner.clock.now_ms();
        let ctx = SettleCtx {
            owner: owner.to_string(),
            now,
            local: local_at(self.inner.settings.timezone, now).naive_local(),
            terminal_id: self.inner.settings.terminal_id.clone(),
            merchant_name: self.inner.settings.merchant_name.clone(),
            store_name: self.inner.settings.store_name.clone(),
            backoff_initial: self.inner.settings.backoff_initial,
            backoff_max: self.inner.settings.backoff_max,
            rules: self.inner.settings.rules(),
        };
        let settled = self
            .inner
            .store
            .call(move |c| {
                match settle_batch(c, &ctx, &verdicts) {
                    Ok(r) => Ok((r, None)),
                    Err(batch_err) if verdicts.len() > 1 => {
                        tracing::warn!(error = %batch_err, "settling the batch failed; settling item by item");
                        let mut out = Vec::new();
                        let mut failed = None;
                        for v in verdicts.chunks(1) {
                            match settle_batch(c, &ctx, v) {
                                Ok(mut r) => out.append(&mut r),
                                Err(e) => {
                                    tracing::error!(item = v[0].0.id, error = %e, "cannot settle a queue item; it is retried when its lease expires");
                                    failed = Some(format!("{e:#}"));
                                }
                            }
                        }
                        Ok((out, failed))
                    }
                    Err(e) => Err(e),
                }
            })
            .await;
        let reports = match settled {
            Ok((reports, failed)) => {
                (self.inner.on_fault)(failed.as_deref());
                reports
            }
            Err(e) => {
                (self.inner.on_fault)(Some(&format!("{e:#}")));
                return Err(e);
            }
        };
        // The crash point after a settle that moved something (a reschedule is not one).
        if reports.iter().any(|r| r.outcome == ItemOutcome::Done) {
            failpoint::hit("replay_settled");
        }
        for r in &reports {
            match r.outcome {
                ItemOutcome::Retry | ItemOutcome::Held => {
                    tracing::warn!(item = r.id, kind = r.kind.as_str(), payment = %r.payment_request_id, outcome = r.outcome.as_str(), detail = %r.detail, "queued reversal not delivered yet")
                }
                ItemOutcome::Released | ItemOutcome::LeaseLost => tracing::info!(
                    item = r.id,
                    outcome = r.outcome.as_str(),
                    "queue item left for the next pass"
                ),
                _ => {
                    tracing::info!(item = r.id, kind = r.kind.as_str(), payment = %r.payment_request_id, outcome = r.outcome.as_str(), state = ?r.payment_state, detail = %r.detail, "queued reversal settled")
                }
            }
        }
        for r in &reports {
            if let Some(state) = r.payment_state {
                (self.inner.on_change)(&r.payment_request_id, state);
            }
        }
        Ok(reports)
    }
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Checks a back-office reason: required, printable, at most [`MAX_REASON_LEN`] characters.
pub fn check_reason(reason: &str) -> Result<String, ReplayError> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(ReplayError::Invalid(
            "a reason is required: say why the item is abandoned (--reason TEXT)".into(),
        ));
    }
    if r.chars().count() > MAX_REASON_LEN || r.chars().any(char::is_control) {
        return Err(ReplayError::Invalid(format!(
            "the reason must be at most {MAX_REASON_LEN} printable characters"
        )));
    }
    Ok(r.to_string())
}

#[cfg(test)]
mod tests;
