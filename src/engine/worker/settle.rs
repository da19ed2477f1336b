//! The reversal queue's settle: one leased item's answer — its item status, its journal
//! events and its payment's transition (planned by `engine::transition::plan`) — in the
//! caller's transaction, guarded by the lease owner.

use std::time::Duration;

use rand::Rng;

use super::{ms, ItemOutcome, ItemReport, Verdict};
use crate::domain::machine::{Event, State};
use crate::engine::backoff::{backoff, jittered};
use crate::engine::transition::{fully_refunded, note_only, plan, Env, Planned};
use crate::engine::{Rules, SlipIdentity};
use crate::gateway::Facts;
use crate::store::payments::{self, Change, PaymentRecord};
use crate::store::queue::{self as q, ItemKind, ItemStatus, QueueItem};
use crate::store::refunds::RefundState;
use crate::store::transition::Tx;

/// Everything a settle needs besides the verdicts.
pub(super) struct SettleCtx {
    pub(super) owner: String,
    pub(super) now: i64,
    pub(super) local: chrono::NaiveDateTime,
    pub(super) terminal_id: String,
    pub(super) merchant_name: String,
    pub(super) store_name: String,
    pub(super) backoff_initial: Duration,
    pub(super) backoff_max: Duration,
    pub(super) rules: Rules,
}

impl SettleCtx {
    fn env(&self) -> Env<'_> {
        Env {
            rules: self.rules,
            now_ms: self.now,
            local: self.local,
            who: SlipIdentity {
                merchant_name: &self.merchant_name,
                store_name: &self.store_name,
                terminal_id: &self.terminal_id,
            },
            backoff_initial: self.backoff_initial,
        }
    }
}

pub(super) fn settle_batch(
    conn: &mut Tx,
    ctx: &SettleCtx,
    verdicts: &[(QueueItem, Verdict)],
) -> anyhow::Result<Vec<ItemReport>> {
    let tx = conn.savepoint()?;
    let mut out = Vec::with_capacity(verdicts.len());
    for (item, v) in verdicts {
        out.push(settle_one(&tx, ctx, item, v)?);
    }
    tx.commit()?;
    Ok(out)
}

pub(super) fn report(
    item: &QueueItem,
    outcome: ItemOutcome,
    detail: impl Into<String>,
) -> ItemReport {
    ItemReport {
        id: item.id,
        kind: item.kind,
        payment_request_id: item.payment_request_id.clone(),
        outcome,
        detail: detail.into(),
        payment_state: None,
    }
}

fn load_payment(tx: &Tx, id: &str) -> anyhow::Result<PaymentRecord> {
    payments::get(tx, id)?.ok_or_else(|| anyhow::anyhow!("queue item for unknown payment {id}"))
}

