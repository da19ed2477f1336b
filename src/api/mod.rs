//! The local HTTP API (axum): sales, status with long-poll, abort. Bad input gets a
//! 4xx with `{"error":{"code","message"}}` and changes nothing. Health, metrics and the
//! notification listing are in [`ops`], the hardening layers in [`guard`], the gateway's
//! notification endpoint (its own listener) in [`notify`].

pub mod console;
pub mod errors;
pub mod guard;
pub mod journal;
pub mod notify;
pub mod notify_cn;
pub mod ops;
pub mod queue;
pub mod refunds;
pub mod serve;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::domain::code::{CodeRules, PaymentCode};
use crate::domain::money::{Amount, Currency};
use crate::engine::{Engine, EngineError, PaymentView, SaleRequest};
use crate::store::payments;
use wire::{CreatePayment, ErrorBody, ErrorJson, PaymentJson};

/// The longest a `?wait=` long-poll holds a request.
pub const MAX_WAIT: Duration = Duration::from_secs(120);
/// The largest request body the API reads.
pub const MAX_BODY: usize = 16 * 1024;

/// Everything the handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// The engine.
    pub engine: Engine,
    /// Payment-code rules.
    pub code_rules: Arc<CodeRules>,
    /// The terminal's default currency.
    pub currency: Currency,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// The message, for pages that show it (the console).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A 400 with a code and message.
    pub fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorJson {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let (status, code) = match &e {
            EngineError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            EngineError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            EngineError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            EngineError::Internal(err) => {
                tracing::error!(error = %err, "internal error");
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

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "too_large",
                message: format!("the body is larger than {MAX_BODY} bytes"),
            };
        }
        ApiError::bad(
            "invalid_json",
            format!(
                "{}; send a JSON object such as {{\"amount\":\"12.34\"}}",
                r.body_text()
            ),
        )
    }
}

/// The API routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/payments", post(create_payment))
        .route("/v1/payments/{id}", get(get_payment))
        .route("/v1/payments/{id}/abort", post(abort_payment))
        .route("/v1/payments/{id}/receipt", post(reprint))
        .merge(queue::routes().merge(refunds::routes()))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Builds the payment resource for a view (adds its refunds).
pub async fn resource(engine: &Engine, v: PaymentView) -> Result<PaymentJson, ApiError> {
    let id = v.payment.payment_request_id.clone();
    let refunds = engine
        .store()
        .read(move |c| Ok(payments::refunds_of(c, &id)?))
        .await
        .map_err(EngineError::Internal)?;
    Ok(PaymentJson::new(&v, &refunds))
}

/// Whether `c` reorders how text around it is displayed (bidirectional embedding, override,
/// isolate and mark characters): an order reference with one can print differently from
/// what it is.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Validates an order reference: 1–64 printable characters, no bidi controls.
pub fn check_order_ref(s: &str) -> Result<(), ApiError> {
    if s.is_empty()
        || s.chars().count() > 64
        || s.chars().any(|c| c.is_control() || is_bidi_control(c))
    {
        return Err(ApiError::bad(
            "invalid_order_ref",
            format!(
                "order_ref {s:?} must be 1–64 printable characters, without control or bidirectional-override characters"
            ),
        ));
    }
    Ok(())
}

/// The header a client sends to make a creating POST safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// The request's `Idempotency-Key` for `scope`, fingerprinted over `fields`; `None` without
/// the header. A key must be 1–128 visible ASCII characters.
pub fn idempotency(
    headers: &axum::http::HeaderMap,
    scope: String,
    fields: &[&str],
) -> Result<Option<crate::store::idempotency::Idempotency>, ApiError> {
    use sha2::{Digest, Sha256};
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY} visible ASCII characters, e.g. a UUID"),
            )
        })?;
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    Ok(Some(crate::store::idempotency::Idempotency {
        scope,
        key: key.to_string(),
        fingerprint: format!("{:x}", h.finalize()),
    }))
}

async fn create_payment(
    AxState(st): AxState<ApiState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<CreatePayment>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let currency = match &req.currency {
        Some(c) => {
            Currency::from_code(c).map_err(|e| ApiError::bad("invalid_currency", e.to_string()))?
        }
        None => st.currency,
    };
    let amount = Amount::parse(&req.amount, currency)
        .map_err(|e| ApiError::bad("invalid_amount", e.to_string()))?;
    if let Some(o) = &req.order_ref {
        check_order_ref(o)?;
    }
    if req
        .code
        .as_deref()
        .is_some_and(|c| c.chars().any(char::is_control))
    {
        return Err(ApiError::bad(
            "invalid_code",
            "the code contains control characters (such as NUL); send the digits only",
        ));
    }
    let code = match &req.code {
        Some(raw) => Some(
            PaymentCode::parse(raw, &st.code_rules)
                .map_err(|e| ApiError::bad("invalid_code", format!("{e}; scan the code again")))?,
        ),
        None => None,
    };
    // The fingerprint covers what the sale means; the code only in its masked form.
    let minor = amount.minor().to_string();
    let masked = code.as_ref().map(PaymentCode::masked);
    let key = idempotency(
        &headers,
        "payment".into(),
        &[
            "POST /v1/payments",
            &minor,
            amount.currency().code(),
            req.order_ref.as_deref().unwrap_or("\u{0}"),
            masked.as_deref().unwrap_or("\u{0}"),
        ],
    )?;
    let (rec, replayed) = st
        .engine
        .start_sale_once(
            SaleRequest {
                amount,
                order_ref: req.order_ref.clone(),
                code,
            },
            key,
        )
        .await?;
    let v = st.engine.view(&rec.payment_request_id).await?;
    Ok(created(resource(&st.engine, v).await?, replayed))
}

/// 202 with the resource; a replayed request says so in `Idempotent-Replayed: true`.
pub fn created(body: PaymentJson, replayed: bool) -> Response {
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    resp
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

/// Parses `?wait=`: seconds ("30") or a duration ("500ms"), capped at [`MAX_WAIT`].
pub fn parse_wait(s: &str) -> Result<Duration, ApiError> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|_| {
            ApiError::bad(
                "invalid_wait",
                format!("wait={s:?}: give seconds, e.g. wait=30"),
            )
        })?,
    };
    Ok(d.min(MAX_WAIT))
}

async fn get_payment(
    AxState(st): AxState<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<PaymentJson>, ApiError> {
    let v = match q.wait.as_deref() {
        Some(w) => st.engine.wait_final(&id, parse_wait(w)?).await?,
        None => st.engine.view(&id).await?,
    };
    Ok(Json(resource(&st.engine, v).await?))
}

async fn abort_payment(
    AxState(st): AxState<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<PaymentJson>, ApiError> {
    st.engine.abort(&id).await?;
    let v = st.engine.view(&id).await?;
    Ok(Json(resource(&st.engine, v).await?))
}

async fn reprint(
    AxState(st): AxState<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let pid = id.clone();
    let slip = st
        .engine
        .store()
        .call(move |c| Ok(crate::store::print_journal::reprint(c, &pid)?))
        .await
        .map_err(EngineError::Internal)?;
    match slip {
        Some(slip_id) => {
            st.engine.slips_written().notify_one();
            Ok((
                StatusCode::ACCEPTED,
                Json(
                    serde_json::json!({"payment_request_id": id, "slip_id": slip_id, "copy": true}),
                ),
            ))
        }
        None => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!(
                "no slip for payment {id}: it has not reached a state that prints one"
            ),
        }),
    }
}
