//! Payments, their journal and refunds: creation with a durable sequence, reads, and the
//! compare-and-set transition that every state change goes through.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::domain::machine::State;
use crate::domain::money::{Amount, Currency};

/// One payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    /// Our id (`paymentRequestId`).
    pub payment_request_id: String,
    /// The POS's order reference.
    pub order_ref: Option<String>,
    /// The amount of the sale.
    pub amount: Amount,
    /// Current state.
    pub state: State,
    /// The payment code, masked.
    pub code_masked: Option<String>,
    /// Last gateway result code that decided something.
    pub result_code: Option<String>,
    /// Its message.
    pub result_message: Option<String>,
    /// The gateway's id, once known.
    pub payment_id: Option<String>,
    /// Sum of confirmed refunds.
    pub refunded: Amount,
    /// Why a human must act.
    pub attention_reason: Option<String>,
    /// Inquiries answered in the current budget.
    pub inquiries: u32,
    /// The refund a REFUNDING payment carries.
    pub active_refund_id: Option<String>,
    /// Where a declined requested refund returns to.
    pub refund_return_to: Option<State>,
    /// `storeTerminalRequestTime` as sent.
    pub terminal_time: String,
    /// Created, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
    /// When the gateway stops accepting the pay (its `paymentExpiryTime`), epoch ms; `None`
    /// while the sale waits for its code.
    pub pay_expires_at: Option<i64>,
}

/// One journal event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Epoch ms.
    pub at: i64,
    /// State before (none for the first event).
    pub from: Option<State>,
    /// State after.
    pub to: State,
    /// Why.
    pub cause: String,
    /// Gateway result code, when one decided it.
    pub result_code: Option<String>,
}

/// One refund as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    /// Our id (`refundRequestId`).
    pub refund_request_id: String,
    /// The payment.
    pub payment_request_id: String,
    /// `REVERSAL` or `REQUESTED`.
    pub kind: String,
    /// Amount.
    pub amount: Amount,
    /// Why.
    pub reason: Option<String>,
    /// `PENDING`, `QUEUED`, `SUCCEEDED`, `FAILED`, `ABANDONED`.
    pub state: String,
    /// Gateway's refund id.
    pub refund_id: Option<String>,
    /// Result code.
    pub result_code: Option<String>,
    /// Created, epoch ms.
    pub created_at: i64,
    /// Updated, epoch ms.
    pub updated_at: i64,
}

/// A new payment, before its id exists.
#[derive(Debug, Clone)]
pub struct NewPayment {
    /// The POS's order reference.
    pub order_ref: Option<String>,
    /// Amount.
    pub amount: Amount,
    /// `PAYING` (code given) or `AWAITING_CODE`.
    pub state: State,
    /// Masked code, when given.
    pub code_masked: Option<String>,
    /// `storeTerminalRequestTime`.
    pub terminal_time: String,
    /// The pay's expiry, epoch ms (with a code); committed with the intent.
    pub pay_expires_at: Option<i64>,
}

/// Why a payment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("order {order_ref} already has payment {existing} in state {state}: {hint}")]
    OrderBusy {
        order_ref: String,
        existing: String,
        state: State,
        hint: &'static str,
    },
    #[error("another sale ({existing}) is already waiting for a code; scan it or abort it first")]
    AlreadyAwaiting { existing: String },
    #[error("Idempotency-Key {key:?} was used for another request (it created {existing}); send a new key for a new sale, or the identical request to get that payment")]
    KeyReused { key: String, existing: String },
    #[error(transparent)]
    Db(#[from] rusqlite::Error),
}

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
    /// `REVERSAL` or `REQUESTED`.
    pub kind: &'static str,
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
    /// `SUCCEEDED`, `FAILED`, `QUEUED`, `ABANDONED`.
    pub state: &'static str,
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
    /// `CANCEL` or `REFUND`.
    pub kind: &'static str,
    /// For refunds.
    pub refund_request_id: Option<String>,
    /// Payload version.
    pub payload_version: i64,
    /// The identical request, JSON.
    pub payload: String,
    /// When to try first, epoch ms.
    pub next_attempt_at: i64,
}

