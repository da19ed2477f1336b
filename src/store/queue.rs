//! The store-and-forward reversal queue's SQL: leasing due items, settling them, rescheduling
//! them, and the reads the back office needs. The decisions (what an answer means for the
//! payment) live in `engine::worker`; this file only moves rows.
//!
//! # Leases
//! An item is sent only by the replayer that holds its lease (`lease_owner`, `lease_until`),
//! taken in one `BEGIN IMMEDIATE` transaction, so two replayers on one database (the daemon
//! and `posd queue replay` with the daemon stopped, or two processes by mistake) never send
//! one item at the same time. Every write after the send is guarded by the owner: a replayer
//! whose lease expired and was retaken by another writes nothing.
//!
//! # Durability
//! Settling (DONE / DEAD / ABANDONED, or a reschedule) is meant to run in the same
//! transaction as the payment's compare-and-set and its journal event; the functions here take
//! a `&Connection` so the caller can pass its open transaction.
//!
//! # Ordering
//! Due items are leased earliest `next_attempt_at` first, ties by id (enqueue order).

use rusqlite::{params, Connection, OptionalExtension, Row};

/// What a queue item replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// cancel by `paymentRequestId`.
    Cancel,
    /// refund by `refundRequestId`.
    Refund,
}

impl ItemKind {
    /// The database and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Cancel => "CANCEL",
            ItemKind::Refund => "REFUND",
        }
    }

    fn parse(s: &str) -> Option<ItemKind> {
        match s {
            "CANCEL" => Some(ItemKind::Cancel),
            "REFUND" => Some(ItemKind::Refund),
            _ => None,
        }
    }
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemStatus {
    /// Waiting to be (re)sent.
    Pending,
    /// The gateway confirmed it (or a cancel became a refund item).
    Done,
    /// A verified refusal the queue cannot act on; the payment needs a human.
    Dead,
    /// A human gave up on it, with a reason.
    Abandoned,
}

impl ItemStatus {
    /// The database and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Pending => "PENDING",
            ItemStatus::Done => "DONE",
            ItemStatus::Dead => "DEAD",
            ItemStatus::Abandoned => "ABANDONED",
        }
    }

    fn parse(s: &str) -> Option<ItemStatus> {
        match s {
            "PENDING" => Some(ItemStatus::Pending),
            "DONE" => Some(ItemStatus::Done),
            "DEAD" => Some(ItemStatus::Dead),
            "ABANDONED" => Some(ItemStatus::Abandoned),
            _ => None,
        }
    }
}

/// One queue item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    /// Row id; the back office's `ID`.
    pub id: i64,
    /// Cancel or refund.
    pub kind: ItemKind,
    /// The payment it reverses.
    pub payment_request_id: String,
    /// The refund, for refund items.
    pub refund_request_id: Option<String>,
    /// Version of `payload`.
    pub payload_version: i64,
    /// The identical request to send, JSON.
    pub payload: String,
    /// Where the item is.
    pub status: ItemStatus,
    /// Sends that did not settle the item.
    pub attempts: u32,
    /// When the next send is due, epoch ms.
    pub next_attempt_at: i64,
    /// Who holds the lease.
    pub lease_owner: Option<String>,
    /// Until when, epoch ms.
    pub lease_until: Option<i64>,
    /// Why the last send did not settle it.
    pub last_error: Option<String>,
    /// How a closed item ended.
    pub resolution: Option<String>,
    /// Enqueued, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

const ITEM_COLUMNS: &str = "id, kind, payment_request_id, refund_request_id, payload_version, \
    payload, status, attempts, next_attempt_at, lease_owner, lease_until, last_error, resolution, \
    created_at, updated_at";

fn item_from_row(r: &Row<'_>) -> rusqlite::Result<QueueItem> {
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let kind: String = r.get(1)?;
    let status: String = r.get(6)?;
    Ok(QueueItem {
        id: r.get(0)?,
        kind: ItemKind::parse(&kind).ok_or_else(|| bad(1, format!("queue kind {kind:?}")))?,
        payment_request_id: r.get(2)?,
        refund_request_id: r.get(3)?,
        payload_version: r.get(4)?,
        payload: r.get(5)?,
        status: ItemStatus::parse(&status)
            .ok_or_else(|| bad(6, format!("queue status {status:?}")))?,
        attempts: r.get(7)?,
        next_attempt_at: r.get(8)?,
        lease_owner: r.get(9)?,
        lease_until: r.get(10)?,
        last_error: r.get(11)?,
        resolution: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
    })
}

