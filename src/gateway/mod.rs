//! The gateway as the engine sees it: the [`Gateway`] trait speaks the machine's own answers
//! ([`Answer`], [`Inquiry`]) with the typed [`Facts`] an answer carried. Each dialect lives in its
//! own folder and owns its wire, its result-code mapping and its client: `ams/` (Alipay+ AMS) and
//! `alipay_cn/` (the mainland open API). Shared by every dialect: `sign` (keys, RSA signing and
//! verification), `http` (one bounded HTTP exchange), [`Outcome`] (a verified success, a definitive
//! refusal, or unknown). `sandbox/` is the embedded gateway that speaks the dialects over HTTP.

pub mod alipay_cn;
pub mod ams;
pub mod http;
pub mod sandbox;
pub mod sign;

/// The AMS client under its earlier path.
pub use ams::client;
/// The AMS messages under their earlier path.
pub use ams::wire;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset};

use crate::domain::code::PaymentCode;
use crate::domain::money::Amount;

pub use crate::domain::machine::{Answer, Inquiry, Refusal};

/// The outcome of one exchange with a gateway, before a dialect's adapter interprets it
/// (rule 2: ambiguity is not failure). The engine never sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// A verified `resultStatus = S`.
    Success(T),
    /// A definitive refusal (AMS: a verified `F`, or an unsigned `F`, since the gateway omits
    /// signatures on signature errors).
    Failed {
        /// The gateway's result code.
        code: String,
        /// Its message.
        message: String,
    },
    /// Anything else: timeout, connect error, HTTP ≠ 200, unparsable answer, an answer whose
    /// signature is missing or wrong, or the gateway saying it does not know yet.
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
    /// After this the gateway must not process the pay (AMS `paymentExpiryTime`); `None`
    /// leaves it to the gateway's contract default.
    pub expires_at: Option<DateTime<FixedOffset>>,
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

/// Typed facts a gateway answer carried besides its meaning. Every field is optional: a
/// dialect fills in what its answer held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The gateway's id of the payment.
    pub payment_id: Option<String>,
    /// The gateway's id of a refund.
    pub refund_id: Option<String>,
    /// The gateway's result code that decided the answer (kept for the journal).
    pub result_code: Option<String>,
    /// Its message.
    pub result_message: Option<String>,
    /// The amount the answer reports (charged or refunded), when it gave a valid one.
    pub amount: Option<Amount>,
    /// When the gateway says the fact happened (paid, cancelled, refunded), as it wrote it.
    pub time: Option<String>,
    /// On a confirmed cancel: the gateway had charged the payment and the cancel refunded it
    /// in full (a reversal after a charge), rather than closing a payment never charged.
    pub cancel_refunded: bool,
}

/// One gateway call's answer in the machine's terms, with its facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<A> {
    /// What the answer means.
    pub answer: A,
    /// What else it said.
    pub facts: Facts,
}

impl<A> Reply<A> {
    /// An answer without facts.
    pub fn bare(answer: A) -> Reply<A> {
        Reply {
            answer,
            facts: Facts::default(),
        }
    }
}

impl Reply<Answer> {
    /// No certain answer, with why.
    pub fn unknown(why: impl Into<String>) -> Reply<Answer> {
        Reply::bare(Answer::Unknown { why: why.into() })
    }

    /// Whether the gateway answered for certain.
    pub fn is_certain(&self) -> bool {
        self.answer.is_certain()
    }
}

impl Reply<Inquiry> {
    /// No certain answer, with why.
    pub fn unknown(why: impl Into<String>) -> Reply<Inquiry> {
        Reply::bare(Inquiry::Unknown { why: why.into() })
    }

    /// Whether the gateway answered for certain.
    pub fn is_certain(&self) -> bool {
        self.answer.is_certain()
    }
}

/// The gateway as the engine sees it: every call answers in the machine's terms. Implemented
/// by each dialect's client (the real gateway and the embedded sandbox, both over HTTP) and by
/// in-memory fakes in tests. No call ever fails: a call without a certain answer is
/// `Unknown` (rule 2).
#[async_trait]
pub trait Gateway: Send + Sync + 'static {
    /// Charges the order.
    async fn pay(&self, order: &PayOrder) -> Reply<Answer>;
    /// Prepares a pay request without sending it (the default prepares nothing).
    fn prepare_pay(&self, order: PayOrder) -> PreparedPay {
        PreparedPay { order, wire: None }
    }
    /// Sends a prepared pay request (the default builds it now with [`Gateway::pay`]).
    async fn send_pay(&self, prepared: PreparedPay) -> Reply<Answer> {
        self.pay(&prepared.order).await
    }
    /// Asks for the payment's status by our `paymentRequestId`.
    async fn inquiry_payment(&self, payment_request_id: &str) -> Reply<Inquiry>;
    /// Cancels by our `paymentRequestId`.
    async fn cancel(&self, payment_request_id: &str) -> Reply<Answer>;
    /// Refunds.
    async fn refund(&self, order: &RefundOrder) -> Reply<Answer>;
    /// Asks for a refund's status: success when the refund is done, a refusal when it failed,
    /// unknown while it is processing. `refund` is the stored refund's order (our
    /// `refundRequestId` and the gateway's payment id: AMS asks by the first, the mainland
    /// by both), built from the store on every call, so a refund sent before a restart can be
    /// asked about by a fresh client.
    async fn inquiry_refund(&self, refund: &RefundOrder) -> Reply<Answer>;
}