const COLUMNS: &str = "payment_request_id, order_ref, amount_minor, currency, state, code_masked, \
    result_code, result_message, payment_id, refunded_minor, attention_reason, inquiries, \
    active_refund_id, refund_return_to, terminal_time, created_at, updated_at, pay_expires_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<PaymentRecord> {
    let currency: String = r.get(3)?;
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let cur = Currency::from_code(&currency).map_err(|e| bad(3, e.to_string()))?;
    let amount = Amount::from_minor(r.get(2)?, cur).map_err(|e| bad(2, e.to_string()))?;
    let refunded = Amount::from_minor(r.get(9)?, cur).map_err(|e| bad(9, e.to_string()))?;
    let state: String = r.get(4)?;
    let return_to: Option<String> = r.get(13)?;
    Ok(PaymentRecord {
        payment_request_id: r.get(0)?,
        order_ref: r.get(1)?,
        amount,
        state: State::parse(&state).ok_or_else(|| bad(4, format!("unknown state {state}")))?,
        code_masked: r.get(5)?,
        result_code: r.get(6)?,
        result_message: r.get(7)?,
        payment_id: r.get(8)?,
        refunded,
        attention_reason: r.get(10)?,
        inquiries: r.get(11)?,
        active_refund_id: r.get(12)?,
        refund_return_to: return_to.as_deref().and_then(State::parse),
        terminal_time: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
        pay_expires_at: r.get(17)?,
    })
}

/// States in which an earlier attempt blocks a new payment for the same order: anything not
/// final (a rescan must never charge twice), a paid order, and one a human must look at.
fn blocks_new_attempt(s: State) -> Option<&'static str> {
    match s {
        _ if !s.is_final() => Some("wait for it to finish or abort it"),
        State::Succeeded | State::PartiallyRefunded => {
            Some("the order is already paid; refund it first or use a new order reference")
        }
        State::NeedsAttention => {
            Some("a human must resolve it first (posd status ID); or use a new order reference")
        }
        _ => None,
    }
}

