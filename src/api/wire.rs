//! The local API's JSON shapes (the outside contract in docs/design.md) and their conversion from
//! the domain and store types. The CLI reuses them.

use serde::{Deserialize, Serialize};

use crate::engine::PaymentView;
use crate::store::payments::{EventRecord, RefundRecord};

/// `POST /v1/payments` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// Decimal amount, e.g. "12.34".
    pub amount: String,
    /// ISO 4217; the terminal's currency when absent.
    #[serde(default)]
    pub currency: Option<String>,
    /// The POS's order reference.
    #[serde(default)]
    pub order_ref: Option<String>,
    /// The payment code; absent to wait for the next scan.
    #[serde(default)]
    pub code: Option<String>,
}

/// `POST /v1/payments/{id}/refunds` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    /// Decimal amount; the whole refundable amount when absent.
    #[serde(default)]
    pub amount: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// One journal event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventJson {
    /// RFC 3339 UTC.
    pub at: String,
    /// State before.
    pub from: Option<String>,
    /// State after.
    pub to: String,
    /// Why.
    pub cause: String,
    /// Gateway result code.
    pub result_code: Option<String>,
}

/// One refund.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefundJson {
    /// `refundRequestId`.
    pub refund_request_id: String,
    /// `REVERSAL` or `REQUESTED`.
    pub kind: String,
    /// Decimal amount.
    pub amount: String,
    /// State.
    pub state: String,
    /// Gateway's refund id.
    pub refund_id: Option<String>,
    /// Result code.
    pub result_code: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// The payment resource.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaymentJson {
    /// Our id.
    pub payment_request_id: String,
    /// The POS's order reference.
    pub order_ref: Option<String>,
    /// Decimal amount, e.g. "12.34".
    pub amount: String,
    /// ISO 4217.
    pub currency: String,
    /// State name.
    pub state: String,
    /// Whether the state is final for the cashier.
    pub is_final: bool,
    /// Gateway result code.
    pub result_code: Option<String>,
    /// Gateway result message.
    pub result_message: Option<String>,
    /// Gateway's payment id.
    pub payment_id: Option<String>,
    /// Masked payment code.
    pub code_masked: Option<String>,
    /// Decimal amount refunded so far.
    pub refunded_amount: String,
    /// Why a human must act.
    pub attention_reason: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
    /// The journal.
    pub events: Vec<EventJson>,
    /// Refunds of this payment.
    #[serde(default)]
    pub refunds: Vec<RefundJson>,
    /// Present while an answer for this payment cannot be recorded (the database refuses
    /// writes): the state shown is behind; do not hand over goods. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cannot_record: Option<String>,
}

/// `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorJson,
}

/// The error inside [`ErrorBody`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorJson {
    /// Stable machine code, e.g. `invalid_amount`.
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Formats epoch milliseconds as RFC 3339 UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl From<&EventRecord> for EventJson {
    fn from(e: &EventRecord) -> Self {
        EventJson {
            at: rfc3339(e.at),
            from: e.from.map(|s| s.as_str().to_string()),
            to: e.to.as_str().to_string(),
            cause: e.cause.clone(),
            result_code: e.result_code.clone(),
        }
    }
}

impl From<&RefundRecord> for RefundJson {
    fn from(r: &RefundRecord) -> Self {
        RefundJson {
            refund_request_id: r.refund_request_id.clone(),
            kind: r.kind.as_str().to_string(),
            amount: r.amount.to_decimal(),
            state: r.state.as_str().to_string(),
            refund_id: r.refund_id.clone(),
            result_code: r.result_code.clone(),
            reason: r.reason.clone(),
            created_at: rfc3339(r.created_at),
        }
    }
}

impl PaymentJson {
    /// Builds the resource from a payment, its journal and its refunds.
    pub fn new(v: &PaymentView, refunds: &[RefundRecord]) -> PaymentJson {
        let p = &v.payment;
        PaymentJson {
            payment_request_id: p.payment_request_id.clone(),
            order_ref: p.order_ref.clone(),
            amount: p.amount.to_decimal(),
            currency: p.amount.currency().code().to_string(),
            state: p.state.as_str().to_string(),
            is_final: p.state.is_final(),
            result_code: p.result_code.clone(),
            result_message: p.result_message.clone(),
            payment_id: p.payment_id.clone(),
            code_masked: p.code_masked.clone(),
            refunded_amount: p.refunded.to_decimal(),
            attention_reason: p.attention_reason.clone(),
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
            events: v.events.iter().map(EventJson::from).collect(),
            refunds: refunds.iter().map(RefundJson::from).collect(),
            cannot_record: v.recording.as_ref().map(|f| f.advice()),
        }
    }
}
