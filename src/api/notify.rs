//! The notifyPayment endpoint (docs/protocol.md, "notifyPayment") on its own listener (`[notify]`).
//!
//! Order of checks, each failing one answered non-S with nothing changed: content type, body
//! size, the three headers, the RSA signature over `POST <path>\n<client-id>.<request-time>.
//! <raw body>` with the gateway public key (before any parsing), the client id, the JSON.
//! A verified notification is then recorded together with its effect in one transaction
//! ([`Engine::record_notification`]) and only then answered with the exact ACK. A database
//! failure answers the retry body so the gateway sends it again.
//!
//! Replays: a resend of a verified body is a duplicate and changes nothing (it is still
//! acknowledged: the gateway retries for 24 h, so `request-time` is not checked for age);
//! any edit to the body, path, client id or time breaks the signature.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::engine::notify::Notified;
use crate::engine::Engine;
use crate::gateway::ams::notify::{self as ams, Refusal, Says};
use crate::gateway::sign::PublicKey;
use crate::metrics::Metrics;
use crate::store::notifications::{NewNotification, Outcome};

/// The largest notification body read; real ones are about 1 KiB.
pub const MAX_NOTIFY_BODY: usize = 64 * 1024;
/// How long one notification may take end to end (reading, verifying, recording).
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Notifications handled at once; more are answered 503 (the gateway retries).
pub const MAX_CONCURRENT_NOTIFICATIONS: usize = 16;

/// What the endpoint needs.
#[derive(Clone)]
pub struct NotifyState {
    /// The engine (and through it the store).
    pub engine: Engine,
    /// The gateway public key that signs notifications.
    pub gateway_key: Arc<PublicKey>,
    /// Our client id: a notification for another client is refused.
    pub client_id: String,
    /// The configured `[notify] path` (what the gateway signed).
    pub path: String,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The notification router: `POST <path>` only, with size, time and concurrency bounds.
pub fn router(state: NotifyState) -> Router {
    let path = state.path.clone();
    super::errors::json_errors(super::guard::bounded(
        Router::new().route(&path, post(receive)).with_state(state),
        NOTIFY_TIMEOUT,
        MAX_CONCURRENT_NOTIFICATIONS,
    ))
}

/// Why a notification was refused (each is a `rejected` metric reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    ContentType,
    TooLarge,
    MissingHeader(&'static str),
    Signature,
    ClientId,
    Json,
}

impl Reject {
    fn reason(self) -> &'static str {
        match self {
            Reject::ContentType => "content_type",
            Reject::TooLarge => "too_large",
            Reject::MissingHeader(_) => "missing_header",
            Reject::Signature => "signature",
            Reject::ClientId => "client_id",
            Reject::Json => "invalid_json",
        }
    }

    fn answer(self) -> Response {
        let (status, refusal, msg) = match self {
            Reject::ContentType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Refusal::ParamIllegal,
                "content type must be application/json".to_string(),
            ),
            Reject::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::ParamIllegal,
                format!("body larger than {MAX_NOTIFY_BODY} bytes"),
            ),
            Reject::MissingHeader(h) => (
                StatusCode::BAD_REQUEST,
                Refusal::ParamIllegal,
                format!("header {h} is missing"),
            ),
            Reject::Signature => (
                StatusCode::UNAUTHORIZED,
                Refusal::InvalidSignature,
                "signature does not verify".to_string(),
            ),
            Reject::ClientId => (
                StatusCode::FORBIDDEN,
                Refusal::InvalidClient,
                "client-id is not this terminal's".to_string(),
            ),
            Reject::Json => (
                StatusCode::BAD_REQUEST,
                Refusal::ParamIllegal,
                "body is not a notifyPayment JSON object".to_string(),
            ),
        };
        json_response(status, ams::refusal_body(refusal, &msg))
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
        body,
    )
        .into_response()
}

fn ack() -> Response {
    json_response(StatusCode::OK, ams::ACK.to_string())
}

fn retry() -> Response {
    json_response(StatusCode::INTERNAL_SERVER_ERROR, ams::RETRY.to_string())
}

fn header_str<'h>(h: &'h HeaderMap, name: &'static str) -> Result<&'h str, Reject> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(Reject::MissingHeader(name))
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