/// Leases up to `limit` due items to `owner` until `lease_until`, in one immediate
/// transaction: pending, due at `now`, and not leased by anyone (or their lease expired).
pub fn lease_due(
    conn: &mut Connection,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> rusqlite::Result<Vec<QueueItem>> {
    let tx = conn.savepoint()?;
    let mut items = {
        let mut stmt = tx.prepare_cached(&format!(
            "UPDATE reversal_queue SET lease_owner = ?1, lease_until = ?2 \
             WHERE id IN (SELECT id FROM reversal_queue WHERE status = 'PENDING' \
               AND next_attempt_at <= ?3 AND (lease_until IS NULL OR lease_until < ?3) \
               ORDER BY next_attempt_at, id LIMIT ?4) \
             RETURNING {ITEM_COLUMNS}"
        ))?;
        let rows = stmt.query_map(
            params![
                owner,
                lease_until,
                now,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            item_from_row,
        )?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.commit()?;
    // RETURNING gives no order; keep the queue's.
    items.sort_by_key(|i| (i.next_attempt_at, i.id));
    Ok(items)
}

/// Why one item could not be leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRefused {
    /// No such item.
    NotFound,
    /// It is no longer pending.
    Closed(ItemStatus),
    /// Someone holds a lease on it until the given time (epoch ms).
    Leased {
        /// The holder.
        owner: String,
        /// Until when.
        until: i64,
    },
}

/// Leases one item by id, due or not (the back office's `posd queue replay ID` and abandon).
pub fn lease_one(
    conn: &mut Connection,
    id: i64,
    owner: &str,
    now: i64,
    lease_until: i64,
) -> rusqlite::Result<Result<QueueItem, LeaseRefused>> {
    let tx = conn.savepoint()?;
    let leased = tx
        .prepare_cached(&format!(
            "UPDATE reversal_queue SET lease_owner = ?2, lease_until = ?3 \
             WHERE id = ?1 AND status = 'PENDING' AND (lease_until IS NULL OR lease_until < ?4) \
             RETURNING {ITEM_COLUMNS}"
        ))?
        .query_row(params![id, owner, lease_until, now], item_from_row)
        .optional()?;
    let out = match leased {
        Some(item) => Ok(item),
        None => match get_in(&tx, id)? {
            None => Err(LeaseRefused::NotFound),
            Some(item) if item.status != ItemStatus::Pending => {
                Err(LeaseRefused::Closed(item.status))
            }
            Some(item) => Err(LeaseRefused::Leased {
                owner: item.lease_owner.unwrap_or_default(),
                until: item.lease_until.unwrap_or_default(),
            }),
        },
    };
    tx.commit()?;
    Ok(out)
}

/// Closes a leased item as `status` with `resolution`, if `owner` still holds it. Returns
/// false (and writes nothing) when the lease was lost or the item is no longer pending.
pub fn close(
    tx: &Connection,
    id: i64,
    owner: &str,
    status: ItemStatus,
    resolution: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    debug_assert!(status != ItemStatus::Pending, "close() ends an item");
    let n = tx
        .prepare_cached(
            "UPDATE reversal_queue SET status = ?3, resolution = ?4, updated_at = ?5, \
             lease_owner = NULL, lease_until = NULL \
             WHERE id = ?1 AND lease_owner = ?2 AND status = 'PENDING'",
        )?
        .execute(params![id, owner, status.as_str(), resolution, now])?;
    Ok(n == 1)
}

/// Records a send that did not settle the item: one more attempt, the error, the next try,
/// and the lease released. Guarded by the owner like [`close`].
pub fn reschedule(
    tx: &Connection,
    id: i64,
    owner: &str,
    next_attempt_at: i64,
    error: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached(
            "UPDATE reversal_queue SET attempts = attempts + 1, next_attempt_at = ?3, \
             last_error = ?4, updated_at = ?5, lease_owner = NULL, lease_until = NULL \
             WHERE id = ?1 AND lease_owner = ?2 AND status = 'PENDING'",
        )?
        .execute(params![id, owner, next_attempt_at, error, now])?;
    Ok(n == 1)
}

/// Gives a lease back without sending (not enough lease left for a safe send).
pub fn release(tx: &Connection, id: i64, owner: &str) -> rusqlite::Result<bool> {
    let n = tx
        .prepare_cached(
            "UPDATE reversal_queue SET lease_owner = NULL, lease_until = NULL \
             WHERE id = ?1 AND lease_owner = ?2 AND status = 'PENDING'",
        )?
        .execute(params![id, owner])?;
    Ok(n == 1)
}

/// Appends to an item's own journal (`queue_events`).
pub fn record_event(
    tx: &Connection,
    item_id: i64,
    at: i64,
    actor: &str,
    what: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO queue_events (item_id, at, actor, what, detail) VALUES (?1,?2,?3,?4,?5)",
    )?
    .execute(params![item_id, at, actor, what, detail])?;
    Ok(())
}

/// One entry of an item's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEvent {
    /// Epoch ms.
    pub at: i64,
    /// Who acted.
    pub actor: String,
    /// `RETRY`, `HELD`, `DONE`, `CONVERTED`, `DEAD`, `ABANDONED`.
    pub what: String,
    /// Details (error, result code, reason).
    pub detail: Option<String>,
}