/// Creates a payment: checks the order, takes the next sequence number, builds the id with
/// `make_id(sequence)`, inserts the payment and its first event — one transaction.
pub fn create(
    conn: &mut Connection,
    new: &NewPayment,
    now: i64,
    make_id: impl FnOnce(u64) -> String,
) -> Result<PaymentRecord, CreateError> {
    let tx = conn.savepoint()?;
    if let Some(order) = &new.order_ref {
        let mut stmt = tx.prepare_cached(
            "SELECT payment_request_id, state FROM payments WHERE order_ref = ?1 ORDER BY created_at DESC",
        )?;
        let rows = stmt.query_map([order], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (existing, state) = row?;
            let state = State::parse(&state).unwrap_or(State::NeedsAttention);
            if let Some(hint) = blocks_new_attempt(state) {
                return Err(CreateError::OrderBusy {
                    order_ref: order.clone(),
                    existing,
                    state,
                    hint,
                });
            }
        }
    }
    if new.state == State::AwaitingCode {
        let existing: Option<String> = tx
            .query_row(
                "SELECT payment_request_id FROM payments WHERE state = 'AWAITING_CODE' LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(existing) = existing {
            return Err(CreateError::AlreadyAwaiting { existing });
        }
    }
    let seq: i64 = tx.query_row(
        "UPDATE terminal_sequence SET value = value + 1 WHERE name = 'request' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    let id = make_id(seq as u64);
    tx.execute(
        "INSERT INTO payments (payment_request_id, order_ref, amount_minor, currency, state, \
         code_masked, terminal_time, created_at, updated_at, pay_expires_at) \
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?8,?9)",
        params![
            id,
            new.order_ref,
            new.amount.minor(),
            new.amount.currency().code(),
            new.state.as_str(),
            new.code_masked,
            new.terminal_time,
            now,
            new.pay_expires_at
        ],
    )?;
    let cause = if new.state == State::Paying {
        "pay intent committed"
    } else {
        "sale started; waiting for a code"
    };
    insert_event(&tx, &id, now, None, new.state, cause, None)?;
    let rec = tx.query_row(
        &format!("SELECT {COLUMNS} FROM payments WHERE payment_request_id = ?1"),
        [&id],
        from_row,
    )?;
    tx.commit()?;
    Ok(rec)
}

/// [`create`] under an `Idempotency-Key`, recorded in the same transaction: returns the
/// payment and whether it already existed (the same key and request made it before). An
/// error leaves nothing behind once the caller's transaction rolls back.
pub fn create_once(
    conn: &mut Connection,
    new: &NewPayment,
    now: i64,
    make_id: impl FnOnce(u64) -> String,
    key: &super::idempotency::Idempotency,
) -> Result<(PaymentRecord, bool), CreateError> {
    use super::idempotency::{check, record, Seen};
    match check(conn, key)? {
        Seen::Same(id) => {
            let rec = get(conn, &id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            return Ok((rec, true));
        }
        Seen::Different(existing) => {
            return Err(CreateError::KeyReused {
                key: key.key.clone(),
                existing,
            })
        }
        Seen::New => {}
    }
    let rec = create(conn, new, now, make_id)?;
    record(conn, key, &rec.payment_request_id, now)?;
    Ok((rec, false))
}

/// Takes the next value of the terminal sequence in its own transaction (refund ids).
pub fn next_sequence(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "UPDATE terminal_sequence SET value = value + 1 WHERE name = 'request' RETURNING value",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
}

fn insert_event(
    conn: &Connection,
    id: &str,
    at: i64,
    from: Option<State>,
    to: State,
    cause: &str,
    result_code: Option<&str>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO payment_events (payment_request_id, at, from_state, to_state, cause, result_code) \
         VALUES (?1,?2,?3,?4,?5,?6)",
    )?
    .execute(params![id, at, from.map(State::as_str), to.as_str(), cause, result_code])?;
    Ok(())
}

/// Reads one payment.
pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<PaymentRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM payments WHERE payment_request_id = ?1"
    ))?
    .query_row([id], from_row)
    .optional()
}

/// The journal of one payment, oldest first.
pub fn events(conn: &Connection, id: &str) -> rusqlite::Result<Vec<EventRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, from_state, to_state, cause, result_code FROM payment_events \
         WHERE payment_request_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([id], |r| {
        let from: Option<String> = r.get(1)?;
        let to: String = r.get(2)?;
        Ok(EventRecord {
            at: r.get(0)?,
            from: from.as_deref().and_then(State::parse),
            to: State::parse(&to).unwrap_or(State::NeedsAttention),
            cause: r.get(3)?,
            result_code: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Every payment that is not final, oldest first (recovery).
pub fn open_payments(conn: &Connection) -> rusqlite::Result<Vec<PaymentRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM payments WHERE state IN \
         ('AWAITING_CODE','PAYING','INQUIRING','CANCELLING','REFUNDING') ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect()
}

/// The sale waiting for a code, if any.
pub fn awaiting_code(conn: &Connection) -> rusqlite::Result<Option<PaymentRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM payments WHERE state = 'AWAITING_CODE' ORDER BY created_at LIMIT 1"
    ))?
    .query_row([], from_row)
    .optional()
}

/// Payments created at or after `since` (epoch ms), oldest first.
pub fn since(conn: &Connection, since: i64) -> rusqlite::Result<Vec<PaymentRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM payments WHERE created_at >= ?1 ORDER BY created_at, payment_request_id"
    ))?;
    let rows = stmt.query_map([since], from_row)?;
    rows.collect()
}

