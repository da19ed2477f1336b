//! The task that owns one open payment: started (or woken) per payment, it performs the
//! machine's effects (pay, inquiry, cancel, refund, enqueue) and commits every answer through
//! `transition::commit_event` before acting on it (rule 1).

use std::time::Duration;

use rand::Rng;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::backoff::{backoff, between, jittered};
use super::clock;

use super::tasks::{Claim, Finish, Tasks};
use super::transition::{
    commit_event, fully_refunded, known_payment_id, refund_order as refund_order_of, Committed,
};
use super::{failpoint, Engine};
use crate::domain::machine::{self, Answer, Effect, Event, Inquiry, Refusal, State};
use crate::gateway::{Facts, PreparedPay, RefundOrder, Reply};
use crate::store::payments::{self, PaymentRecord};

/// Extra time the engine allows beyond a call's own deadline before it gives up on the call
/// itself (the client enforces the real deadline; this only guards against a stuck future).
pub(super) const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// Facts an answer carried besides the event.
#[derive(Default, Clone)]
struct Extras(Facts);

impl Extras {
    fn of(f: &Facts) -> Extras {
        Extras(f.clone())
    }
}

pub(super) async fn drive(
    engine: &Engine,
    id: &str,
    effect: Effect,
    code: Option<PreparedPay>,
    waker: &Notify,
) {
    // `instrument`, not `enter`: a span entered across an await leaks into whatever else the
    // thread polls meanwhile.
    let span = tracing::info_span!("payment", id = %id);
    drive_in_span(engine, id, effect, code, waker)
        .instrument(span)
        .await
}

async fn drive_in_span(
    engine: &Engine,
    id: &str,
    mut effect: Effect,
    mut code: Option<PreparedPay>,
    waker: &Notify,
) {
    let mut cancel_deadline: Option<Instant> = None;
    let mut refund_deadline: Option<Instant> = None;
    loop {
        let step = match effect {
            Effect::None | Effect::EnqueueCancel | Effect::EnqueueRefund => break,
            Effect::SendPay => send_pay(engine, id, code.take()).await,
            Effect::Inquire => inquire(engine, id, waker).await,
            Effect::Cancel => cancel(engine, id, &mut cancel_deadline).await,
            Effect::Refund => refund(engine, id, &mut refund_deadline).await,
            Effect::LastInquiry => last_inquiry(engine, id).await,
        };
        let (event, extras) = match step {
            Ok(Some(x)) => x,
            Ok(None) => {
                // Woken (an abort) or nothing to send: re-read the state and resume from it.
                match load_until_read(engine, id).await {
                    Ok(rec) => {
                        effect = machine::resume_effect(rec.state);
                        continue;
                    }
                    Err(Stop) => break,
                }
            }
            Err(Stop) => break,
        };
        match commit_until_recorded(engine, id, &event, extras).await {
            Ok(next) => effect = next,
            // Shutdown while the answer could not be recorded: the payment stays open, and
            // recovery resumes it on the next start (rule 6).
            Err(Stop) => break,
        }
    }
}

impl Engine {
    /// Wakes the task that owns `rec`, or starts one from its state.
    pub(super) fn wake_or_spawn(&self, rec: &PaymentRecord) {
        if !self.inner.tasks.wake(&rec.payment_request_id) {
            self.spawn_driver(
                rec.payment_request_id.clone(),
                machine::resume_effect(rec.state),
                None,
            );
        }
    }

    /// Starts the task that owns payment `id` with `effect` (and the prepared pay, when the
    /// sale holds its code); when one already runs it is woken instead and sees the new state.
    /// A task woken while it finishes runs once more from the stored state (engine/tasks.rs),
    /// so a refund committed just as the previous one settled is still sent.
    pub(super) fn spawn_driver(
        &self,
        id: String,
        effect: machine::Effect,
        code: Option<crate::gateway::PreparedPay>,
    ) {
        let Claim::Start(slot) = self.inner.tasks.claim(&id) else {
            return;
        };
        let engine = self.clone();
        self.inner.tracker.spawn(async move {
            let (mut effect, mut code) = (effect, code);
            loop {
                drive(&engine, &id, effect, code.take(), slot.notify()).await;
                if engine.inner.tasks.finish(&id, &slot) == Finish::Done {
                    break;
                }
                Tasks::reading(&slot);
                effect = if engine.inner.shutdown.is_cancelled() {
                    Effect::None
                } else {
                    match engine.effect_now(&id).await {
                        Ok(e) => e,
                        Err(e) => {
                            // Recovery resumes it on the next start (rule 6).
                            tracing::warn!(payment = %id, error = %e, "cannot read the payment to resume it");
                            Effect::None
                        }
                    }
                };
            }
        });
    }
}