/// An item's journal, oldest first.
pub fn events(conn: &Connection, item_id: i64) -> rusqlite::Result<Vec<QueueEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, actor, what, detail FROM queue_events WHERE item_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([item_id], |r| {
        Ok(QueueEvent {
            at: r.get(0)?,
            actor: r.get(1)?,
            what: r.get(2)?,
            detail: r.get(3)?,
        })
    })?;
    rows.collect()
}

fn get_in(conn: &Connection, id: i64) -> rusqlite::Result<Option<QueueItem>> {
    conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM reversal_queue WHERE id = ?1"
    ))?
    .query_row([id], item_from_row)
    .optional()
}

/// One item.
pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<QueueItem>> {
    get_in(conn, id)
}

/// Items for the back office, oldest first: the open ones (PENDING) and the dead letters, or
/// with `all` every item ever queued.
pub fn list(conn: &Connection, all: bool) -> rusqlite::Result<Vec<QueueItem>> {
    let filter = if all {
        ""
    } else {
        "WHERE status IN ('PENDING','DEAD')"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM reversal_queue {filter} ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([], item_from_row)?;
    rows.collect()
}

/// The items of one payment, oldest first.
pub fn of_payment(conn: &Connection, payment_request_id: &str) -> rusqlite::Result<Vec<QueueItem>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ITEM_COLUMNS} FROM reversal_queue WHERE payment_request_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([payment_request_id], item_from_row)?;
    rows.collect()
}

/// When the worker should look again: the earliest moment a pending item is due and not
/// leased (a leased item counts from its lease's end).
pub fn next_wakeup(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT min(max(next_attempt_at, ifnull(lease_until + 1, 0))) FROM reversal_queue \
         WHERE status = 'PENDING'",
    )?
    .query_row([], |r| r.get(0))
}

/// Makes every pending item due at `now` (the gateway is back, or the back office asked for
/// a replay of everything). Returns how many moved.
pub fn make_due(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE reversal_queue SET next_attempt_at = ?1 \
         WHERE status = 'PENDING' AND next_attempt_at > ?1",
    )?
    .execute([now])
}

/// The queue's size for `/healthz` and the back office.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Items waiting to be delivered.
    pub pending: i64,
    /// Dead letters (a human must act).
    pub dead: i64,
    /// Enqueue time of the oldest pending item, epoch ms.
    pub oldest_pending_at: Option<i64>,
}

