//! Payments and their journal: creation with a durable sequence, reads. Refunds live in
//! `store::refunds`, the compare-and-set transition every state change goes through in
//! `store::transition` (both re-exported here for their callers).

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::domain::machine::State;
use crate::domain::money::{Amount, Currency};

pub use super::refunds::{get_refund, refunds_of, refunds_since, RefundRecord, RefundState};
pub use super::transition::{
    apply, apply_in, note_payment_id, Change, NewQueueItem, NewRefund, SettleRefund,
};

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

pub(crate) const COLUMNS: &str =
    "payment_request_id, order_ref, amount_minor, currency, state, code_masked, \
    result_code, result_message, payment_id, refunded_minor, attention_reason, inquiries, \
    active_refund_id, refund_return_to, terminal_time, created_at, updated_at, pay_expires_at";

pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<PaymentRecord> {
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

/// Where a new payment's sequence number comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The next one, taken in the payment's own transaction.
    Next,
    /// One an earlier committed transaction took with [`reserve_sequences`] and nobody used:
    /// its id can be built, and the pay signed, before the payment's transaction begins.
    Reserved(u64),
}

/// Creates a payment: checks the order, takes the next sequence number, builds the id with
/// `make_id(sequence)`, inserts the payment and its first event — one transaction.
pub fn create(
    conn: &mut Connection,
    new: &NewPayment,
    now: i64,
    make_id: impl FnOnce(u64) -> String,
) -> Result<PaymentRecord, CreateError> {
    create_with(conn, new, now, Sequence::Next, make_id)
}

/// [`create`] with the sequence number from `seq`.
pub fn create_with(
    conn: &mut Connection,
    new: &NewPayment,
    now: i64,
    seq: Sequence,
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
    let seq = match seq {
        Sequence::Next => next_sequence(&tx)?,
        Sequence::Reserved(seq) => seq,
    };
    let id = make_id(seq);
    tx.prepare_cached(
        "INSERT INTO payments (payment_request_id, order_ref, amount_minor, currency, state, \
         code_masked, terminal_time, created_at, updated_at, pay_expires_at) \
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?8,?9)",
    )?
    .execute(params![
        id,
        new.order_ref,
        new.amount.minor(),
        new.amount.currency().code(),
        new.state.as_str(),
        new.code_masked,
        new.terminal_time,
        now,
        new.pay_expires_at
    ])?;
    let cause = if new.state == State::Paying {
        "pay intent committed"
    } else {
        "sale started; waiting for a code"
    };
    insert_event(&tx, &id, now, None, new.state, cause, None)?;
    let rec = get(&tx, &id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
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
    seq: Sequence,
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
    let rec = create_with(conn, new, now, seq, make_id)?;
    record(conn, key, &rec.payment_request_id, now)?;
    Ok((rec, false))
}

/// Takes the next `n` values of the terminal sequence, in the caller's transaction: once it
/// commits they are this caller's alone (a later take, in any process, starts after them),
/// used or not; one never used leaves a gap, which the ids allow.
pub fn reserve_sequences(
    conn: &Connection,
    n: u64,
) -> rusqlite::Result<std::ops::RangeInclusive<u64>> {
    let n = n.max(1);
    let last = conn
        .prepare_cached(
            "UPDATE terminal_sequence SET value = value + ?1 WHERE name = 'request' RETURNING value",
        )?
        .query_row([n as i64], |r| r.get::<_, i64>(0))? as u64;
    Ok(last + 1 - n..=last)
}

/// Takes the next value of the terminal sequence in its own transaction (refund ids).
pub fn next_sequence(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "UPDATE terminal_sequence SET value = value + 1 WHERE name = 'request' RETURNING value",
    )?
    .query_row([], |r| r.get::<_, i64>(0))
    .map(|v| v as u64)
}

pub(crate) fn insert_event(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::ItemKind;
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
    fn reserved_sequences_are_the_callers_alone_and_a_payment_can_use_one() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            assert_eq!(next_sequence(c)?, 1);
            assert_eq!(reserve_sequences(c, 3)?, 2..=4);
            // A take after the reservation starts past it.
            assert_eq!(next_sequence(c)?, 5);
            let rec = create_with(
                c,
                &new(None, State::Paying),
                1,
                Sequence::Reserved(3),
                |seq| format!("id{seq}"),
            )?;
            assert_eq!(rec.payment_request_id, "id3");
            assert_eq!(events(c, "id3")?.len(), 1, "journalled like any other");
            assert_eq!(next_sequence(c)?, 6, "using a reserved number takes none");
            Ok(())
        })
        .unwrap();
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
                    kind: ItemKind::Cancel,
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
