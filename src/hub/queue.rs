//! The hub's own store-and-forward queue: every cancel and refund it owes upstream is a row
//! committed before it is first sent; a sender holds the payment's row lock and the item's
//! lease; the stored body is sent identically every time; the answer settles the item in the
//! same transaction (done, rescheduled with jittered backoff, replaced by a full refund when
//! the cancel window has passed, or a dead letter that puts the payment in `NEEDS_ATTENTION`).

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;

use super::service::{event, lock_payment, mark_attention, set_lock_timeout, Hub, PaymentRow};
use super::upstream::Answer;
use crate::engine::{backoff, failpoint};
use crate::gateway::client::Operation;

/// Retry rules of the queue.
#[derive(Debug, Clone)]
pub struct QueueRules {
    /// For this long after an item is created, resends are `retry_min..=retry_max` apart.
    pub retry_window: Duration,
    /// See `retry_window`.
    pub retry_min: Duration,
    /// See `retry_window`.
    pub retry_max: Duration,
    /// After the window: this, doubling …
    pub backoff_initial: Duration,
    /// … up to this.
    pub backoff_max: Duration,
    /// Attempts after which an item is a dead letter.
    pub max_attempts: u32,
    /// How long a lease holds (longer than one upstream call).
    pub lease: Duration,
}

/// The delay before the next attempt, from the terminal's own retry delays
/// (`engine::backoff`): inside the retry window a pause drawn in `retry_min..=retry_max`,
/// then `backoff_initial · 2^late_attempts` capped at `backoff_max`, shortened by jitter of
/// at most a quarter (so the cap holds).
pub fn next_delay(
    rules: &QueueRules,
    age: Duration,
    late_attempts: u32,
    rng: &mut impl rand::Rng,
) -> Duration {
    if age < rules.retry_window {
        return backoff::between(rules.retry_min, rules.retry_max, rng.gen());
    }
    backoff::jittered(
        backoff::backoff(late_attempts, rules.backoff_initial, rules.backoff_max),
        rng.gen(),
    )
}

/// One queue row.
#[derive(Debug, Clone)]
pub struct QueueItem {
    /// Row id.
    pub id: i64,
    /// `cancel` or `refund`.
    pub kind: String,
    /// The payment.
    pub payment_request_id: String,
    /// The refund, for `refund`.
    pub refund_request_id: Option<String>,
    /// The identical body.
    pub body: Vec<u8>,
    /// `terminal`, `active`, `advice` or `hub`.
    pub origin: String,
    /// `PENDING`, `DONE`, `DEAD`.
    pub status: String,
    /// Sends so far.
    pub attempts: i32,
    /// Sends after the retry window.
    pub late_attempts: i32,
    /// Age.
    pub age: Duration,
    /// Lease holder.
    pub lease_owner: Option<String>,
    /// Whether the lease is still running.
    pub leased: bool,
    /// The recorded final answer.
    pub answer: Option<Vec<u8>>,
}

impl QueueItem {
    /// Whether the hub owns delivery to the end (its own decision, or the switch mode): then a
    /// passed cancel window becomes a refund and any other refusal a dead letter.
    pub fn hub_owned(&self) -> bool {
        self.origin != "terminal"
    }
}

const ITEM_COLUMNS: &str =
    "id, kind, payment_request_id, refund_request_id, body, origin, status, \
     attempts, late_attempts, extract(epoch from now() - created_at)::float8, lease_owner, \
     coalesce(lease_until > now(), false), answer";

fn item_from_row(r: &tokio_postgres::Row) -> QueueItem {
    QueueItem {
        id: r.get(0),
        kind: r.get(1),
        payment_request_id: r.get(2),
        refund_request_id: r.get(3),
        body: r.get(4),
        origin: r.get(5),
        status: r.get(6),
        attempts: r.get(7),
        late_attempts: r.get(8),
        age: Duration::from_secs_f64(r.get::<_, f64>(9).max(0.0)),
        lease_owner: r.get(10),
        leased: r.get(11),
        answer: r.get(12),
    }
}

