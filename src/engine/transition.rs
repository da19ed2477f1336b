//! The one transition path: [`plan`] turns (stored payment, event, the answer's facts) into
//! the machine's decision and everything its commit writes — the state, the journal cause and
//! result code, the refund, queue and slip rows (the slip's data is made here and only here),
//! the attention reason. Every caller (sale start, the payment's task, the queue's settle,
//! notifications, refunds, aborts, recovery) plans here and commits the plan with
//! `store::transition::apply` (compare-and-set). `plan` is pure: the caller reads the rows and
//! takes a sequence number on request. [`commit_event`] is the read → plan → compare-and-set
//! loop the payment's task and outside events share, inside one store call.

use std::time::Duration;

use chrono::NaiveDateTime;

use super::queue::{Payload, PAYLOAD_VERSION};
use super::EngineSettings;
use crate::domain::machine::{self, Answer, Context, Decision, Effect, Event, RefundKind, State};
use crate::domain::money::Amount;
use crate::domain::request_id::{self, IdParts};
use crate::gateway::{Facts, Gateway, RefundOrder};
use crate::store::payments::{self, PaymentRecord, RefundRecord};
use crate::store::queue::ItemKind;
use crate::store::refunds::RefundState;
use crate::store::transition::{Change, NewQueueItem, NewRefund, SettleRefund, Tx};
use crate::store::Store;

/// The terminal around a transition: its rules, its clock, its names.
pub(crate) struct Env<'a> {
    /// What the machine's context takes from the settings.
    pub(crate) rules: Rules,
    /// Now, epoch ms.
    pub(crate) now_ms: i64,
    /// Now at the terminal (slips, refund ids).
    pub(crate) local: NaiveDateTime,
    /// The names on the slip header; the terminal id is also part of refund ids.
    pub(crate) who: SlipIdentity<'a>,
    /// The first delay of a queued cancel or refund the payment's task gave up on.
    pub(crate) backoff_initial: Duration,
}

/// A decided move and its commit.
#[derive(Debug)]
pub(crate) struct Plan {
    /// What to commit (compare-and-set from the record's state).
    pub(crate) change: Change,
    /// The state the plan moves to.
    pub(crate) to: State,
    /// What the caller does once the commit returned.
    pub(crate) effect: Effect,
}

