//! The back office's queue endpoints: `GET /v1/queue`, `POST /v1/queue/replay`,
//! `POST /v1/queue/{id}/abandon`, and their JSON shapes (the CLI reuses them).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::wire::rfc3339;
use super::{ApiError, ApiState};
use crate::engine::clock::now_ms;
use crate::engine::worker::{ItemReport, ReplayError};
use crate::engine::EngineError;
use crate::store::queue::{self as q, Depth, QueueItem};

/// One queue item as the back office sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueItemJson {
    /// The item's id (`posd queue replay ID`).
    pub id: i64,
    /// `CANCEL` or `REFUND`.
    pub kind: String,
    /// The payment.
    pub payment_request_id: String,
    /// The refund, for refund items.
    pub refund_request_id: Option<String>,
    /// `PENDING`, `DONE`, `DEAD`, `ABANDONED`.
    pub status: String,
    /// Sends that did not settle it.
    pub attempts: u32,
    /// Seconds since it was queued.
    pub age_seconds: i64,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Next try, RFC 3339 UTC (pending items).
    pub next_attempt_at: Option<String>,
    /// Why the last send did not settle it.
    pub last_error: Option<String>,
    /// How a closed item ended.
    pub resolution: Option<String>,
    /// Who is sending it right now.
    pub lease_owner: Option<String>,
}

impl QueueItemJson {
    /// Builds the JSON of an item as of `now` (epoch ms).
    pub fn new(i: &QueueItem, now: i64) -> QueueItemJson {
        let pending = i.status == q::ItemStatus::Pending;
        let leased = pending && i.lease_until.is_some_and(|u| u >= now);
        QueueItemJson {
            id: i.id,
            kind: i.kind.as_str().into(),
            payment_request_id: i.payment_request_id.clone(),
            refund_request_id: i.refund_request_id.clone(),
            status: i.status.as_str().into(),
            attempts: i.attempts,
            age_seconds: (now - i.created_at).max(0) / 1000,
            created_at: rfc3339(i.created_at),
            next_attempt_at: pending.then(|| rfc3339(i.next_attempt_at)),
            last_error: i.last_error.clone(),
            resolution: i.resolution.clone(),
            lease_owner: if leased { i.lease_owner.clone() } else { None },
        }
    }
}

/// The queue's size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DepthJson {
    /// Items waiting to be delivered.
    pub pending: i64,
    /// Dead letters waiting for a human.
    pub dead: i64,
    /// Age of the oldest pending item, seconds.
    pub oldest_age_seconds: Option<i64>,
}

impl DepthJson {
    /// From the store's counts, as of `now` (epoch ms).
    pub fn new(d: &Depth, now: i64) -> DepthJson {
        DepthJson {
            pending: d.pending,
            dead: d.dead,
            oldest_age_seconds: d.oldest_pending_at.map(|t| (now - t).max(0) / 1000),
        }
    }
}

/// `GET /v1/queue`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueListJson {
    /// The items, oldest first.
    pub items: Vec<QueueItemJson>,
    /// The size.
    pub depth: DepthJson,
}

/// What one replay or abandon did to an item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ItemReportJson {
    /// The item.
    pub id: i64,
    /// `CANCEL` or `REFUND`.
    pub kind: String,
    /// The payment.
    pub payment_request_id: String,
    /// `done`, `converted`, `dead`, `abandoned`, `retry`, `held`, `released`, `lease_lost`.
    pub outcome: String,
    /// Why.
    pub detail: String,
    /// The payment's state afterwards, when it was touched.
    pub payment_state: Option<String>,
}

impl From<&ItemReport> for ItemReportJson {
    fn from(r: &ItemReport) -> Self {
        ItemReportJson {
            id: r.id,
            kind: r.kind.as_str().into(),
            payment_request_id: r.payment_request_id.clone(),
            outcome: r.outcome.as_str().into(),
            detail: r.detail.clone(),
            payment_state: r.payment_state.map(|s| s.as_str().into()),
        }
    }
}

/// `POST /v1/queue/replay` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplayJson {
    /// Every item the replay touched.
    pub items: Vec<ItemReportJson>,
}

/// `POST /v1/queue/replay` body: one item, or everything pending when absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The item to replay now, due or not.
    #[serde(default)]
    pub id: Option<i64>,
}

/// `POST /v1/queue/{id}/abandon` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbandonRequest {
    /// Why the item is given up (required; goes into the payment's journal).
    pub reason: String,
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        let (status, code) = match &e {
            ReplayError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ReplayError::Closed { .. } => (StatusCode::CONFLICT, "closed"),
            ReplayError::Busy { .. } => (StatusCode::CONFLICT, "busy"),
            ReplayError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ReplayError::Internal(err) => {
                tracing::error!(error = %err, "queue replay failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }
}

/// The queue routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/queue", get(list))
        .route("/v1/queue/replay", post(replay))
        .route("/v1/queue/{id}/abandon", post(abandon))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: Option<bool>,
}

async fn list(
    AxState(st): AxState<ApiState>,
    Query(lq): Query<ListQuery>,
) -> Result<Json<QueueListJson>, ApiError> {
    let all = lq.all.unwrap_or(false);
    let (items, depth) = st
        .engine
        .store()
        .call(move |c| Ok((q::list(c, all)?, q::depth(c)?)))
        .await
        .map_err(EngineError::Internal)?;
    let now = now_ms();
    Ok(Json(QueueListJson {
        items: items.iter().map(|i| QueueItemJson::new(i, now)).collect(),
        depth: DepthJson::new(&depth, now),
    }))
}

fn replayer(st: &ApiState) -> Result<&crate::engine::worker::Replayer, ApiError> {
    st.engine.replayer().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "queue_stopped",
        message: "the queue worker is not running in this daemon; restart posd".into(),
    })
}

async fn replay(
    AxState(st): AxState<ApiState>,
    body: axum::body::Bytes,
) -> Result<Json<ReplayJson>, ApiError> {
    // No body (or `{}`) replays everything pending; `{"id": N}` one item.
    let req: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad(
                "invalid_json",
                format!("{e}; send {{\"id\": N}} to replay one item, or nothing to replay all"),
            )
        })?
    };
    let r = replayer(&st)?;
    let reports = match req.id {
        Some(id) => vec![r.replay_item(id).await?],
        None => r.replay_all().await.map_err(EngineError::Internal)?,
    };
    Ok(Json(ReplayJson {
        items: reports.iter().map(ItemReportJson::from).collect(),
    }))
}

async fn abandon(
    AxState(st): AxState<ApiState>,
    Path(id): Path<i64>,
    body: Result<Json<AbandonRequest>, JsonRejection>,
) -> Result<Json<ItemReportJson>, ApiError> {
    let Json(req) = body?;
    let report = replayer(&st)?.abandon(id, &req.reason).await?;
    Ok(Json(ItemReportJson::from(&report)))
}