/// Counts pending and dead items and finds the oldest pending one.
pub fn depth(conn: &Connection) -> rusqlite::Result<Depth> {
    conn.prepare_cached(
        "SELECT count(*) FILTER (WHERE status = 'PENDING'), count(*) FILTER (WHERE status = 'DEAD'), \
         min(created_at) FILTER (WHERE status = 'PENDING') \
         FROM reversal_queue WHERE status IN ('PENDING','DEAD')",
    )?
    .query_row([], |r| {
        Ok(Depth {
            pending: r.get(0)?,
            dead: r.get(1)?,
            oldest_pending_at: r.get(2)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::machine::State;
    use crate::domain::money::{Amount, Currency};
    use crate::store::payments::{self, Change, NewPayment, NewQueueItem};
    use crate::store::Store;

    /// A payment in CANCEL_QUEUED with one cancel item due at `due`.
    fn queued(c: &mut Connection, id: &str, due: i64) -> i64 {
        let new = NewPayment {
            order_ref: None,
            amount: Amount::from_minor(1234, Currency::from_code("CNY").unwrap()).unwrap(),
            state: State::Cancelling,
            code_masked: None,
            terminal_time: "2026-11-21T10:15:30+08:00".into(),
            pay_expires_at: None,
        };
        payments::create(c, &new, 1, |_| id.to_string()).unwrap();
        let ch = Change {
            to: Some(State::CancelQueued),
            cause: "queued".into(),
            enqueue: Some(NewQueueItem {
                kind: ItemKind::Cancel,
                refund_request_id: None,
                payload_version: 1,
                payload: format!(r#"{{"kind":"CANCEL","payment_request_id":"{id}"}}"#),
                next_attempt_at: due,
            }),
            ..Default::default()
        };
        payments::apply(c, id, State::Cancelling, &ch, 2)
            .unwrap()
            .unwrap();
        c.query_row(
            "SELECT id FROM reversal_queue WHERE payment_request_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn only_due_unleased_items_are_leased_and_only_once() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            let a = queued(c, "A", 100);
            let b = queued(c, "B", 50);
            let _later = queued(c, "C", 10_000);
            let got = lease_due(c, "w1", 100, 1100, 10)?;
            assert_eq!(got.iter().map(|i| i.id).collect::<Vec<_>>(), vec![b, a]);
            assert!(got.iter().all(|i| i.lease_owner.as_deref() == Some("w1")));
            // A second replayer finds nothing while the leases hold...
            assert!(lease_due(c, "w2", 500, 1500, 10)?.is_empty());
            // ...and retakes both once they expire.
            let again = lease_due(c, "w2", 1101, 2101, 10)?;
            assert_eq!(again.len(), 2);
            // The first owner lost its lease: it can neither close nor reschedule.
            assert!(!close(c, a, "w1", ItemStatus::Done, "ok", 1200)?);
            assert!(!reschedule(c, a, "w1", 5000, "timeout", 1200)?);
            assert!(close(c, a, "w2", ItemStatus::Done, "ok", 1200)?);
            assert!(!close(c, a, "w2", ItemStatus::Done, "twice", 1201)?);
            assert_eq!(get(c, a)?.unwrap().status, ItemStatus::Done);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn reschedule_counts_the_attempt_and_frees_the_lease() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            let a = queued(c, "A", 0);
            lease_due(c, "w", 10, 1000, 1)?;
            assert!(reschedule(c, a, "w", 5000, "no answer", 20)?);
            let it = get(c, a)?.unwrap();
            assert_eq!(
                (
                    it.attempts,
                    it.next_attempt_at,
                    it.lease_owner,
                    it.last_error.as_deref()
                ),
                (1, 5000, None, Some("no answer"))
            );
            assert_eq!(next_wakeup(c)?, Some(5000));
            assert!(lease_due(c, "w", 4999, 9000, 1)?.is_empty());
            assert_eq!(make_due(c, 30)?, 1);
            assert_eq!(lease_due(c, "w", 30, 9000, 1)?.len(), 1);
            // While leased, the wake-up is the lease's end.
            assert_eq!(next_wakeup(c)?, Some(9001));
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn lease_one_explains_refusals() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            let a = queued(c, "A", 10_000);
            assert_eq!(lease_one(c, 999, "w", 0, 10)?, Err(LeaseRefused::NotFound));
            // Not due yet, but a by-id replay takes it.
            let it = lease_one(c, a, "w", 0, 100)?.unwrap();
            assert_eq!(it.id, a);
            assert_eq!(
                lease_one(c, a, "x", 50, 150)?,
                Err(LeaseRefused::Leased {
                    owner: "w".into(),
                    until: 100
                })
            );
            assert!(close(c, a, "w", ItemStatus::Abandoned, "by hand", 60)?);
            assert_eq!(
                lease_one(c, a, "x", 200, 300)?,
                Err(LeaseRefused::Closed(ItemStatus::Abandoned))
            );
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn depth_counts_pending_and_dead() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            assert_eq!(depth(c)?, Depth::default());
            let a = queued(c, "A", 0);
            queued(c, "B", 0);
            lease_one(c, a, "w", 0, 10)?.unwrap();
            close(c, a, "w", ItemStatus::Dead, "refused", 5)?;
            let d = depth(c)?;
            assert_eq!((d.pending, d.dead, d.oldest_pending_at), (1, 1, Some(2)));
            assert_eq!(list(c, false)?.len(), 2);
            record_event(c, a, 5, "w", "DEAD", "refused")?;
            assert_eq!(events(c, a)?[0].what, "DEAD");
            Ok(())
        })
        .unwrap();
    }
}
