//! `POST /v1/payments/{id}/refunds`: full or partial refunds of a paid sale (docs/design.md
//! flow step 6), retry-safe with an `Idempotency-Key`. Refusals (over-refund, wrong state, a
//! reused key) are 409 and change nothing.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::routing::post;
use axum::{Json, Router};

use super::wire::CreateRefund;
use super::{created, idempotency, resource, ApiError, ApiState};
use crate::domain::money::Amount;

/// The refund routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/v1/payments/{id}/refunds", post(create_refund))
}

async fn create_refund(
    AxState(st): AxState<ApiState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Json<CreateRefund>, JsonRejection>,
) -> Result<axum::response::Response, ApiError> {
    let Json(req) = body?;
    let payment = st.engine.view(&id).await?.payment;
    let amount = match &req.amount {
        Some(a) => Some(Amount::parse(a, payment.amount.currency()).map_err(|e| {
            ApiError::bad(
                "invalid_amount",
                format!(
                    "{e}; give the refund in {} like \"5.00\", or leave it out to refund the rest",
                    payment.amount.currency().code()
                ),
            )
        })?),
        None => None,
    };
    let minor = amount.map(|a| a.minor().to_string());
    let key = idempotency(
        &headers,
        format!("refund:{id}"),
        &[
            "POST /v1/payments/{id}/refunds",
            minor.as_deref().unwrap_or("\u{0}"),
            req.reason.as_deref().map(str::trim).unwrap_or("\u{0}"),
        ],
    )?;
    let (_, replayed) = st
        .engine
        .refund_once(&id, amount, req.reason.clone(), key)
        .await?;
    let v = st.engine.view(&id).await?;
    Ok(created(resource(&st.engine, v).await?, replayed))
}