/// Settles one item inside the caller's transaction.
fn settle_one(
    tx: &Tx,
    ctx: &SettleCtx,
    item: &QueueItem,
    v: &Verdict,
) -> anyhow::Result<ItemReport> {
    let (id, owner, now) = (item.id, ctx.owner.as_str(), ctx.now);
    let lost = || {
        report(
            item,
            ItemOutcome::LeaseLost,
            "another replayer holds the item now",
        )
    };
    match v {
        Verdict::Release => {
            q::release(tx, id, owner)?;
            Ok(report(
                item,
                ItemOutcome::Released,
                "too little lease left to send safely",
            ))
        }
        Verdict::Unknown { why } | Verdict::Held { why } => {
            let held = matches!(v, Verdict::Held { .. });
            let delay = if held {
                ctx.backoff_max
            } else {
                let d = backoff(
                    item.attempts.saturating_add(1),
                    ctx.backoff_initial,
                    ctx.backoff_max,
                );
                jittered(d, rand::thread_rng().gen::<f64>())
            };
            let next = now.saturating_add(ms(delay));
            if !q::reschedule(tx, id, owner, next, why, now)? {
                return Ok(lost());
            }
            let (what, outcome) = if held {
                ("HELD", ItemOutcome::Held)
            } else {
                ("RETRY", ItemOutcome::Retry)
            };
            q::record_event(tx, id, now, owner, what, why)?;
            Ok(report(
                item,
                outcome,
                format!(
                    "{why}; next try in {}",
                    humantime::format_duration(Duration::from_millis(ms(delay).unsigned_abs()))
                ),
            ))
        }
        Verdict::Confirmed { facts } => {
            if !q::close(
                tx,
                id,
                owner,
                ItemStatus::Done,
                "confirmed by the gateway",
                now,
            )? {
                return Ok(lost());
            }
            q::record_event(tx, id, now, owner, "DONE", "confirmed by the gateway")?;
            let rec = load_payment(tx, &item.payment_request_id)?;
            let (event, refund) = match (item.kind, &item.refund_request_id) {
                (ItemKind::Refund, Some(rid)) => {
                    let r = payments::get_refund(tx, rid)?
                        .ok_or_else(|| anyhow::anyhow!("queued refund {rid} has no refund row"))?;
                    let event = Event::QueuedRefundConfirmed {
                        fully_refunded: fully_refunded(&rec, &r),
                    };
                    (event, Some(r))
                }
                // The gateway had charged the payment; the cancel gave it back as a refund.
                _ if facts.cancel_refunded => (Event::CancelRefunded, None),
                _ => (Event::QueuedCancelConfirmed, None),
            };
            let state = move_payment(tx, ctx, &rec, &event, facts, refund.as_ref(), |_| {})?;
            Ok(ItemReport {
                payment_state: Some(state),
                ..report(item, ItemOutcome::Done, "confirmed by the gateway")
            })
        }
        Verdict::CancelWindowPassed { payment_id, code } => {
            let rec = load_payment(tx, &item.payment_request_id)?;
            let owed = rec.amount.minor() - rec.refunded.minor();
            if owed <= 0 {
                return give_up(
                    tx,
                    ctx,
                    item,
                    ItemStatus::Dead,
                    "the cancel window has passed and nothing is left to refund".into(),
                    Some(code.clone()),
                );
            }
            let facts = Facts {
                payment_id: Some(payment_id.clone()),
                result_code: Some(code.clone()),
                ..Facts::default()
            };
            let env = ctx.env();
            let planned = plan(
                &env,
                &rec,
                &Event::QueuedCancelWindowPassed,
                &facts,
                None,
                &mut || Ok(payments::next_sequence(tx)?),
            )?;
            let Planned::Move(p) = planned else {
                return give_up(
                    tx,
                    ctx,
                    item,
                    ItemStatus::Dead,
                    format!(
                        "the cancel window has passed, but the payment is {}; refund it by hand",
                        rec.state
                    ),
                    Some(code.clone()),
                );
            };
            let resolution = "cancel window passed; the full amount is queued as a refund";
            if !q::close(tx, id, owner, ItemStatus::Done, resolution, now)? {
                return Ok(lost());
            }
            let rid = p
                .change
                .new_refund
                .as_ref()
                .map(|r| r.refund_request_id.clone())
                .unwrap_or_default();
            q::record_event(
                tx,
                id,
                now,
                owner,
                "CONVERTED",
                &format!("{resolution}: refund {rid}"),
            )?;
            let moved = payments::apply_in(tx, &rec.payment_request_id, rec.state, &p.change, now)?
                .ok_or_else(|| anyhow::anyhow!("payment changed inside its own transaction"))?;
            Ok(ItemReport {
                payment_state: Some(moved.state),
                ..report(
                    item,
                    ItemOutcome::Converted,
                    format!("{resolution} ({rid})"),
                )
            })
        }
        Verdict::NeverCharged {
            inquiry,
            result_code,
        } => {
            let resolution =
                "the gateway has no record of the payment and its pay's expiry has passed: never charged";
            if !q::close(tx, id, owner, ItemStatus::Done, resolution, now)? {
                return Ok(lost());
            }
            q::record_event(tx, id, now, owner, "DONE", resolution)?;
            let rec = load_payment(tx, &item.payment_request_id)?;
            let facts = Facts {
                result_code: result_code.clone(),
                ..Facts::default()
            };
            let event = Event::LastInquiry(inquiry.clone());
            let state = move_payment(tx, ctx, &rec, &event, &facts, None, |_| {})?;
            Ok(ItemReport {
                payment_state: Some(state),
                ..report(item, ItemOutcome::Done, resolution)
            })
        }
        Verdict::Refused { code, message } => give_up(
            tx,
            ctx,
            item,
            ItemStatus::Dead,
            format!(
                "{} refused by the gateway: {code} {message}",
                item.kind.as_str().to_lowercase()
            ),
            Some(code.clone()),
        ),
        Verdict::Unreadable { why } => give_up(
            tx,
            ctx,
            item,
            ItemStatus::Dead,
            format!(
                "the stored {} cannot be read: {why}",
                item.kind.as_str().to_lowercase()
            ),
            None,
        ),
        Verdict::Abandon { reason } => give_up(
            tx,
            ctx,
            item,
            ItemStatus::Abandoned,
            format!("abandoned by the back office: {reason}"),
            None,
        ),
    }
}

