//! The Alipay+ AMS gateway: signing, wire types, the client and the embedded sandbox.
//!
//! The engine sees the gateway only through the [`Gateway`] trait and the typed
//! [`Outcome`]: it branches on `Success` / `Failed` / `Unknown`, never on strings.

pub mod alipay_cn;
pub mod client;
pub mod sandbox;
pub mod sign;
pub mod wire;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset};

use crate::domain::code::PaymentCode;
use crate::domain::money::Amount;

/// The outcome of one gateway call (rule 2: ambiguity is not failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// A verified `resultStatus = S`.
    Success(T),
    /// A verified `F`, or an unsigned `F` (the gateway omits signatures on signature errors).
    Failed {
        /// `result.resultCode`.
        code: String,
        /// `result.resultMessage`.
        message: String,
    },
    /// Anything else: verified `U`, timeout, connect error, HTTP ≠ 200, unparsable JSON, or an
    /// `S`/`U` answer whose signature is missing or wrong.
    Unknown {
        /// What happened, for the journal and the logs.
        why: String,
    },
}

impl<T> Outcome<T> {
    /// Short label for logs and metrics: `success`, `failed`, `unknown`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Failed { .. } => "failed",
            Outcome::Unknown { .. } => "unknown",
        }
    }
}

/// What the engine asks the gateway to charge. The client adds merchant and store identity.
#[derive(Debug, Clone)]
pub struct PayOrder {
    /// Our idempotency key, committed before the call.
    pub payment_request_id: String,
    /// The amount to charge.
    pub amount: Amount,
    /// The scanned code (masked in `Debug`).
    pub code: PaymentCode,
    /// The POS's order reference, sent as `referenceOrderId`.
    pub order_ref: Option<String>,
    /// `orderDescription`.
    pub description: String,
    /// Terminal-local request time, sent as `storeTerminalRequestTime`.
    pub terminal_time: DateTime<FixedOffset>,
}

/// A refund the engine asks for; identical on every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOrder {
    /// Our idempotency key for the refund, committed before the call.
    pub refund_request_id: String,
    /// The gateway's id of the payment.
    pub payment_id: String,
    /// How much.
    pub amount: Amount,
    /// Why (optional, ≤ 256 chars).
    pub reason: Option<String>,
}

/// A pay request made ready ahead of the send: the engine prepares it (serialize + sign)
/// while the intent's commit is still on its way to disk, and sends it only once that commit
/// has returned (rule 1). `wire` is `None` for gateways that build requests when sending.
#[derive(Debug)]
pub struct PreparedPay {
    /// What is being charged.
    pub order: PayOrder,
    /// The exact bytes and headers to send, signed.
    pub wire: Option<SignedRequest>,
}

/// A serialized, signed request: sent byte for byte as prepared.
#[derive(Clone)]
pub struct SignedRequest {
    /// The body, serialized once.
    pub body: Vec<u8>,
    /// The `Request-Time` inside the signature.
    pub request_time: String,
    /// The `Signature` header value.
    pub signature: String,
}

impl std::fmt::Debug for SignedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body holds the clear payment code: never print it.
        write!(
            f,
            "SignedRequest({} bytes, time {})",
            self.body.len(),
            self.request_time
        )
    }
}

/// The gateway as the engine sees it. Implemented by the AMS client (real gateway and the
/// embedded sandbox, both over HTTP) and by in-memory fakes in tests.
#[async_trait]
pub trait Gateway: Send + Sync + 'static {
    /// `POST …/payments/pay`.
    async fn pay(&self, order: &PayOrder) -> Outcome<wire::PayResponse>;
    /// Prepares a pay request without sending it (the default prepares nothing).
    fn prepare_pay(&self, order: PayOrder) -> PreparedPay {
        PreparedPay { order, wire: None }
    }
    /// Sends a prepared pay request (the default builds it now with [`Gateway::pay`]).
    async fn send_pay(&self, prepared: PreparedPay) -> Outcome<wire::PayResponse> {
        self.pay(&prepared.order).await
    }
    /// `POST …/payments/inquiryPayment` by `paymentRequestId`.
    async fn inquiry_payment(
        &self,
        payment_request_id: &str,
    ) -> Outcome<wire::InquiryPaymentResponse>;
    /// `POST …/payments/cancel` by `paymentRequestId`.
    async fn cancel(&self, payment_request_id: &str) -> Outcome<wire::CancelResponse>;
    /// `POST …/payments/refund`.
    async fn refund(&self, order: &RefundOrder) -> Outcome<wire::RefundResponse>;
    /// `POST …/payments/inquiryRefund` by `refundRequestId`.
    async fn inquiry_refund(&self, refund_request_id: &str)
        -> Outcome<wire::InquiryRefundResponse>;
}
