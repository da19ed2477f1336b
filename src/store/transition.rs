//! The compare-and-set transition every state change goes through (rule 5): the payment's
//! update, its journal event, and the refund, queue and slip rows of the change, in one
//! transaction; a state that moved on writes nothing. What to write is planned by
//! `engine::transition::plan`.

use rusqlite::{params, Connection};

/// The connection a store call hands its job: callers outside `store/` that work inside a
/// transaction (the queue's settle) name it by this, never by rusqlite.
pub type Tx = Connection;

use super::payments::{insert_event, PaymentRecord};
use super::queue::ItemKind;
use super::refunds::RefundState;
use crate::domain::machine::{RefundKind, State};
use crate::domain::money::Amount;

/// A state change to commit with compare-and-set.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// New state.
    pub to: Option<State>,
    /// Journal cause.
    pub cause: String,
    /// Gateway result code (also stored on the payment when set).
    pub result_code: Option<String>,
    /// Its message.
    pub result_message: Option<String>,
    /// The gateway's payment id, when an answer carried it.
    pub payment_id: Option<String>,
    /// Masked code (binding a scan).
    pub code_masked: Option<String>,
    /// Inquiry count to store.
    pub inquiries: Option<u32>,
    /// Reason a human must act.
    pub attention_reason: Option<String>,
    /// A refund to create in the same transaction (write-ahead of the refund request).
    pub new_refund: Option<NewRefund>,
    /// A refund to settle in the same transaction.
    pub settle_refund: Option<SettleRefund>,
    /// A queue item to write in the same transaction (rule 4).
    pub enqueue: Option<NewQueueItem>,
    /// `storeTerminalRequestTime` to record (binding a scan).
    pub terminal_time: Option<String>,
    /// A slip to put in the print journal in the same transaction (a final state).
    pub slip: Option<crate::domain::slip::SlipData>,
    /// The pay's expiry to record (binding a scan), epoch ms.
    pub pay_expires_at: Option<i64>,
    /// The gateway's time of the charge (`paymentTime`), or of the refund being settled
    /// (`refundTime`) when `settle_refund` is set; the first one given is kept.
    pub gateway_time: Option<String>,
}

/// A refund to create.
#[derive(Debug, Clone)]
pub struct NewRefund {
    /// Our id.
    pub refund_request_id: String,
    /// A reversal or a requested refund.
    pub kind: RefundKind,
    /// Amount.
    pub amount: Amount,
    /// Why.
    pub reason: Option<String>,
    /// State to return to if the gateway declines a requested refund.
    pub return_to: Option<State>,
}

/// A refund outcome to record.
#[derive(Debug, Clone)]
pub struct SettleRefund {
    /// Which refund.
    pub refund_request_id: String,
    /// The refund's new state.
    pub state: RefundState,
    /// Gateway's refund id.
    pub refund_id: Option<String>,
    /// Result code.
    pub result_code: Option<String>,
    /// Message.
    pub result_message: Option<String>,
    /// Add the refund amount to `refunded_minor` (on success).
    pub add_to_refunded: bool,
}

/// A reversal to put in the queue.
#[derive(Debug, Clone)]
pub struct NewQueueItem {
    /// Cancel or refund.
    pub kind: ItemKind,
    /// For refunds.
    pub refund_request_id: Option<String>,
    /// Payload version.
    pub payload_version: i64,
    /// The identical request, JSON.
    pub payload: String,
    /// When to try first, epoch ms.
    pub next_attempt_at: i64,
}

/// Commits `change` if the payment is still in `expected` (compare-and-set, rule 5): the
/// state update, the journal event and any refund or queue rows in one transaction.
/// Returns the updated record, or `None` when the state had moved on (nothing written).
pub fn apply(
    conn: &mut Connection,
    id: &str,
    expected: State,
    change: &Change,
    now: i64,
) -> rusqlite::Result<Option<PaymentRecord>> {
    let tx = conn.savepoint()?;
    let rec = apply_in(&tx, id, expected, change, now)?;
    if rec.is_some() {
        tx.commit()?;
    }
    Ok(rec)
}