/// First pause after a failed commit or read.
const RECORD_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest pause between commit retries.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

/// The pause before retry `attempt` (1-based) of a failed commit or read.
fn record_retry(attempt: u32) -> Duration {
    let d = backoff(
        attempt.saturating_sub(1),
        RECORD_RETRY_INITIAL,
        RECORD_RETRY_MAX,
    );
    jittered(d, rand::thread_rng().gen::<f64>())
}

/// Commits the answer, retrying with backoff for as long as the database refuses the write
/// (a lock held past the busy timeout, a read-only or full disk): the answer is kept, nothing
/// acts on it before it is recorded, the payment is flagged "cannot record" meanwhile, and the
/// task carries on by itself once the fault clears. Only shutdown stops it.
async fn commit_until_recorded(
    engine: &Engine,
    id: &str,
    event: &Event,
    extras: Extras,
) -> Result<Effect, Stop> {
    let mut attempt: u32 = 0;
    loop {
        match commit(engine, id, event, extras.clone()).await {
            Ok(next) => return Ok(next),
            Err(e) => {
                attempt = attempt.saturating_add(1);
                engine.cannot_record(id, &e);
                tracing::warn!(error = %format!("{e:#}"), attempt, "cannot record the answer; retrying");
                pause(engine, record_retry(attempt)).await?;
            }
        }
    }
}

/// Reads the payment, retrying with backoff while the database cannot be read; stops only on
/// shutdown or when the payment is gone.
async fn load_until_read(engine: &Engine, id: &str) -> Result<PaymentRecord, Stop> {
    let mut attempt: u32 = 0;
    loop {
        let owned = id.to_string();
        match engine
            .store()
            .read(move |c| Ok(payments::get(c, &owned)?))
            .await
        {
            Ok(Some(rec)) => return Ok(rec),
            Ok(None) => {
                tracing::error!("payment vanished; stopping its task");
                return Err(Stop);
            }
            Err(e) => {
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %format!("{e:#}"), attempt, "cannot read the payment; retrying");
                pause(engine, record_retry(attempt)).await?;
            }
        }
    }
}

/// The task must stop now (shutdown); the stored state is safe to resume.
struct Stop;

type Step = Result<Option<(Event, Extras)>, Stop>;

/// Sleeps `d` unless shutdown comes first.
async fn pause(engine: &Engine, d: Duration) -> Result<(), Stop> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = engine.inner.shutdown.cancelled() => Err(Stop),
    }
}

/// An answer that can say "no certain answer" (the deadline guard's result).
pub(super) trait Unanswered {
    /// No certain answer, with why.
    fn unanswered(why: String) -> Self;
}

impl Unanswered for Reply<Answer> {
    fn unanswered(why: String) -> Self {
        Reply::<Answer>::unknown(why)
    }
}

impl Unanswered for Reply<Inquiry> {
    fn unanswered(why: String) -> Self {
        Reply::<Inquiry>::unknown(why)
    }
}

pub(super) async fn with_deadline<T: Unanswered>(
    d: Duration,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(d + DEADLINE_MARGIN, fut).await {
        Ok(o) => o,
        Err(_) => T::unanswered(format!("no answer within {d:?}")),
    }
}

/// Runs a money-moving call; when a failpoint is configured, fires `in_flight` while the call
/// is outstanding (the request has left, no answer yet).
pub(super) async fn in_flight<T>(name: &str, fut: impl std::future::Future<Output = T>) -> T {
    if !failpoint::enabled() {
        return fut.await;
    }
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => out,
        _ = tokio::time::sleep(Duration::from_millis(100)) => {
            failpoint::hit(name);
            fut.await
        }
    }
}