/// Adds a cancel or refund the hub owes (or finds the one already there, reopening one of the
/// terminal's that was answered `F` before, since the terminal asks again; what the hub owns
/// itself is never reopened); returns its id.
pub async fn enqueue(
    tx: &Transaction<'_>,
    kind: &str,
    payment_request_id: &str,
    refund_request_id: Option<&str>,
    body: &[u8],
    origin: &str,
) -> anyhow::Result<i64> {
    let inserted = tx
        .query_opt(
            "INSERT INTO hub_queue (kind, payment_request_id, refund_request_id, body, origin) \
             VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING RETURNING id",
            &[
                &kind,
                &payment_request_id,
                &refund_request_id,
                &body,
                &origin,
            ],
        )
        .await?;
    if let Some(r) = inserted {
        return Ok(r.get(0));
    }
    let row = if kind == "cancel" {
        tx.query_one(
            "SELECT id FROM hub_queue WHERE kind = 'cancel' AND payment_request_id = $1",
            &[&payment_request_id],
        )
        .await?
    } else {
        tx.query_one(
            "SELECT id FROM hub_queue WHERE kind = 'refund' AND refund_request_id = $1",
            &[&refund_request_id],
        )
        .await?
    };
    let id: i64 = row.get(0);
    tx.execute(
        "UPDATE hub_queue SET status = 'PENDING', next_at = now(), updated_at = now() \
         WHERE id = $1 AND status = 'DONE' AND answer IS NULL AND origin = 'terminal'",
        &[&id],
    )
    .await?;
    Ok(id)
}

/// Who is sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// In line, for the terminal that asked (takes a free lease).
    Terminal,
    /// The queue worker (holds the lease it took).
    Worker,
}

/// What a delivery did.
#[derive(Debug)]
pub enum Delivery {
    /// Sent; the answer is recorded.
    Sent(Answer),
    /// Already answered; the recorded answer.
    Recorded(Vec<u8>),
    /// Someone else holds it right now (or it is a dead letter with no answer).
    Busy,
}

/// Sends one item under its payment's row lock and settles it in the same transaction.
pub async fn deliver(hub: &Hub, item_id: i64, caller: Caller) -> anyhow::Result<Delivery> {
    let mut client = hub.pool.get().await?;
    let tx = client.transaction().await?;
    set_lock_timeout(&tx, hub.rules.lock_timeout).await?;
    let pid: String = tx
        .query_one(
            "SELECT payment_request_id FROM hub_queue WHERE id = $1",
            &[&item_id],
        )
        .await?
        .get(0);
    let Ok(Some(payment)) = lock_payment(&tx, &pid).await else {
        return Ok(Delivery::Busy);
    };
    let item = tx
        .query_one(
            &format!("SELECT {ITEM_COLUMNS} FROM hub_queue WHERE id = $1 FOR UPDATE"),
            &[&item_id],
        )
        .await
        .map(|r| item_from_row(&r))?;
    if item.status != "PENDING" {
        tx.commit().await?;
        return Ok(item.answer.map_or(Delivery::Busy, Delivery::Recorded));
    }
    let mine = item.lease_owner.as_deref() == Some(hub.instance.as_str());
    let free = !item.leased || mine;
    if !free || (caller == Caller::Worker && !mine) {
        tx.commit().await?;
        return Ok(Delivery::Busy);
    }
    let op = if item.kind == "cancel" {
        Operation::Cancel
    } else {
        Operation::Refund
    };
    if caller == Caller::Terminal {
        failpoint::hit("hub_upstream_in_flight");
    }
    let answer = hub.upstream.call(op, &item.body).await;
    if caller == Caller::Worker {
        failpoint::hit("hub_queue_sent");
    }
    settle(hub, &tx, &item, &payment, &answer).await?;
    tx.commit()
        .await
        .context("cannot commit the queue answer")?;
    if caller == Caller::Terminal {
        failpoint::hit("hub_answer_recorded");
    }
    // The hub's own cancel, refused for its window, is the hub's full refund to make (now, or
    // once the upstream gives the paymentId): a terminal told of the refusal would refund as
    // well, so it hears "unknown" and asks again.
    if let Answer::Failed { code, .. } = &answer {
        if item.kind == "cancel" && item.hub_owned() && code == "CANCEL_WINDOW_EXCEED" {
            return Ok(Delivery::Sent(Answer::Unknown {
                why: "the cancel window has passed; the hub refunds this payment in full".into(),
                code: None,
            }));
        }
    }
    Ok(Delivery::Sent(answer))
}

/// The deterministic id of the full refund that replaces a cancel refused for its window:
/// identical from every instance, on every resend.
pub fn window_refund_id(payment_request_id: &str) -> String {
    let h = Sha256::digest(payment_request_id.as_bytes());
    let hex: String = h.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("HUBRF{hex}")
}

