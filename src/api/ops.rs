//! Operations routes of the local API: `GET /healthz` (200 when the database reads and
//! commits, its last integrity check passed and the workers are alive; 503 with the reason
//! otherwise), `GET /metrics` (Prometheus text), and
//! `GET /v1/notifications` (received notifications for the back office, e.g. those for
//! payments this terminal does not know).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::engine::EngineError;
use crate::health::Health;
use crate::metrics::{self, Metrics};
use crate::store::notifications::{self, NotificationRecord};

/// What the operations routes need.
#[derive(Clone)]
pub struct OpsState {
    /// The health check.
    pub health: Health,
    /// The registry.
    pub metrics: Arc<Metrics>,
    /// The store (through the engine).
    pub engine: crate::engine::Engine,
}

/// `/healthz`, `/metrics`, `/v1/notifications`.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(scrape))
        .route("/v1/notifications", get(list_notifications))
        .with_state(state)
}

async fn healthz(State(st): State<OpsState>) -> Response {
    let r = st.health.check().await;
    if r.healthy() {
        // The reversal queue's depth and the age of its oldest item.
        let queue = st
            .engine
            .store()
            .read(|c| Ok(crate::store::queue::depth(c)?))
            .await
            .ok()
            .map(|d| super::queue::DepthJson::new(&d, crate::engine::clock::now_ms()));
        Json(serde_json::json!({
            "status": "ok",
            "database": "ok",
            "integrity": "ok",
            "active_payment_tasks": r.active_payment_tasks,
            "queue": queue,
        }))
        .into_response()
    } else {
        let reason = r.reason().unwrap_or_default();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unavailable",
                "reason": reason,
                "error": {"code": "unhealthy", "message": reason},
            })),
        )
            .into_response()
    }
}

async fn scrape(State(st): State<OpsState>) -> Response {
    match st.metrics.render(st.engine.store()).await {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot read the metrics' database figures");
            ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "database_unavailable",
                message: format!("database unavailable: {e}"),
            }
            .into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Epoch milliseconds or an RFC 3339 time.
    since: Option<String>,
    /// `true`: only notifications for unknown payments.
    unknown: Option<bool>,
}

/// One received notification, as the back office sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NotificationJson {
    /// Row id.
    pub id: i64,
    /// RFC 3339, UTC.
    pub received_at: String,
    /// The matched payment, or null when this terminal does not know it.
    pub payment_request_id: Option<String>,
    /// The id the notification named.
    pub claimed_request_id: Option<String>,
    /// The gateway's `paymentId`.
    pub payment_id: Option<String>,
    /// `notifyType`.
    pub notify_type: Option<String>,
    /// `result.resultStatus`.
    pub result_status: Option<String>,
    /// `result.resultCode`.
    pub result_code: Option<String>,
    /// `paymentAmount.value` (minor units, as sent).
    pub amount_value: Option<String>,
    /// `paymentAmount.currency`.
    pub currency: Option<String>,
    /// `APPLIED`, `IGNORED`, `DUPLICATE`, `UNKNOWN_PAYMENT` or `PENDING`.
    pub outcome: String,
    /// Payment state before.
    pub state_before: Option<String>,
    /// Payment state after.
    pub state_after: Option<String>,
}

impl From<NotificationRecord> for NotificationJson {
    fn from(r: NotificationRecord) -> Self {
        NotificationJson {
            id: r.id,
            received_at: chrono::DateTime::from_timestamp_millis(r.received_at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default(),
            payment_request_id: r.payment_request_id,
            claimed_request_id: r.claimed_request_id,
            payment_id: r.payment_id,
            notify_type: r.notify_type,
            result_status: r.result_status,
            result_code: r.result_code,
            amount_value: r.amount_value,
            currency: r.currency,
            outcome: r.outcome,
            state_before: r.state_before,
            state_after: r.state_after,
        }
    }
}

fn parse_since(s: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
            .unwrap_or(0));
    }
    Err(ApiError::bad(
        "invalid_since",
        format!("since={s:?}: give a date (2026-11-21), an RFC 3339 time or epoch milliseconds"),
    ))
}

async fn list_notifications(
    State(st): State<OpsState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<NotificationJson>>, ApiError> {
    let since = q
        .since
        .as_deref()
        .map(parse_since)
        .transpose()?
        .unwrap_or(0);
    let unknown = q.unknown.unwrap_or(false);
    let rows = st
        .engine
        .store()
        .call(move |c| Ok(notifications::since(c, since, unknown)?))
        .await
        .map_err(EngineError::Internal)?;
    Ok(Json(rows.into_iter().map(NotificationJson::from).collect()))
}