async fn receive(State(st): State<NotifyState>, req: Request<Body>) -> Response {
    match verified(&st, req).await {
        Err(r) => {
            tracing::warn!(reason = r.reason(), "notification rejected");
            st.metrics.notification("rejected", r.reason());
            r.answer()
        }
        Ok((n, what)) => match st.engine.record_notification(n, what).await {
            Ok(rec) => {
                let reason = match rec.outcome {
                    Outcome::Applied => "applied",
                    Outcome::Ignored => "ignored",
                    Outcome::Duplicate => "duplicate",
                    Outcome::UnknownPayment => "unknown_payment",
                    Outcome::Pending => "pending",
                };
                tracing::info!(
                    notification = rec.id,
                    outcome = rec.outcome.as_str(),
                    payment = ?rec.payment.as_ref().map(|p| p.payment_request_id.as_str()),
                    "notification recorded; acknowledged"
                );
                st.metrics.notification("accepted", reason);
                ack()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record a notification; asking the gateway to resend");
                st.metrics.notification("error", "internal");
                retry()
            }
        },
    }
}

/// Everything before the database: returns the notification to record, or why not.
async fn verified(
    st: &NotifyState,
    req: Request<Body>,
) -> Result<(NewNotification, Notified), Reject> {
    let (parts, body) = req.into_parts();
    if !is_json(&parts.headers) {
        return Err(Reject::ContentType);
    }
    let client_id = header_str(&parts.headers, "client-id")?.to_string();
    let request_time = header_str(&parts.headers, "request-time")?.to_string();
    let signature = header_str(&parts.headers, "signature")?.to_string();
    let body: Bytes = axum::body::to_bytes(body, MAX_NOTIFY_BODY)
        .await
        .map_err(|_| Reject::TooLarge)?;
    let path = match parts.uri.query() {
        Some(q) => format!("{}?{q}", st.path),
        None => st.path.clone(),
    };
    check(
        &st.gateway_key,
        &st.client_id,
        &path,
        client_id,
        request_time,
        &signature,
        &body,
    )
}

/// The checks after the headers were read: signature first, then client id, then the JSON.
fn check(
    gateway_key: &PublicKey,
    our_client_id: &str,
    path: &str,
    client_id: String,
    request_time: String,
    signature: &str,
    body: &[u8],
) -> Result<(NewNotification, Notified), Reject> {
    ams::verify(
        gateway_key,
        path,
        &client_id,
        &request_time,
        body,
        signature,
    )
    .map_err(|_| Reject::Signature)?;
    if client_id != our_client_id {
        return Err(Reject::ClientId);
    }
    let text = std::str::from_utf8(body).map_err(|_| Reject::Json)?;
    let msg = ams::parse(text).ok_or(Reject::Json)?;
    let what = match msg.says {
        Says::Pending => Notified::Pending,
        Says::Paid => Notified::Result { paid: true },
        Says::NotPaid => Notified::Result { paid: false },
    };
    let n = NewNotification {
        claimed_request_id: msg.payment_request_id,
        payment_id: msg.payment_id,
        notify_type: msg.notify_type,
        result_status: msg.result_status,
        result_code: msg.result_code,
        amount_value: msg.amount_value,
        currency: msg.currency,
        request_time,
        body_sha256: format!("{:x}", Sha256::digest(body)),
        body: text.to_string(),
    };
    Ok((n, what))
}

#[doc(hidden)]
pub mod fuzz_entry {
    //! The endpoint's checks as one call, for the fuzz target and its corpus replay: header
    //! extraction, signature, client id, JSON — everything before the database.

    use axum::http::HeaderMap;

    use super::{check, header_str, is_json};
    use crate::engine::notify::Notified;
    use crate::gateway::sign::PublicKey;
    use crate::store::notifications::NewNotification;

    /// `Ok` with what would be recorded, or the rejection's metric reason.
    pub fn verify(
        gateway_key: &PublicKey,
        our_client_id: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(NewNotification, Notified), &'static str> {
        let run = || {
            if !is_json(headers) {
                return Err(super::Reject::ContentType);
            }
            if body.len() > super::MAX_NOTIFY_BODY {
                return Err(super::Reject::TooLarge);
            }
            let client_id = header_str(headers, "client-id")?.to_string();
            let request_time = header_str(headers, "request-time")?.to_string();
            let signature = header_str(headers, "signature")?;
            check(
                gateway_key,
                our_client_id,
                path,
                client_id,
                request_time,
                signature,
                body,
            )
        };
        run().map_err(super::Reject::reason)
    }
}