async fn finish(
    tx: &Transaction<'_>,
    item: &QueueItem,
    status: &str,
    answer: Option<&Vec<u8>>,
    error: Option<&str>,
) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE hub_queue SET status = $2, answer = $3, last_error = coalesce($4, last_error), \
         attempts = attempts + 1, lease_owner = NULL, lease_until = NULL, updated_at = now() \
         WHERE id = $1",
        &[&item.id, &status, &answer, &error],
    )
    .await?;
    Ok(())
}

/// Records an answer for an item (inside the delivering transaction).
async fn settle(
    hub: &Hub,
    tx: &Transaction<'_>,
    item: &QueueItem,
    payment: &PaymentRow,
    answer: &Answer,
) -> anyhow::Result<()> {
    let inst = hub.instance.as_str();
    let pid = payment.id.as_str();
    match (item.kind.as_str(), answer) {
        ("cancel", Answer::Success(body)) => {
            finish(tx, item, "DONE", Some(body), None).await?;
            tx.execute(
                "UPDATE hub_payments SET state = 'CANCELLED', cancel_answer = $2, updated_at = now() \
                 WHERE payment_request_id = $1",
                &[&pid, &body],
            )
            .await?;
            event(
                tx,
                inst,
                pid,
                "cancel_answered",
                Some(&payment.state),
                Some("CANCELLED"),
                Some("SUCCESS"),
                Some(&item.origin),
            )
            .await?;
        }
        ("cancel", Answer::Failed { code, body }) if code == "CANCEL_WINDOW_EXCEED" => {
            if !item.hub_owned() {
                // The terminal got the verdict and refunds on its own.
                finish(tx, item, "DONE", None, Some(code)).await?;
                tx.execute(
                    "UPDATE hub_payments SET state = 'SUCCEEDED', result_code = $2, updated_at = now() \
                     WHERE payment_request_id = $1",
                    &[&pid, &code],
                )
                .await?;
                event(
                    tx,
                    inst,
                    pid,
                    "cancel_refused",
                    Some(&payment.state),
                    Some("SUCCEEDED"),
                    Some(code),
                    Some("the terminal refunds"),
                )
                .await?;
                return Ok(());
            }
            let _ = body;
            // The refund needs the upstream's paymentId: ask for it if no answer carried it yet.
            let payment_id = match &payment.payment_id {
                Some(id) => Some(id.clone()),
                None => hub.upstream.inquiry_payment(pid).await.facts.payment_id,
            };
            let (Some(amount), Some(currency)) = (payment.amount_minor, &payment.currency) else {
                finish(tx, item, "DEAD", None, Some(code)).await?;
                mark_attention(
                    tx,
                    inst,
                    payment,
                    "cancel window passed and the hub holds no amount for this payment: refund by hand",
                )
                .await?;
                return Ok(());
            };
            // Not learnt yet (the upstream did not answer the inquiry): the reversal is not
            // settled, so the cancel stays owed and asks again on its next attempt.
            let Some(payment_id) = payment_id else {
                return retry_later(
                    hub,
                    tx,
                    item,
                    payment,
                    "cancel window passed; the upstream has not given the paymentId the refund needs yet",
                )
                .await;
            };
            let rid = window_refund_id(pid);
            let due = amount - payment.refunded_minor;
            let refund_body = serde_json::to_vec(&json!({
                "refundRequestId": rid,
                "paymentId": payment_id,
                "refundAmount": {"currency": currency, "value": due.to_string()},
                "refundReason": "cancel window passed",
            }))?;
            tx.execute(
                "INSERT INTO hub_refunds (refund_request_id, payment_request_id, client_id, body_hash, \
                 forward_body, amount_minor, currency, state, origin) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,'REFUNDING','hub') ON CONFLICT DO NOTHING",
                &[&rid, &pid, &payment.client_id, &Sha256::digest(&refund_body).to_vec(), &refund_body, &due, &currency],
            )
            .await?;
            enqueue(tx, "refund", pid, Some(&rid), &refund_body, "hub").await?;
            finish(tx, item, "DONE", None, Some(code)).await?;
            tx.execute(
                "UPDATE hub_payments SET state = 'REFUNDING', payment_id = coalesce(payment_id, $2), \
                 updated_at = now() WHERE payment_request_id = $1",
                &[&pid, &payment_id],
            )
            .await?;
            event(
                tx,
                inst,
                pid,
                "cancel_window_passed",
                Some(&payment.state),
                Some("REFUNDING"),
                Some(code),
                Some(&rid),
            )
            .await?;
        }
        ("cancel", Answer::Failed { code, .. })
            if code == "ORDER_NOT_EXIST"
                && payment
                    .pay_may_arrive_until(hub.rules.expiry_margin)
                    .is_some_and(|t| super::service::now_ms() < t) =>
        {
            // No record upstream yet, but the forwarded pay may still arrive (a killed
            // instance's request in the network): the cancel stays owed until it cannot.
            retry_later(
                hub,
                tx,
                item,
                payment,
                "ORDER_NOT_EXIST: the pay may still arrive",
            )
            .await?;
        }
        ("cancel", Answer::Failed { code, body }) if code == "ORDER_NOT_EXIST" => {
            // The upstream has no such payment: the pay never arrived, nobody was charged.
            finish(tx, item, "DONE", Some(body), Some(code)).await?;
            tx.execute(
                "UPDATE hub_payments SET state = 'FAILED', result_code = $2, updated_at = now() \
                 WHERE payment_request_id = $1",
                &[&pid, &code],
            )
            .await?;
            event(
                tx,
                inst,
                pid,
                "cancel_answered",
                Some(&payment.state),
                Some("FAILED"),
                Some(code),
                Some("the pay never arrived upstream"),
            )
            .await?;
        }
        ("cancel", Answer::Failed { code, body }) => {
            // The terminal got this verdict too (and holds the payment for a human); a cancel
            // the hub owns is a dead letter.
            let (status, answer) = if item.hub_owned() {
                ("DEAD", None)
            } else {
                ("DONE", Some(body))
            };
            finish(tx, item, status, answer, Some(code)).await?;
            mark_attention(
                tx,
                inst,
                payment,
                &format!("cancel refused upstream: {code}"),
            )
            .await?;
        }
        ("refund", Answer::Success(body)) => {
            finish(tx, item, "DONE", Some(body), None).await?;
            let rid = item.refund_request_id.as_deref().unwrap_or_default();
            let amount: i64 = tx
                .query_one(
                    "UPDATE hub_refunds SET state = 'REFUNDED', answer = $2, updated_at = now() \
                     WHERE refund_request_id = $1 RETURNING amount_minor",
                    &[&rid, &body],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            let total = payment.refunded_minor + amount;
            let to = if Some(total) >= payment.amount_minor {
                "REFUNDED"
            } else {
                "PARTIALLY_REFUNDED"
            };
            tx.execute(
                "UPDATE hub_payments SET refunded_minor = $2, state = $3, updated_at = now() WHERE payment_request_id = $1",
                &[&pid, &total, &to],
            )
            .await?;
            event(
                tx,
                inst,
                pid,
                "refund_answered",
                Some(&payment.state),
                Some(to),
                Some("SUCCESS"),
                Some(rid),
            )
            .await?;
        }
        ("refund", Answer::Failed { code, body }) => {
            let rid = item.refund_request_id.as_deref().unwrap_or_default();
            tx.execute(
                "UPDATE hub_refunds SET state = 'FAILED', answer = $2, result_code = $3, updated_at = now() \
                 WHERE refund_request_id = $1",
                &[&rid, &body, &code],
            )
            .await?;
            if item.hub_owned() {
                finish(tx, item, "DEAD", None, Some(code)).await?;
                mark_attention(
                    tx,
                    inst,
                    payment,
                    &format!("refund refused upstream: {code}"),
                )
                .await?;
            } else {
                finish(tx, item, "DONE", Some(body), Some(code)).await?;
                event(
                    tx,
                    inst,
                    pid,
                    "refund_refused",
                    None,
                    None,
                    Some(code),
                    Some(rid),
                )
                .await?;
            }
        }
        (_, Answer::Unknown { why, .. }) => retry_later(hub, tx, item, payment, why).await?,
        (kind, _) => anyhow::bail!("unknown queue item kind {kind:?}"),
    }
    Ok(())
}

/// Reschedules an item whose answer settled nothing, with the queue's backoff; after
/// `max_attempts` it is a dead letter and its payment needs a human.
async fn retry_later(
    hub: &Hub,
    tx: &Transaction<'_>,
    item: &QueueItem,
    payment: &PaymentRow,
    why: &str,
) -> anyhow::Result<()> {
    let attempts = item.attempts as u32 + 1;
    if attempts >= hub.rules.queue.max_attempts {
        finish(tx, item, "DEAD", None, Some(why)).await?;
        let reason = format!(
            "{} not confirmed after {attempts} attempts: {why}",
            item.kind
        );
        mark_attention(tx, hub.instance.as_str(), payment, &reason).await?;
        return Ok(());
    }
    let late = item.age >= hub.rules.queue.retry_window;
    let delay = next_delay(
        &hub.rules.queue,
        item.age,
        item.late_attempts as u32,
        &mut rand::thread_rng(),
    );
    tx.execute(
        "UPDATE hub_queue SET attempts = attempts + 1, late_attempts = late_attempts + $2, \
         next_at = now() + make_interval(secs => $3), last_error = $4, lease_owner = NULL, \
         lease_until = NULL, updated_at = now() WHERE id = $1",
        &[&item.id, &i32::from(late), &delay.as_secs_f64(), &why],
    )
    .await?;
    Ok(())
}

/// Leases up to `limit` due items for this instance (`FOR UPDATE SKIP LOCKED`: two instances
/// never take the same item) and returns their ids.
pub async fn lease_due(hub: &Hub, limit: i64) -> anyhow::Result<Vec<i64>> {
    let client = hub.pool.get().await?;
    let rows = client
        .query(
            "UPDATE hub_queue SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), \
             updated_at = now() WHERE id IN (SELECT id FROM hub_queue WHERE status = 'PENDING' \
             AND next_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
             ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING id",
            &[&hub.instance, &hub.rules.queue.lease.as_secs_f64(), &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Pending depth, oldest age and dead letters (health, metrics).
pub async fn stats(
    client: &impl tokio_postgres::GenericClient,
) -> anyhow::Result<(i64, Duration, i64)> {
    let r = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'PENDING'), \
             coalesce(extract(epoch from now() - min(created_at) FILTER (WHERE status = 'PENDING')), 0)::float8, \
             count(*) FILTER (WHERE status = 'DEAD') FROM hub_queue",
            &[],
        )
        .await?;
    Ok((
        r.get(0),
        Duration::from_secs_f64(r.get::<_, f64>(1).max(0.0)),
        r.get(2),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> QueueRules {
        QueueRules {
            retry_window: Duration::from_secs(60),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(600),
            max_attempts: 200,
            lease: Duration::from_secs(30),
        }
    }

    #[test]
    fn inside_the_window_resends_are_five_to_ten_seconds_apart() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let d = next_delay(&rules(), Duration::from_secs(10), 0, &mut rng);
            assert!(
                (Duration::from_secs(5)..=Duration::from_secs(10)).contains(&d),
                "{d:?}"
            );
        }
    }

    #[test]
    fn after_the_window_the_backoff_doubles_to_its_ceiling_with_jitter() {
        let mut rng = rand::thread_rng();
        let late = Duration::from_secs(61);
        let d0 = next_delay(&rules(), late, 0, &mut rng);
        assert!(
            (Duration::from_millis(22_500)..=Duration::from_secs(30)).contains(&d0),
            "{d0:?}"
        );
        let d2 = next_delay(&rules(), late, 2, &mut rng);
        assert!(
            (Duration::from_secs(90)..=Duration::from_secs(120)).contains(&d2),
            "{d2:?}"
        );
        // The ceiling holds: jitter only ever shortens.
        for n in [10, 30, 1000, u32::MAX] {
            let d = next_delay(&rules(), late, n, &mut rng);
            assert!(
                d <= Duration::from_secs(600) && d >= Duration::from_secs(450),
                "{d:?}"
            );
        }
        // Jitter: not every delay is the same.
        let set: std::collections::HashSet<_> = (0..50)
            .map(|_| next_delay(&rules(), late, 1, &mut rng))
            .collect();
        assert!(set.len() > 1);
    }

    #[test]
    fn the_window_refund_id_is_stable_and_short() {
        let a = window_refund_id("20261121101530T0001000000123400000042X7");
        assert_eq!(
            a,
            window_refund_id("20261121101530T0001000000123400000042X7")
        );
        assert_ne!(a, window_refund_id("other"));
        assert!(a.len() <= 64);
    }
}
