//! The AMS JSON messages (docs/protocol.md): the only place that knows the gateway's field names.
//! Every field is a string on the wire; deserialization is lenient (unknown fields ignored,
//! unknown enum values kept as strings).

use serde::{Deserialize, Serialize};

/// `{"currency":"CNY","value":"1234"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAmount {
    /// ISO 4217 code.
    pub currency: String,
    /// Minor units as an integer string.
    pub value: String,
}

impl From<&crate::domain::money::Amount> for WireAmount {
    fn from(a: &crate::domain::money::Amount) -> Self {
        WireAmount {
            currency: a.currency().code().to_string(),
            value: a.to_wire(),
        }
    }
}

impl WireAmount {
    /// Converts to a domain amount; `None` when the currency or value is not valid.
    pub fn to_amount(&self) -> Option<crate::domain::money::Amount> {
        crate::domain::money::Amount::from_wire(&self.value, &self.currency).ok()
    }
}

/// `result` in every response and notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WireResult {
    /// e.g. `SUCCESS`, `PAYMENT_IN_PROCESS`.
    #[serde(default)]
    pub result_code: String,
    /// `S`, `F` or `U` (anything else is treated as `U`).
    #[serde(default)]
    pub result_status: String,
    /// Human text.
    #[serde(default)]
    pub result_message: String,
}

/// The pay request body, user-presented mode (docs/protocol.md, "pay").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayRequest {
    /// Always `IN_STORE_PAYMENT`.
    pub product_code: String,
    /// Our idempotency key.
    pub payment_request_id: String,
    /// What the customer pays.
    pub payment_amount: WireAmount,
    /// `{paymentMethodType: CONNECT_WALLET, paymentMethodId: <code>}`.
    pub payment_method: PaymentMethod,
    /// `{inStorePaymentScenario: PaymentCode}`.
    pub payment_factor: PaymentFactor,
    /// Order, merchant, store, terminal env.
    pub order: Order,
    /// Where the gateway sends notifyPayment.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payment_notify_url: Option<String>,
    /// ISO 8601 with offset: the gateway does not process the pay after this time.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payment_expiry_time: Option<String>,
}

/// `paymentMethod`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentMethod {
    /// `CONNECT_WALLET`.
    pub payment_method_type: String,
    /// The scanned payment code, in clear: this struct is never logged or stored.
    pub payment_method_id: String,
}

/// `paymentFactor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFactor {
    /// `PaymentCode`.
    pub in_store_payment_scenario: String,
}

/// `order`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// The POS's order reference.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reference_order_id: Option<String>,
    /// Required by the SDK validators.
    pub order_description: String,
    /// Same as the payment amount.
    pub order_amount: WireAmount,
    /// Merchant and store identity.
    pub merchant: Merchant,
    /// Terminal id and time.
    pub env: Env,
}

/// `order.merchant`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Merchant {
    /// Sub-merchant id.
    pub reference_merchant_id: String,
    /// Merchant category code.
    #[serde(rename = "merchantMCC")]
    pub merchant_mcc: String,
    /// Merchant name.
    pub merchant_name: String,
    /// The store.
    pub store: Store,
}

/// `order.merchant.store`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Store {
    /// Store id.
    pub reference_store_id: String,
    /// Store name.
    pub store_name: String,
    /// Store category code.
    #[serde(rename = "storeMCC")]
    pub store_mcc: String,
}

/// `order.env`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Env {
    /// The terminal id.
    pub store_terminal_id: String,
    /// ISO 8601 local time at the terminal with offset.
    pub store_terminal_request_time: String,
}

/// pay response (lenient).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PayResponse {
    /// Result of the call.
    #[serde(default)]
    pub result: WireResult,
    /// Gateway's payment id.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// Echo of our id.
    #[serde(default)]
    pub payment_request_id: Option<String>,
    /// The amount charged.
    #[serde(default)]
    pub payment_amount: Option<WireAmount>,
    /// When the payment succeeded.
    #[serde(default)]
    pub payment_time: Option<String>,
    /// When the payment was created.
    #[serde(default)]
    pub payment_create_time: Option<String>,
}

