//! The hub's background work, leased so any instance may do it and a killed one leaves
//! nothing another does not finish: the active-cancel sweep (seed: 主动取消) and the queue.
//!
//! Active cancel: a pay still `RECEIVED` (the upstream has not approved it), with no cancel
//! from its terminal, `active_cancel_after` after it arrived, is leased; the hub inquires once
//! more under the payment's row lock; an approval (or a final failure / cancellation) is
//! applied and nothing is cancelled; otherwise the cancel is queued in the same transaction
//! and the queue delivers it. An approved pay is never cancelled by the hub on its own.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::queue::{self, Caller};
use super::service::{apply_status, event, lock_payment, set_lock_timeout, Hub};
use crate::engine::failpoint;
use crate::gateway::Inquiry;

/// Timings of the background work.
#[derive(Debug, Clone)]
pub struct WorkerRules {
    /// How often to look for work.
    pub poll: Duration,
    /// How long after a pay arrived the hub may cancel it.
    pub active_cancel_after: Duration,
    /// How long an active-cancel lease holds.
    pub lease: Duration,
}

impl WorkerRules {
    /// The rules of a validated `hub.toml`.
    pub fn from_config(config: &super::config::HubConfig) -> WorkerRules {
        WorkerRules {
            poll: config.flow.inquiry_interval.0,
            active_cancel_after: config.hub.active_cancel_after.0,
            lease: config.flow.lease.0,
        }
    }

    /// How long the worker may go without a pass before `/healthz` says it is stuck: three
    /// polls and 30 s for a slow pass.
    pub fn stale_after(&self) -> Duration {
        self.poll
            .saturating_mul(3)
            .saturating_add(Duration::from_secs(30))
    }
}

/// What one active-cancel decision was (metrics, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Queued a cancel.
    Cancel,
    /// The last inquiry found the pay approved: never cancelled.
    Approved,
    /// The pay failed or was cancelled upstream; nothing to do.
    Final,
    /// `PENDING`: asked again later.
    Postponed,
    /// The payment moved meanwhile (terminal cancel, answer, other instance).
    Skipped,
}

/// Leases due active-cancel candidates; returns their ids.
pub async fn lease_candidates(
    hub: &Hub,
    rules: &WorkerRules,
    limit: i64,
) -> anyhow::Result<Vec<String>> {
    let client = hub.pool.get().await?;
    let rows = client
        .query(
            "UPDATE hub_payments SET ac_lease_owner = $1, ac_lease_until = now() + make_interval(secs => $2) \
             WHERE payment_request_id IN (SELECT payment_request_id FROM hub_payments \
               WHERE state = 'RECEIVED' AND terminal_cancel_at IS NULL \
               AND received_at < now() - make_interval(secs => $3) \
               AND (ac_lease_until IS NULL OR ac_lease_until < now()) \
               ORDER BY received_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING payment_request_id",
            &[
                &hub.instance,
                &rules.lease.as_secs_f64(),
                &rules.active_cancel_after.as_secs_f64(),
                &limit,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Decides one leased candidate.
pub async fn decide(hub: &Hub, id: &str) -> anyhow::Result<Decision> {
    let mut client = hub.pool.get().await?;
    let tx = client.transaction().await?;
    set_lock_timeout(&tx, hub.rules.lock_timeout).await?;
    let Some(row) = lock_payment(&tx, id).await? else {
        return Ok(Decision::Skipped);
    };
    let owner: Option<String> = tx
        .query_one(
            "SELECT ac_lease_owner FROM hub_payments WHERE payment_request_id = $1",
            &[&id],
        )
        .await?
        .get(0);
    if row.state != "RECEIVED" || row.terminal_cancelled || owner.as_deref() != Some(&hub.instance)
    {
        tx.commit().await?;
        return Ok(Decision::Skipped);
    }
    // One more inquiry, right before deciding (through the gateway abstraction).
    let inquiry = hub.upstream.inquiry_payment(id).await;
    let payment_id = inquiry.facts.payment_id.clone();
    // (the paymentStatus to apply, what the decision rests on)
    let (status, why): (&str, String) = match &inquiry.answer {
        Inquiry::Paid => ("SUCCESS", String::new()),
        Inquiry::Declined { code, .. } => ("FAIL", code.clone()),
        Inquiry::Closed => ("CANCELLED", String::new()),
        Inquiry::Pending { status } if status == "PENDING" => ("PENDING", String::new()),
        Inquiry::Pending { status } => ("", format!("paymentStatus {status}")),
        Inquiry::NotFound => ("", "ORDER_NOT_EXIST".into()),
        Inquiry::Failed { code } => ("", code.clone()),
        Inquiry::Unknown { why } => ("", why.clone()),
    };
    let decision = match status {
        "SUCCESS" | "FAIL" | "CANCELLED" => {
            apply_status(
                &tx,
                &hub.instance,
                &row,
                status,
                payment_id.as_deref(),
                "active_cancel_inquiry",
            )
            .await?;
            if status == "SUCCESS" {
                Decision::Approved
            } else {
                Decision::Final
            }
        }
        "PENDING" => Decision::Postponed,
        _ => {
            let body = serde_json::to_vec(&serde_json::json!({ "paymentRequestId": id }))?;
            tx.execute(
                "UPDATE hub_payments SET state = 'CANCELLING', active_cancel_at = now(), \
                 payment_id = coalesce(payment_id, $2), updated_at = now() WHERE payment_request_id = $1",
                &[&id, &payment_id],
            )
            .await?;
            queue::enqueue(&tx, "cancel", id, None, &body, "active").await?;
            let basis = format!("last inquiry: {why}");
            event(
                &tx,
                &hub.instance,
                id,
                "active_cancel",
                Some("RECEIVED"),
                Some("CANCELLING"),
                None,
                Some(&basis),
            )
            .await?;
            Decision::Cancel
        }
    };
    tx.commit().await?;
    hub.metrics.active_cancel(match decision {
        Decision::Cancel => "cancel",
        Decision::Approved => "approved",
        Decision::Final => "final",
        Decision::Postponed => "postponed",
        Decision::Skipped => "skipped",
    });
    tracing::info!(payment_request_id = id, ?decision, "active-cancel decision");
    Ok(decision)
}

/// One pass: active-cancel candidates, then due queue items. Returns how much it did.
pub async fn tick(hub: &Hub, rules: &WorkerRules) -> anyhow::Result<usize> {
    let mut done = 0;
    let ids = lease_candidates(hub, rules, 50).await?;
    if !ids.is_empty() {
        failpoint::hit("hub_active_cancel_leased");
    }
    for id in ids {
        decide(hub, &id).await?;
        done += 1;
    }
    for item in queue::lease_due(hub, 50).await? {
        queue::deliver(hub, item, Caller::Worker).await?;
        done += 1;
    }
    Ok(done)
}

/// Runs [`tick`] every `poll` until `stop` fires; errors are logged and retried.
pub async fn run(
    hub: Arc<Hub>,
    rules: WorkerRules,
    stop: CancellationToken,
    alive: Arc<std::sync::atomic::AtomicI64>,
) {
    loop {
        match tick(&hub, &rules).await {
            Ok(n) if n > 0 => tracing::debug!(done = n, "hub worker pass"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "hub worker pass failed"),
        }
        alive.store(
            super::service::now_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(rules.poll) => {}
        }
    }
}