async fn send_pay(engine: &Engine, _id: &str, prepared: Option<PreparedPay>) -> Step {
    let Some(prepared) = prepared else {
        // The clear code lives only in memory (rule 9); without it the pay cannot be sent
        // again, and whether it left before a restart is unknown: inquire.
        return Ok(Some((
            Event::PayAnswered(Answer::Unknown {
                why: "code not held in memory (restart); pay may have been sent".into(),
            }),
            Extras::default(),
        )));
    };
    let t = engine.settings().pay_timeout;
    let reply = in_flight(
        "pay_in_flight",
        with_deadline(t, engine.gateway().send_pay(prepared)),
    )
    .await;
    failpoint::hit("pay_answered");
    let extras = Extras::of(&reply.facts);
    Ok(Some((Event::PayAnswered(reply.answer), extras)))
}

async fn inquire(engine: &Engine, id: &str, waker: &Notify) -> Step {
    let s = engine.settings();
    tokio::select! {
        _ = tokio::time::sleep(s.inquiry_interval) => {}
        _ = waker.notified() => return Ok(None),
        _ = engine.inner.shutdown.cancelled() => return Err(Stop),
    }
    // An abort may have landed while we slept without waking us (it raced the sleep's end).
    let rec = load_until_read(engine, id).await?;
    if rec.state != State::Inquiring && rec.state != State::Paying {
        return Ok(None);
    }
    let reply = with_deadline(s.inquiry_timeout, engine.gateway().inquiry_payment(id)).await;
    failpoint::hit(&format!("inquiry_{}", rec.inquiries + 1));
    let extras = Extras::of(&reply.facts);
    Ok(Some((Event::Inquired(reply.answer), extras)))
}

/// The one inquiry, at once, before a payment the gateway does not know is declared never
/// charged (its pay can no longer arrive).
async fn last_inquiry(engine: &Engine, id: &str) -> Step {
    let s = engine.settings();
    let reply = with_deadline(s.inquiry_timeout, engine.gateway().inquiry_payment(id)).await;
    let extras = Extras::of(&reply.facts);
    Ok(Some((Event::LastInquiry(reply.answer), extras)))
}

/// Paces the sends of an unanswered cancel or refund: the first goes at once and opens the
/// retry window; each resend waits 5–10 s (jittered). `false`: the next resend would start
/// after the window.
async fn resend_pause(engine: &Engine, deadline: &mut Option<Instant>) -> Result<bool, Stop> {
    let s = engine.settings();
    match deadline {
        None => {
            *deadline = Some(clock::instant() + s.cancel_retry_window);
            Ok(true)
        }
        Some(d) => {
            let unit = rand::thread_rng().gen::<f64>();
            let wait = between(s.cancel_retry_min, s.cancel_retry_max, unit);
            if clock::instant() + wait >= *d {
                return Ok(false);
            }
            pause(engine, wait).await?;
            Ok(true)
        }
    }
}

/// Sends the identical cancel; after the first try, waits 5–10 s (jittered) between resends;
/// when the next resend would start after the window, reports `CancelWindowOver`.
async fn cancel(engine: &Engine, id: &str, deadline: &mut Option<Instant>) -> Step {
    let s = engine.settings();
    if deadline.is_none() {
        failpoint::hit("cancel_committed");
    }
    if !resend_pause(engine, deadline).await? {
        return Ok(Some((Event::CancelWindowOver, Extras::default())));
    }
    let reply = in_flight(
        "cancel_in_flight",
        with_deadline(s.cancel_timeout, engine.gateway().cancel(id)),
    )
    .await;
    if let Answer::Unknown { why } = &reply.answer {
        tracing::warn!(why, "cancel unanswered");
    }
    let extras = Extras::of(&reply.facts);
    let event = match reply.answer {
        // The gateway had charged the payment; the cancel gave it back as a refund.
        Answer::Success if reply.facts.cancel_refunded => Event::CancelRefunded,
        answer => Event::CancelAnswered(answer),
    };
    Ok(Some((event, extras)))
}

async fn refund_order(engine: &Engine, id: &str) -> anyhow::Result<(RefundOrder, bool)> {
    let id = id.to_string();
    engine
        .store()
        .read(move |c| {
            let rec =
                payments::get(c, &id)?.ok_or_else(|| anyhow::anyhow!("payment {id} vanished"))?;
            let rid = rec
                .active_refund_id
                .clone()
                .ok_or_else(|| anyhow::anyhow!("payment {id} is REFUNDING without a refund"))?;
            let r = payments::get_refund(c, &rid)?
                .ok_or_else(|| anyhow::anyhow!("refund {rid} vanished"))?;
            Ok((refund_order_of(&rec, &r)?, fully_refunded(&rec, &r)))
        })
        .await
}

