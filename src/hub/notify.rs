//! Notifications from the upstream, at the hub: AMS notifyPayment (verified with the gateway's
//! key over the raw body, the client id checked) or, with an `alipay_cn` upstream, the
//! mainland form (verified over its sorted fields, the `app_id` checked); either way amount and
//! currency compared with the recorded pay, applied once with the same compare-and-set as
//! inquiry answers, recorded, then acknowledged.

use serde::Deserialize;

use super::service::{
    apply_status, lock_payment, mark_attention, result_body, set_lock_timeout, Hub,
};
use crate::gateway::alipay_cn::notify::{
    self as cn_notify, Notification as CnNotification, TradeStatus,
};
use crate::gateway::client::verify_notification;
use crate::gateway::wire::WireAmount;

/// What a notification did (the answer and the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyVerdict {
    /// Applied to an open payment.
    Applied,
    /// Verified but nothing to change (duplicate, late, or not a final status).
    Unchanged,
    /// For a payment the hub does not know: kept, acknowledged.
    UnknownPayment,
    /// Amount or currency differ: the payment needs a human.
    Mismatch,
    /// Refused: signature, client id, body.
    Rejected,
    /// Not recorded (database): not acknowledged, the upstream retries.
    Error,
}

impl NotifyVerdict {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            NotifyVerdict::Applied => "applied",
            NotifyVerdict::Unchanged => "unchanged",
            NotifyVerdict::UnknownPayment => "unknown_payment",
            NotifyVerdict::Mismatch => "mismatch",
            NotifyVerdict::Rejected => "rejected",
            NotifyVerdict::Error => "error",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    payment_request_id: String,
    #[serde(default)]
    payment_id: Option<String>,
    #[serde(default)]
    payment_status: Option<String>,
    #[serde(default)]
    payment_amount: Option<WireAmount>,
    #[serde(default)]
    result: Option<crate::gateway::wire::WireResult>,
}

/// Handles one notification; returns the verdict and the body to answer with.
pub async fn handle(
    hub: &Hub,
    path: &str,
    client_id: Option<&str>,
    request_time: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> (NotifyVerdict, Vec<u8>) {
    let verdict = match check_and_apply(hub, path, client_id, request_time, signature, body).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "notification not recorded");
            NotifyVerdict::Error
        }
    };
    hub.metrics.notification(verdict.label());
    let answer = match verdict {
        NotifyVerdict::Rejected => result_body("F", "INVALID_SIGNATURE", "rejected"),
        NotifyVerdict::Error => result_body("U", "UNKNOWN_EXCEPTION", "try again"),
        _ => result_body("S", "SUCCESS", "success"),
    };
    (verdict, answer)
}