/// inquiryPayment / cancel request body: by our id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ByRequestId {
    /// Our payment request id.
    pub payment_request_id: String,
}

/// inquiryPayment response (lenient). `paymentStatus` is the outcome; `result` only says
/// whether the inquiry call itself worked.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InquiryPaymentResponse {
    /// Result of the inquiry call.
    #[serde(default)]
    pub result: WireResult,
    /// `SUCCESS | FAIL | PROCESSING | CANCELLED | PENDING` (others kept as is).
    #[serde(default)]
    pub payment_status: Option<String>,
    /// Why a payment failed.
    #[serde(default)]
    pub payment_result_code: Option<String>,
    /// Text for `paymentResultCode`.
    #[serde(default)]
    pub payment_result_message: Option<String>,
    /// Echo of our id.
    #[serde(default)]
    pub payment_request_id: Option<String>,
    /// Gateway's id.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// Amount.
    #[serde(default)]
    pub payment_amount: Option<WireAmount>,
    /// When it succeeded.
    #[serde(default)]
    pub payment_time: Option<String>,
}

/// cancel response (lenient).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CancelResponse {
    /// Result.
    #[serde(default)]
    pub result: WireResult,
    /// Gateway id.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// Our id.
    #[serde(default)]
    pub payment_request_id: Option<String>,
    /// When cancelled.
    #[serde(default)]
    pub cancel_time: Option<String>,
}

/// refund request body (docs/protocol.md, "refund and inquiryRefund").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundRequest {
    /// Our idempotency key for the refund.
    pub refund_request_id: String,
    /// Gateway's id of the payment.
    pub payment_id: String,
    /// How much.
    pub refund_amount: WireAmount,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refund_reason: Option<String>,
}

/// refund response (lenient).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RefundResponse {
    /// Result.
    #[serde(default)]
    pub result: WireResult,
    /// Echo.
    #[serde(default)]
    pub refund_request_id: Option<String>,
    /// Gateway's refund id.
    #[serde(default)]
    pub refund_id: Option<String>,
    /// Payment id.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// Amount refunded.
    #[serde(default)]
    pub refund_amount: Option<WireAmount>,
    /// When.
    #[serde(default)]
    pub refund_time: Option<String>,
}

/// inquiryRefund request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InquiryRefundRequest {
    /// Our refund id.
    pub refund_request_id: String,
}

/// inquiryRefund response (lenient).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InquiryRefundResponse {
    /// Result of the call.
    #[serde(default)]
    pub result: WireResult,
    /// `SUCCESS | FAIL | PROCESSING` …
    #[serde(default)]
    pub refund_status: Option<String>,
    /// Echo.
    #[serde(default)]
    pub refund_request_id: Option<String>,
    /// Gateway's refund id.
    #[serde(default)]
    pub refund_id: Option<String>,
    /// Amount.
    #[serde(default)]
    pub refund_amount: Option<WireAmount>,
}

/// notifyPayment body (docs/protocol.md, "notifyPayment"), lenient.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NotifyPayment {
    /// `PAYMENT_RESULT` or `PAYMENT_PENDING`.
    #[serde(default)]
    pub notify_type: Option<String>,
    /// S = paid, F = failed.
    #[serde(default)]
    pub result: WireResult,
    /// Our id.
    #[serde(default)]
    pub payment_request_id: Option<String>,
    /// Gateway's id.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// Amount (must equal the request exactly).
    #[serde(default)]
    pub payment_amount: Option<WireAmount>,
    /// When created.
    #[serde(default)]
    pub payment_create_time: Option<String>,
    /// When paid.
    #[serde(default)]
    pub payment_time: Option<String>,
}

/// The exact body the merchant answers a notification with once it is durably recorded.
pub const NOTIFY_ACK: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

/// The body that makes the gateway retry a notification.
pub const NOTIFY_RETRY: &str = r#"{"result":{"resultCode":"UNKNOWN_EXCEPTION","resultStatus":"U","resultMessage":"UNKNOWN_EXCEPTION"}}"#;