/// What the machine made of the event.
#[derive(Debug)]
pub(crate) enum Planned {
    /// Commit the plan.
    Move(Box<Plan>),
    /// Nothing changes; `effect` continues (e.g. resend the cancel).
    Ignore { why: &'static str, effect: Effect },
    /// The request behind the event is refused.
    Refuse { why: String },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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

/// A request id built by `make` (`request_id::payment_request_id` or `refund_request_id`) from
/// a fresh sequence number, its random part drawn here.
pub(crate) fn new_request_id(
    make: fn(&IdParts<'_>) -> String,
    local: NaiveDateTime,
    terminal: &str,
    amount_minor: i64,
    seq: u64,
) -> String {
    make(&IdParts {
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
    new_request_id(
        request_id::refund_request_id,
        local,
        terminal,
        amount_minor,
        seq,
    )
}

/// The refund request a payment's refund row stands for (identical on every send).
pub(crate) fn refund_order(
    rec: &PaymentRecord,
    refund: &RefundRecord,
) -> anyhow::Result<RefundOrder> {
    let payment_id = rec.payment_id.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "payment {} has no gateway paymentId",
            rec.payment_request_id
        )
    })?;
    Ok(RefundOrder {
        refund_request_id: refund.refund_request_id.clone(),
        payment_id,
        amount: refund.amount,
        reason: refund.reason.clone(),
    })
}

/// Whether a confirmed `refund` leaves nothing of `rec`'s captured amount.
pub(crate) fn fully_refunded(rec: &PaymentRecord, refund: &RefundRecord) -> bool {
    rec.refunded.minor() + refund.amount.minor() >= rec.amount.minor()
}

/// Plans `event` on `rec`. `facts` are what the answer behind the event carried (empty for
/// outside events); `refund` is the refund row the event is about (the active one, or the
/// queue item's); `next_sequence` takes a terminal sequence number when the plan creates a
/// refund id.
pub(crate) fn plan(
    env: &Env<'_>,
    rec: &PaymentRecord,
    event: &Event,
    facts: &Facts,
    refund: Option<&RefundRecord>,
    next_sequence: &mut dyn FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<Planned> {
    // What this answer taught counts: a paymentId learned now is as good as a stored one.
    let payment_id = rec.payment_id.clone().or_else(|| facts.payment_id.clone());
    let mut ctx = context_of(rec, env.rules, env.now_ms);
    ctx.gateway_saw_payment = payment_id.is_some();
    let (to, cause, result_code, effect) = match machine::decide(rec.state, &ctx, event) {
        Decision::Go {
            to,
            cause,
            result_code,
            effect,
        } => (to, cause, result_code, effect),
        Decision::Ignore { why, effect } => return Ok(Planned::Ignore { why, effect }),
        Decision::Refuse { why } => return Ok(Planned::Refuse { why }),
    };
    // When the machine gives no code of its own the answer's is recorded — except an
    // inquiry's that only keeps the payment waiting (it decided nothing).
    let keeps_waiting = matches!(event, Event::Inquired(_)) && !(to.is_final() && to != rec.state);
    let result_code = result_code.or_else(|| {
        (!keeps_waiting)
            .then(|| facts.result_code.clone())
            .flatten()
    });
    let mut change = Change {
        to: Some(to),
        cause,
        result_code,
        result_message: facts.result_message.clone(),
        payment_id: facts.payment_id.clone(),
        // The gateway's time of the charge, or of the refund being settled.
        gateway_time: facts
            .time
            .clone()
            .filter(|_| to == State::Succeeded || settles_refund_with_time(event)),
        ..Default::default()
    };
    if matches!(event, Event::Inquired(_)) {
        change.inquiries = Some(rec.inquiries + 1);
    }
    let id = rec.payment_request_id.as_str();
    let mut slip_refund = refund.cloned();
    match (effect, event) {
        (Effect::EnqueueCancel, _) => {
            change.enqueue = Some(NewQueueItem {
                kind: ItemKind::Cancel,
                refund_request_id: None,
                payload_version: PAYLOAD_VERSION,
                payload: Payload::Cancel {
                    payment_request_id: id.to_string(),
                }
                .encode(),
                next_attempt_at: env.now_ms.saturating_add(ms(env.backoff_initial)),
            });
        }
        // The queued cancel came too late: the rest of the amount is owed as a new refund,
        // queued at once.
        (Effect::EnqueueRefund, Event::QueuedCancelWindowPassed) => {
            let owed = rec.amount.minor() - rec.refunded.minor();
            let amount = Amount::from_minor(owed, rec.amount.currency())?;
            let pid = payment_id
                .clone()
                .ok_or_else(|| anyhow::anyhow!("payment {id} has no gateway paymentId"))?;
            let new = reversal_refund(env, amount, next_sequence()?);
            let order = RefundOrder {
                refund_request_id: new.refund_request_id.clone(),
                payment_id: pid.clone(),
                amount,
                reason: new.reason.clone(),
            };
            change.payment_id = Some(pid);
            change.enqueue = Some(refund_item(id, &order, env.now_ms));
            change.settle_refund = Some(settle(&new.refund_request_id, RefundState::Queued));
            change.new_refund = Some(new);
        }
        // The statement showed a charge posd held reversed: the back office's caller writes the
        // full refund (with the statement's paymentId) and its queue item in this transaction.
        (Effect::EnqueueRefund, Event::StatementReversalQueued) => {}
        // The payment's task gave up on its refund: the identical request goes to the queue.
        (Effect::EnqueueRefund, _) => {
            let r = refund.ok_or_else(|| anyhow::anyhow!("payment {id} has no refund to queue"))?;
            let order = refund_order(rec, r)?;
            change.enqueue = Some(refund_item(
                id,
                &order,
                env.now_ms.saturating_add(ms(env.backoff_initial)),
            ));
            change.settle_refund = Some(settle(&r.refund_request_id, RefundState::Queued));
        }
        // The cancel window passed: the reversal refund's id and request are committed before
        // it is sent (the machine checked the paymentId is known).
        (Effect::Refund, Event::CancelAnswered(_)) => {
            let new = reversal_refund(env, rec.amount, next_sequence()?);
            change.payment_id = payment_id.clone();
            change.new_refund = Some(new);
        }
        // The cancel itself refunded the charge: the reversal refund is written as confirmed
        // for what was owed, so the journal, the ledger and the slip show a refund.
        (Effect::None, Event::CancelRefunded) => {
            let owed = rec.amount.minor() - rec.refunded.minor();
            let amount = Amount::from_minor(owed, rec.amount.currency())?;
            let new = NewRefund {
                reason: Some("reversal: the cancel refunded the charge".into()),
                ..reversal_refund(env, amount, next_sequence()?)
            };
            change.settle_refund = Some(SettleRefund {
                refund_id: facts.refund_id.clone(),
                result_code: change.result_code.clone(),
                result_message: facts.result_message.clone(),
                add_to_refunded: true,
                ..settle(&new.refund_request_id, RefundState::Succeeded)
            });
            slip_refund = Some(RefundRecord {
                refund_request_id: new.refund_request_id.clone(),
                payment_request_id: id.to_string(),
                kind: new.kind,
                amount,
                reason: new.reason.clone(),
                state: RefundState::Succeeded,
                refund_id: facts.refund_id.clone(),
                result_code: change.result_code.clone(),
                created_at: env.now_ms,
                updated_at: env.now_ms,
            });
            change.new_refund = Some(new);
        }
        _ => {}
    }
    if let Some(settle) = refund_settle(event, facts, refund, change.result_code.clone()) {
        change.settle_refund = Some(settle);
    }
    if matches!(event, Event::QueueGaveUp { .. }) {
        slip_refund = None;
    }
    if to == State::NeedsAttention {
        change.attention_reason = Some(change.cause.clone());
    }
    // The slip of a final move commits with it; it names the paymentId this answer taught.
    let mut with_id = rec.clone();
    if with_id.payment_id.is_none() {
        with_id.payment_id = payment_id;
    }
    change.slip = slip_data(&env.who, env.local, &with_id, to, slip_refund.as_ref());
    Ok(Planned::Move(Box::new(Plan { change, to, effect })))
}

/// What [`commit_event`] did.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per commit and matched at once; boxing the ignored record too buys nothing"
)]
pub(crate) enum Committed {
    /// The plan was committed: the state it moved from, the payment after, and the plan.
    Moved {
        from: State,
        after: Box<PaymentRecord>,
        plan: Box<Plan>,
    },
    /// The machine ignored the event: nothing was written.
    Ignored {
        rec: PaymentRecord,
        why: &'static str,
        effect: Effect,
    },
    /// The machine refused the event: nothing was written.
    Refused { rec: PaymentRecord, why: String },
}

/// Reads payment `id` and its active refund, plans `event` with `facts`, lets `extend` add to
/// the planned change (rows written with the move), and commits it with compare-and-set in a
/// savepoint of `c`; a lost compare-and-set writes nothing and plans again on the fresh state.
/// `Ok(None)`: no such payment.
pub(crate) fn commit_event(
    c: &mut Tx,
    env: &Env<'_>,
    id: &str,
    event: &Event,
    facts: &Facts,
    extend: &dyn Fn(&Tx, &PaymentRecord, &mut Change) -> anyhow::Result<()>,
) -> anyhow::Result<Option<Committed>> {
    for _ in 0..16 {
        let Some(rec) = payments::get(c, id)? else {
            return Ok(None);
        };
        let refund = match &rec.active_refund_id {
            Some(r) => payments::get_refund(c, r)?,
            None => None,
        };
        let planned = plan(env, &rec, event, facts, refund.as_ref(), &mut || {
            Ok(payments::next_sequence(c)?)
        })?;
        match planned {
            Planned::Move(mut plan) => {
                let tx = c.savepoint()?;
                extend(&tx, &rec, &mut plan.change)?;
                if let Some(after) =
                    payments::apply_in(&tx, id, rec.state, &plan.change, env.now_ms)?
                {
                    tx.commit()?;
                    return Ok(Some(Committed::Moved {
                        from: rec.state,
                        after: Box::new(after),
                        plan,
                    }));
                }
                tracing::info!(payment = %id, expected = %rec.state, "state moved on before the commit; deciding again");
            }
            Planned::Ignore { why, effect } => {
                return Ok(Some(Committed::Ignored { rec, why, effect }))
            }
            Planned::Refuse { why } => return Ok(Some(Committed::Refused { rec, why })),
        }
    }
    anyhow::bail!("payment {id} kept changing while an event was being committed; try again")
}

/// Whether `event` is a refund's confirmation or answer whose time (`refundTime`) is kept on
/// the refund row: by the payment's task or by the queue.
fn settles_refund_with_time(event: &Event) -> bool {
    matches!(
        event,
        Event::RefundAnswered { .. } | Event::QueuedRefundConfirmed { .. } | Event::CancelRefunded
    )
}

/// The change that only journals an event the machine ignored or refused (the queue's answer
/// for a payment that moved on), with the refund rows the answer settles.
pub(crate) fn note_only(
    rec: &PaymentRecord,
    event: &Event,
    facts: &Facts,
    refund: Option<&RefundRecord>,
    why: &str,
) -> Change {
    Change {
        to: None,
        cause: format!("queue: {event:?}; the payment stays {} ({why})", rec.state),
        result_code: facts.result_code.clone(),
        payment_id: facts.payment_id.clone(),
        settle_refund: refund_settle(event, facts, refund, facts.result_code.clone()),
        // A refund the queue got confirmed keeps the gateway's time even when its payment
        // moved on (the back office reconciles it).
        gateway_time: facts
            .time
            .clone()
            .filter(|_| refund.is_some() && settles_refund_with_time(event)),
        ..Default::default()
    }
}

/// What an answer does to the refund row it is about.
fn refund_settle(
    event: &Event,
    facts: &Facts,
    refund: Option<&RefundRecord>,
    result_code: Option<String>,
) -> Option<SettleRefund> {
    let r = refund?;
    match event {
        Event::RefundAnswered { answer, .. } => {
            let (state, add) = match answer {
                Answer::Success => (RefundState::Succeeded, true),
                Answer::Failed { .. } => (RefundState::Failed, false),
                Answer::Unknown { .. } => (RefundState::Pending, false),
            };
            Some(SettleRefund {
                refund_request_id: r.refund_request_id.clone(),
                state,
                refund_id: facts.refund_id.clone(),
                result_code,
                result_message: facts.result_message.clone(),
                add_to_refunded: add,
            })
        }
        Event::QueuedRefundConfirmed { .. } => Some(SettleRefund {
            refund_request_id: r.refund_request_id.clone(),
            state: RefundState::Succeeded,
            refund_id: facts.refund_id.clone(),
            result_code: facts.result_code.clone(),
            result_message: None,
            add_to_refunded: r.state != RefundState::Succeeded,
        }),
        Event::QueueGaveUp { .. } => Some(SettleRefund {
            result_code,
            ..settle(&r.refund_request_id, RefundState::Failed)
        }),
        _ => None,
    }
}

fn reversal_refund(env: &Env<'_>, amount: Amount, seq: u64) -> NewRefund {
    NewRefund {
        refund_request_id: make_refund_id(env.local, env.who.terminal_id, amount.minor(), seq),
        kind: RefundKind::Reversal,
        amount,
        reason: Some("reversal: cancel window passed".into()),
        return_to: None,
    }
}

fn refund_item(payment_request_id: &str, order: &RefundOrder, due: i64) -> NewQueueItem {
    NewQueueItem {
        kind: ItemKind::Refund,
        refund_request_id: Some(order.refund_request_id.clone()),
        payload_version: PAYLOAD_VERSION,
        payload: Payload::from_refund(payment_request_id, order).encode(),
        next_attempt_at: due,
    }
}

fn settle(refund_request_id: &str, state: RefundState) -> SettleRefund {
    SettleRefund {
        refund_request_id: refund_request_id.to_string(),
        state,
        refund_id: None,
        result_code: None,
        result_message: None,
        add_to_refunded: false,
    }
}

/// The `paymentId` a refund of payment `id` needs: the stored one, else learned by inquiry (up
/// to `tries` times, each within `deadline`) when `may_ask` allows the calls; `Ok(None)` when
/// no answer gave it. The one place the payment's task, a refund and the queue learn it. A
/// failed read is an error, never "unknown" (the caller retries rather than decide on it).
pub(crate) async fn known_payment_id(
    store: &Store,
    gateway: &dyn Gateway,
    id: &str,
    deadline: Duration,
    tries: u32,
    may_ask: impl FnOnce() -> bool,
) -> anyhow::Result<Option<String>> {
    let owned = id.to_string();
    let stored = store
        .read(move |c| Ok(payments::get(c, &owned)?.and_then(|p| p.payment_id)))
        .await?;
    if stored.is_some() || !may_ask() {
        return Ok(stored);
    }
    for _ in 0..tries {
        let reply = super::driver::with_deadline(deadline, gateway.inquiry_payment(id)).await;
        if reply.facts.payment_id.is_some() {
            return Ok(reply.facts.payment_id);
        }
    }
    Ok(None)
}
