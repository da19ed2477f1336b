//! The mainland notification endpoint (`trade_status_sync`, a form POST) on the `[notify]`
//! listener when posd speaks the mainland dialect.
//!
//! Checks, each failing one answered `fail` with nothing changed: body size, the form, the
//! RSA2 signature over the sorted fields without `sign`/`sign_type` (before anything is
//! read), our `app_id`, the fields the engine needs. A verified notification is recorded with
//! its effect in one transaction ([`Engine::record_notification`]: the same compare-and-set
//! as every other answer, and the amount compared exactly) and only then answered `success`.
//! A database failure answers `fail` so the gateway sends it again.
//!
//! Trade statuses only move forward: a payment that is final takes no further result, so a
//! duplicate, or a late `TRADE_SUCCESS` after `TRADE_FINISHED`, changes nothing and is
//! acknowledged.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use sha2::{Digest, Sha256};

use super::notify::{NotifyState, MAX_CONCURRENT_NOTIFICATIONS, MAX_NOTIFY_BODY, NOTIFY_TIMEOUT};
use crate::engine::notify::Notified;
use crate::engine::Engine;
use crate::gateway::alipay_cn::notify::{self, minor_units, Notification, TradeStatus, ACK, RETRY};
use crate::store::notifications::{NewNotification, Outcome};

/// The router: `POST <path>` only, with the same bounds as the AMS endpoint.
pub fn router(state: NotifyState) -> Router {
    let path = state.path.clone();
    super::guard::bounded(
        Router::new().route(&path, post(receive)).with_state(state),
        NOTIFY_TIMEOUT,
        MAX_CONCURRENT_NOTIFICATIONS,
    )
}

/// `body` as Alipay reads it: plain text, never rewritten to the listener's JSON error.
fn text(status: StatusCode, body: &'static str) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response();
    r.extensions_mut().insert(super::errors::Verbatim);
    r
}

/// What the engine applies: paid on TRADE_SUCCESS / TRADE_FINISHED, not paid on a close
/// without a refund (a timeout close), and nothing on WAIT_BUYER_PAY or on a close after a
/// refund (the money was taken and given back; the inquiry and the journal show it).
pub fn notified(n: &Notification) -> Notified {
    match n.status {
        TradeStatus::Success | TradeStatus::Finished => Notified::Result { paid: true },
        TradeStatus::Closed if !n.refunded => Notified::Result { paid: false },
        TradeStatus::Closed | TradeStatus::WaitBuyerPay => Notified::Pending,
    }
}

/// The row the engine records, the amount in minor units so the engine's exact comparison
/// applies (CNY: the mainland gateway settles in yuan only).
pub fn to_record(n: &Notification, body: &[u8]) -> NewNotification {
    let status = n.params.get("trade_status").map(str::to_string);
    NewNotification {
        claimed_request_id: Some(n.out_trade_no.clone()),
        payment_id: n.trade_no.clone(),
        notify_type: n.params.get("notify_type").map(str::to_string),
        result_status: status.clone(),
        result_code: status,
        amount_value: n.total_amount.as_deref().map(minor_units),
        currency: n.total_amount.as_ref().map(|_| "CNY".to_string()),
        request_time: n.params.get("notify_time").unwrap_or_default().to_string(),
        body_sha256: format!("{:x}", Sha256::digest(body)),
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// Verifies, records and answers one notification body (the handler without HTTP).
pub async fn handle(engine: &Engine, st: &NotifyState, body: &[u8]) -> Result<Outcome, Refused> {
    let n = notify::verify(&st.gateway_key, &st.client_id, body).map_err(Refused::Check)?;
    let rec = engine
        .record_notification(to_record(&n, body), notified(&n))
        .await
        .map_err(|e| Refused::Store(e.to_string()))?;
    Ok(rec.outcome)
}

/// Why a notification was not acknowledged.
#[derive(Debug)]
pub enum Refused {
    /// It failed a check (forged, another app, missing fields).
    Check(notify::NotifyError),
    /// It could not be recorded: the gateway must send it again.
    Store(String),
}

async fn receive(State(st): State<NotifyState>, req: Request<Body>) -> Response {
    let body: Bytes = match axum::body::to_bytes(req.into_body(), MAX_NOTIFY_BODY).await {
        Ok(b) => b,
        Err(_) => {
            st.metrics.notification("rejected", "too_large");
            return text(StatusCode::PAYLOAD_TOO_LARGE, RETRY);
        }
    };
    match handle(&st.engine, &st, &body).await {
        Ok(outcome) => {
            tracing::info!(
                outcome = outcome.as_str(),
                "mainland notification recorded; acknowledged"
            );
            st.metrics.notification("accepted", outcome.as_str());
            text(StatusCode::OK, ACK)
        }
        Err(Refused::Check(e)) => {
            tracing::warn!(reason = %e, "mainland notification rejected");
            st.metrics.notification("rejected", "check");
            text(StatusCode::BAD_REQUEST, RETRY)
        }
        Err(Refused::Store(e)) => {
            tracing::error!(error = %e, "cannot record a mainland notification; asking the gateway to resend");
            st.metrics.notification("error", "internal");
            text(StatusCode::INTERNAL_SERVER_ERROR, RETRY)
        }
    }
}