/// Dead letter or abandon: the item closes, its refund (if any) is marked, and the payment
/// goes to NEEDS_ATTENTION with the reason.
fn give_up(
    tx: &Tx,
    ctx: &SettleCtx,
    item: &QueueItem,
    status: ItemStatus,
    reason: String,
    code: Option<String>,
) -> anyhow::Result<ItemReport> {
    if !q::close(tx, item.id, &ctx.owner, status, &reason, ctx.now)? {
        return Ok(report(
            item,
            ItemOutcome::LeaseLost,
            "another replayer holds the item now",
        ));
    }
    q::record_event(tx, item.id, ctx.now, &ctx.owner, status.as_str(), &reason)?;
    let rec = load_payment(tx, &item.payment_request_id)?;
    let refund = match &item.refund_request_id {
        Some(rid) => payments::get_refund(tx, rid)?,
        None => None,
    };
    let facts = Facts {
        result_code: code,
        ..Facts::default()
    };
    let abandoned = status == ItemStatus::Abandoned;
    let state = move_payment(
        tx,
        ctx,
        &rec,
        &Event::QueueGaveUp {
            reason: reason.clone(),
        },
        &facts,
        refund.as_ref(),
        |change| {
            // A human gave the refund up; the gateway did not refuse it.
            if let (true, Some(s)) = (abandoned, change.settle_refund.as_mut()) {
                s.state = RefundState::Abandoned;
            }
        },
    )?;
    let outcome = if abandoned {
        ItemOutcome::Abandoned
    } else {
        ItemOutcome::Dead
    };
    Ok(ItemReport {
        payment_state: Some(state),
        ..report(item, outcome, reason)
    })
}

/// Plans `event` on the payment and commits it inside the transaction; when the machine
/// ignores it (the payment moved on, e.g. a human resolved it), the outcome is still
/// journaled on the payment, with the event's refund rows, without changing its state.
/// `patch` adjusts the planned change (abandon). Returns the state after.
fn move_payment(
    tx: &Tx,
    ctx: &SettleCtx,
    rec: &PaymentRecord,
    event: &Event,
    facts: &Facts,
    refund: Option<&payments::RefundRecord>,
    patch: impl FnOnce(&mut Change),
) -> anyhow::Result<State> {
    let env = ctx.env();
    let planned = plan(&env, rec, event, facts, refund, &mut || {
        Ok(payments::next_sequence(tx)?)
    })?;
    let mut change = match planned {
        Planned::Move(p) => p.change,
        Planned::Ignore { why, .. } => note_only(rec, event, facts, refund, why),
        Planned::Refuse { why } => note_only(rec, event, facts, refund, &why),
    };
    patch(&mut change);
    let moved = payments::apply_in(tx, &rec.payment_request_id, rec.state, &change, ctx.now)?
        .ok_or_else(|| anyhow::anyhow!("payment changed inside its own transaction"))?;
    Ok(moved.state)
}