async fn refund(engine: &Engine, id: &str, deadline: &mut Option<Instant>) -> Step {
    let s = engine.settings();
    let (order, full) = match refund_order(engine, id).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "refund cannot be built");
            return Ok(Some((
                Event::QueueGaveUp {
                    reason: format!("refund cannot be built: {e}"),
                },
                Extras::default(),
            )));
        }
    };
    if !resend_pause(engine, deadline).await? {
        return Ok(Some((Event::RefundWindowOver, Extras::default())));
    }
    let reply = in_flight(
        "refund_in_flight",
        with_deadline(s.cancel_timeout, engine.gateway().refund(&order)),
    )
    .await;
    // A refund's answer names the refund; the payment's id comes from pay, inquiry or cancel.
    let extras = Extras(Facts {
        payment_id: None,
        ..reply.facts
    });
    Ok(Some((
        Event::RefundAnswered {
            answer: reply.answer,
            fully_refunded: full,
        },
        extras,
    )))
}

/// What one commit did.
struct Done {
    effect: Effect,
    moved: Option<(State, State)>,
}

/// Commits the machine's decision on `event` with compare-and-set and returns the next effect.
/// Reading the state, planning and writing happen in one store call, so a sale's answer costs
/// one trip to the database thread and one commit.
async fn commit(
    engine: &Engine,
    id: &str,
    event: &Event,
    extras: Extras,
) -> anyhow::Result<Effect> {
    // The one case that needs the network before deciding: a reversal refund needs the
    // gateway's paymentId, learned by inquiry when no answer carried it yet.
    let mut facts = extras.0;
    if let Event::CancelAnswered(Answer::Failed {
        refusal: Refusal::CancelWindowPassed,
        ..
    }) = event
    {
        if facts.payment_id.is_none() {
            let t = engine.settings().inquiry_timeout;
            let gw = engine.gateway().as_ref();
            facts.payment_id = known_payment_id(engine.store(), gw, id, t, 3, || true).await?;
        }
    }
    let e = engine.clone();
    let id_owned = id.to_string();
    let event_owned = event.clone();
    let done = engine
        .store()
        .call(move |c| {
            let env = e.env();
            let committed =
                commit_event(c, &env, &id_owned, &event_owned, &facts, &|_, _, _| Ok(()))?
                    .ok_or_else(|| anyhow::anyhow!("payment {id_owned} vanished"))?;
            Ok(match committed {
                Committed::Moved { from, after, plan } => Done {
                    effect: if after.state != plan.to {
                        machine::resume_effect(after.state)
                    } else {
                        plan.effect
                    },
                    moved: Some((from, after.state)),
                },
                Committed::Ignored { rec, why, effect } => {
                    tracing::info!(state = %rec.state, why, "answer changes nothing");
                    if let Some(pid) = &facts.payment_id {
                        payments::note_payment_id(c, &id_owned, pid)?;
                    }
                    // A driver must not stop while its payment is open (an abort may have
                    // moved it from inquiring to cancelling under our feet).
                    let effect = if effect == Effect::None {
                        machine::resume_effect(rec.state)
                    } else {
                        effect
                    };
                    Done {
                        effect,
                        moved: None,
                    }
                }
                Committed::Refused { rec, why } => {
                    tracing::warn!(why, "event refused");
                    Done {
                        effect: machine::resume_effect(rec.state),
                        moved: None,
                    }
                }
            })
        })
        .await?;
    // Cleared before any waiter is told of the move: a view never shows a final state still
    // flagged "cannot record".
    engine.recorded(id);
    if let Some((from, to)) = done.moved {
        engine.changed_payment(id, to);
        engine.slips_written().notify_one();
        tracing::info!(from = %from, to = %to, "payment moved");
        if matches!(done.effect, Effect::EnqueueCancel | Effect::EnqueueRefund) {
            failpoint::hit("queue_written");
            engine.wake_queue();
        }
    }
    Ok(done.effect)
}