/// [`apply`] inside a transaction the caller holds (the queue settles a payment together with
/// its queue item). The compare-and-set runs first, so a state that moved on writes nothing.
pub fn apply_in(
    tx: &Connection,
    id: &str,
    expected: State,
    change: &Change,
    now: i64,
) -> rusqlite::Result<Option<PaymentRecord>> {
    let to = change.to.unwrap_or(expected);
    let active_refund = change
        .new_refund
        .as_ref()
        .map(|r| r.refund_request_id.clone());
    let return_to = change
        .new_refund
        .as_ref()
        .and_then(|r| r.return_to.map(State::as_str));
    let updated = tx.prepare_cached(
        "UPDATE payments SET state = ?3, updated_at = ?4, \
           result_code = coalesce(?5, result_code), \
           result_message = CASE WHEN ?5 IS NOT NULL THEN ?6 ELSE coalesce(?6, result_message) END, \
           payment_id = coalesce(payment_id, ?7), code_masked = coalesce(?8, code_masked), \
           inquiries = coalesce(?9, inquiries), attention_reason = coalesce(?10, attention_reason), \
           active_refund_id = CASE WHEN ?11 THEN ?12 ELSE active_refund_id END, \
           refund_return_to = CASE WHEN ?11 THEN ?13 ELSE refund_return_to END, \
           terminal_time = coalesce(?14, terminal_time), \
           pay_expires_at = coalesce(?15, pay_expires_at) \
         WHERE payment_request_id = ?1 AND state = ?2",
    )?
    .execute(params![
            id,
            expected.as_str(),
            to.as_str(),
            now,
            change.result_code,
            change.result_message,
            change.payment_id,
            change.code_masked,
            change.inquiries,
            change.attention_reason,
            active_refund.is_some(),
            active_refund,
            return_to,
            change.terminal_time,
            change.pay_expires_at,
        ])?;
    if updated == 0 {
        // The state moved on (another writer applied first): write nothing.
        return Ok(None);
    }
    if let Some(r) = &change.new_refund {
        tx.execute(
            "INSERT INTO refunds (refund_request_id, payment_request_id, kind, amount_minor, currency, \
             reason, state, created_at, updated_at) VALUES (?1,?2,?3,?4,?5,?6,'PENDING',?7,?7)",
            params![
                r.refund_request_id,
                id,
                r.kind.as_str(),
                r.amount.minor(),
                r.amount.currency().code(),
                r.reason,
                now
            ],
        )?;
    }
    if let Some(t) = &change.gateway_time {
        if let Some(s) = &change.settle_refund {
            tx.execute(
                "UPDATE refunds SET gateway_time = coalesce(gateway_time, ?2) WHERE refund_request_id = ?1",
                params![s.refund_request_id, t],
            )?;
        } else {
            tx.execute(
                "UPDATE payments SET gateway_time = coalesce(gateway_time, ?2) WHERE payment_request_id = ?1",
                params![id, t],
            )?;
        }
    }
    if let Some(s) = &change.settle_refund {
        let n = tx.execute(
            "UPDATE refunds SET state = ?2, refund_id = coalesce(?3, refund_id), \
             result_code = coalesce(?4, result_code), result_message = coalesce(?5, result_message), \
             updated_at = ?6 WHERE refund_request_id = ?1 AND state IN ('PENDING','QUEUED')",
            params![s.refund_request_id, s.state.as_str(), s.refund_id, s.result_code, s.result_message, now],
        )?;
        if n == 1 && s.add_to_refunded {
            tx.execute(
                "UPDATE payments SET refunded_minor = refunded_minor + \
                 (SELECT amount_minor FROM refunds WHERE refund_request_id = ?2) \
                 WHERE payment_request_id = ?1",
                params![id, s.refund_request_id],
            )?;
        }
    }
    if let Some(q) = &change.enqueue {
        tx.execute(
            "INSERT INTO reversal_queue (kind, payment_request_id, refund_request_id, payload_version, \
             payload, status, next_attempt_at, created_at, updated_at) \
             VALUES (?1,?2,?3,?4,?5,'PENDING',?6,?7,?7) \
             ON CONFLICT DO NOTHING",
            params![q.kind.as_str(), id, q.refund_request_id, q.payload_version, q.payload, q.next_attempt_at, now],
        )?;
    }
    if let Some(slip) = &change.slip {
        crate::store::print_journal::enqueue(tx, slip)?;
    }
    insert_event(
        tx,
        id,
        now,
        Some(expected),
        to,
        &change.cause,
        change.result_code.as_deref(),
    )?;
    let rec = super::payments::get(tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Some(rec))
}

/// Records the gateway's payment id without changing the state (an answer that carried it).
pub fn note_payment_id(conn: &Connection, id: &str, payment_id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE payments SET payment_id = ?2 WHERE payment_request_id = ?1 AND payment_id IS NULL",
        params![id, payment_id],
    )?;
    Ok(())
}