async fn check_and_apply(
    hub: &Hub,
    path: &str,
    client_id: Option<&str>,
    request_time: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> anyhow::Result<NotifyVerdict> {
    let (Some(client_id), Some(time), Some(sig)) = (client_id, request_time, signature) else {
        return Ok(NotifyVerdict::Rejected);
    };
    if client_id != hub.upstream.client_id()
        || verify_notification(hub.upstream.gateway_key(), path, client_id, time, body, sig)
            .is_err()
    {
        tracing::warn!("notification refused: client id or signature");
        return Ok(NotifyVerdict::Rejected);
    }
    let Ok(n) = serde_json::from_slice::<Notification>(body) else {
        return Ok(NotifyVerdict::Rejected);
    };
    let status = n
        .payment_status
        .clone()
        .or_else(|| {
            // A PAYMENT_RESULT notification says the outcome in its `result`.
            n.result
                .as_ref()
                .and_then(|r| match r.result_status.as_str() {
                    "S" => Some("SUCCESS".to_string()),
                    "F" => Some("FAIL".to_string()),
                    _ => None,
                })
        })
        .unwrap_or_default();
    let amount = n
        .payment_amount
        .as_ref()
        .map(|a| (a.value.clone(), a.currency.clone()));
    apply(
        hub,
        &n.payment_request_id,
        &status,
        n.payment_id.as_deref(),
        amount,
    )
    .await
}

/// A verified notification's facts applied to the hub's record (both dialects): amount and
/// currency compared with the recorded pay, the status applied with the inquiry's
/// compare-and-set, the notification recorded, all in one transaction.
async fn apply(
    hub: &Hub,
    payment_request_id: &str,
    status: &str,
    payment_id: Option<&str>,
    amount: Option<(String, String)>,
) -> anyhow::Result<NotifyVerdict> {
    let mut client = hub.pool.get().await?;
    let tx = client.transaction().await?;
    set_lock_timeout(&tx, hub.rules.lock_timeout).await?;
    let row = lock_payment(&tx, payment_request_id).await?;
    let verdict = match row {
        None => NotifyVerdict::UnknownPayment,
        Some(row) => {
            let amount_ok = match (&amount, row.amount_minor, &row.currency) {
                (Some((value, currency)), Some(minor), Some(cur)) => {
                    value.parse::<i64>().ok() == Some(minor) && currency == cur
                }
                (None, _, _) => true,
                _ => false,
            };
            if !amount_ok {
                if row.state == "RECEIVED" {
                    mark_attention(
                        &tx,
                        &hub.instance,
                        &row,
                        "notification: amount or currency differ from the request",
                    )
                    .await?;
                }
                NotifyVerdict::Mismatch
            } else {
                match apply_status(&tx, &hub.instance, &row, status, payment_id, "notification")
                    .await?
                {
                    Some(_) => NotifyVerdict::Applied,
                    None => NotifyVerdict::Unchanged,
                }
            }
        }
    };
    tx.execute(
        "INSERT INTO hub_notifications (payment_request_id, payment_status, applied, outcome) VALUES ($1,$2,$3,$4)",
        &[&payment_request_id, &status, &(verdict == NotifyVerdict::Applied), &verdict.label()],
    )
    .await?;
    tx.commit().await?;
    Ok(verdict)
}

/// What a mainland `trade_status` means at the hub, in the AMS statuses the record keeps:
/// paid on `TRADE_SUCCESS`/`TRADE_FINISHED`, closed unpaid on a close without a refund, and
/// nothing on `WAIT_BUYER_PAY` or a close after a refund (taken and given back: the cancel or
/// refund in the hub's record says it).
pub fn mainland_status(n: &CnNotification) -> &'static str {
    match n.status {
        TradeStatus::Success | TradeStatus::Finished => "SUCCESS",
        TradeStatus::Closed if !n.refunded => "CANCELLED",
        TradeStatus::Closed | TradeStatus::WaitBuyerPay => "PROCESSING",
    }
}

/// Handles one mainland notification (`trade_status_sync`, a form POST) when the upstream is
/// `alipay_cn`: verified with the Alipay key over the sorted fields, our `app_id` checked,
/// then applied as [`handle`] applies an AMS one. Answers `success` once recorded, `fail`
/// otherwise (the gateway sends it again).
pub async fn handle_mainland(hub: &Hub, body: &[u8]) -> (NotifyVerdict, &'static str) {
    let verdict =
        match cn_notify::verify(hub.upstream.gateway_key(), hub.upstream.client_id(), body) {
            Err(e) => {
                tracing::warn!(reason = %e, "mainland notification refused");
                NotifyVerdict::Rejected
            }
            Ok(n) => {
                let amount = n
                    .total_amount
                    .as_deref()
                    .map(|y| (cn_notify::minor_units(y), "CNY".to_string()));
                match apply(
                    hub,
                    &n.out_trade_no,
                    mainland_status(&n),
                    n.trade_no.as_deref(),
                    amount,
                )
                .await
                {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "notification not recorded");
                        NotifyVerdict::Error
                    }
                }
            }
        };
    hub.metrics.notification(verdict.label());
    let answer = match verdict {
        NotifyVerdict::Rejected | NotifyVerdict::Error => cn_notify::RETRY,
        _ => cn_notify::ACK,
    };
    (verdict, answer)
}