/// Counts payments by state.
pub fn count_by_state(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT state, count(*) FROM payments GROUP BY state ORDER BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

fn refund_from_row(r: &Row<'_>) -> rusqlite::Result<RefundRecord> {
    let currency: String = r.get(4)?;
    let bad = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, what.into())
    };
    let cur = Currency::from_code(&currency).map_err(|e| bad(e.to_string()))?;
    Ok(RefundRecord {
        refund_request_id: r.get(0)?,
        payment_request_id: r.get(1)?,
        kind: r.get(2)?,
        amount: Amount::from_minor(r.get(3)?, cur).map_err(|e| bad(e.to_string()))?,
        reason: r.get(5)?,
        state: r.get(6)?,
        refund_id: r.get(7)?,
        result_code: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

const REFUND_COLUMNS: &str =
    "refund_request_id, payment_request_id, kind, amount_minor, currency, \
    reason, state, refund_id, result_code, created_at, updated_at";

/// One refund.
pub fn get_refund(conn: &Connection, id: &str) -> rusqlite::Result<Option<RefundRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE refund_request_id = ?1"
    ))?
    .query_row([id], refund_from_row)
    .optional()
}

/// Refunds of a payment, oldest first.
pub fn refunds_of(
    conn: &Connection,
    payment_request_id: &str,
) -> rusqlite::Result<Vec<RefundRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_request_id = ?1 ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([payment_request_id], refund_from_row)?;
    rows.collect()
}

