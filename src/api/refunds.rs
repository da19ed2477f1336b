//! `POST /v1/payments/{id}/refunds`: full or partial refunds of a paid sale (docs/design.md flow
//! step 6). Refusals (over-refund, wrong state) are 409 and change nothing.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};

use super::wire::{CreateRefund, PaymentJson};
use super::{resource, ApiError, ApiState};
use crate::domain::money::Amount;

/// The refund routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/v1/payments/{id}/refunds", post(create_refund))
}

async fn create_refund(
    AxState(st): AxState<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<CreateRefund>, JsonRejection>,
) -> Result<(StatusCode, Json<PaymentJson>), ApiError> {
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
    st.engine.refund(&id, amount, req.reason.clone()).await?;
    let v = st.engine.view(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(resource(&st.engine, v).await?)))
}