/// Refunds created at or after `since`.
pub fn refunds_since(conn: &Connection, since: i64) -> rusqlite::Result<Vec<RefundRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE created_at >= ?1 ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([since], refund_from_row)?;
    rows.collect()
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
    let updated = tx.execute(
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
        params![
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
        ],
    )?;
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
                r.kind,
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
            params![s.refund_request_id, s.state, s.refund_id, s.result_code, s.result_message, now],
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
            params![q.kind, id, q.refund_request_id, q.payload_version, q.payload, q.next_attempt_at, now],
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
    let rec = tx.query_row(
        &format!("SELECT {COLUMNS} FROM payments WHERE payment_request_id = ?1"),
        [id],
        from_row,
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn cny(minor: i64) -> Amount {
        Amount::from_minor(minor, Currency::from_code("CNY").unwrap()).unwrap()
    }

    fn new(order: Option<&str>, state: State) -> NewPayment {
        NewPayment {
            order_ref: order.map(str::to_string),
            amount: cny(1234),
            state,
            code_masked: Some("2812**********3456".into()),
            terminal_time: "2026-11-21T10:15:30+08:00".into(),
            pay_expires_at: None,
        }
    }

    #[test]
    fn create_takes_a_durable_sequence_and_journals() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            let a = create(c, &new(Some("A-1"), State::Paying), 1, |seq| {
                format!("id{seq}")
            })?;
            let b = create(c, &new(Some("B-1"), State::Paying), 2, |seq| {
                format!("id{seq}")
            })?;
            assert_eq!(
                (a.payment_request_id.as_str(), b.payment_request_id.as_str()),
                ("id1", "id2")
            );
            let ev = events(c, "id1")?;
            assert_eq!(ev.len(), 1);
            assert_eq!((ev[0].from, ev[0].to), (None, State::Paying));
            assert_eq!(next_sequence(c)?, 3);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn the_sequence_survives_a_restart_and_a_clock_set_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.sqlite3");
        let id_at = |local: &str, seq: u64| {
            crate::domain::request_id::payment_request_id(&crate::domain::request_id::IdParts {
                local_time: chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S")
                    .unwrap(),
                terminal_id: "T0001",
                amount_minor: 1234,
                sequence: seq,
                random: 7,
            })
        };
        let first = Store::open(&path)
            .unwrap()
            .call_blocking(|c| {
                Ok(create(c, &new(None, State::Paying), 1, |q| {
                    id_at("2026-11-21 10:00:00", q)
                })?)
            })
            .unwrap();
        // Restarted, with the clock set back an hour: same random part, yet a new id.
        let second = Store::open(&path)
            .unwrap()
            .call_blocking(|c| {
                Ok(create(c, &new(None, State::Paying), 2, |q| {
                    id_at("2026-11-21 09:00:00", q)
                })?)
            })
            .unwrap();
        assert_ne!(first.payment_request_id, second.payment_request_id);
        let parsed =
            crate::domain::request_id::parse_payment_request_id(&second.payment_request_id);
        assert_eq!(parsed.map(|p| p.sequence), Some(2));
        // Even the same second twice cannot collide: the sequence differs.
        let third = Store::open(&path)
            .unwrap()
            .call_blocking(|c| {
                Ok(create(c, &new(None, State::Paying), 3, |q| {
                    id_at("2026-11-21 10:00:00", q)
                })?)
            })
            .unwrap();
        assert_ne!(first.payment_request_id, third.payment_request_id);
    }

    #[test]
    fn a_second_attempt_for_a_busy_or_paid_order_is_refused_and_changes_nothing() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            create(c, &new(Some("A-1"), State::Paying), 1, |q| format!("id{q}"))?;
            let e =
                create(c, &new(Some("A-1"), State::Paying), 2, |q| format!("id{q}")).unwrap_err();
            assert!(
                matches!(
                    e,
                    CreateError::OrderBusy {
                        state: State::Paying,
                        ..
                    }
                ),
                "{e}"
            );
            // The refused attempt took no sequence number and wrote nothing.
            assert_eq!(next_sequence(c)?, 2);
            assert!(get(c, "id2")?.is_none());
            let ch = Change {
                to: Some(State::Succeeded),
                cause: "ok".into(),
                ..Default::default()
            };
            apply(c, "id1", State::Paying, &ch, 3)?.unwrap();
            assert!(create(c, &new(Some("A-1"), State::Paying), 4, |q| format!("id{q}")).is_err());
            let ch = Change {
                to: Some(State::Refunded),
                cause: "r".into(),
                ..Default::default()
            };
            apply(c, "id1", State::Succeeded, &ch, 5)?.unwrap();
            create(c, &new(Some("A-1"), State::Paying), 6, |q| format!("id{q}"))?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn only_one_sale_waits_for_a_code() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            create(c, &new(None, State::AwaitingCode), 1, |q| format!("id{q}"))?;
            let e =
                create(c, &new(None, State::AwaitingCode), 2, |q| format!("id{q}")).unwrap_err();
            assert!(matches!(e, CreateError::AlreadyAwaiting { .. }));
            assert_eq!(awaiting_code(c)?.unwrap().payment_request_id, "id1");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn compare_and_set_applies_once() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            create(c, &new(None, State::Paying), 1, |q| format!("id{q}"))?;
            let win = Change {
                to: Some(State::Succeeded),
                cause: "notify".into(),
                ..Default::default()
            };
            let lose = Change {
                to: Some(State::Inquiring),
                cause: "late".into(),
                ..Default::default()
            };
            assert!(apply(c, "id1", State::Paying, &win, 2)?.is_some());
            assert!(apply(c, "id1", State::Paying, &lose, 3)?.is_none());
            assert_eq!(get(c, "id1")?.unwrap().state, State::Succeeded);
            assert_eq!(events(c, "id1")?.len(), 2);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn queue_item_is_written_with_the_state_change() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            create(c, &new(None, State::Paying), 1, |q| format!("id{q}"))?;
            let to_cancel = Change {
                to: Some(State::Cancelling),
                cause: "c".into(),
                ..Default::default()
            };
            apply(c, "id1", State::Paying, &to_cancel, 2)?.unwrap();
            let q = Change {
                to: Some(State::CancelQueued),
                cause: "queued".into(),
                enqueue: Some(NewQueueItem {
                    kind: "CANCEL",
                    refund_request_id: None,
                    payload_version: 1,
                    payload: "{}".into(),
                    next_attempt_at: 5,
                }),
                ..Default::default()
            };
            apply(c, "id1", State::Cancelling, &q, 3)?.unwrap();
            let n: i64 = c.query_row(
                "SELECT count(*) FROM reversal_queue WHERE payment_request_id='id1'",
                [],
                |r| r.get(0),
            )?;
            assert_eq!(n, 1);
            // A failed compare-and-set writes no queue item either.
            assert!(apply(c, "id1", State::Cancelling, &q, 4)?.is_none());
            let n: i64 = c.query_row("SELECT count(*) FROM reversal_queue", [], |r| r.get(0))?;
            assert_eq!(n, 1);
            Ok(())
        })
        .unwrap();
    }
}
