//! The Alipay+ AMS HTTP client: builds, signs and sends every call over reqwest (rustls,
//! certificate verification on), verifies the gateway's answer, and classifies it as an
//! [`Outcome`] carrying the AMS response (docs/protocol.md, rules 2 and 9). What an answer
//! means to the machine is `ams::answer`'s job; `ams/mod.rs` joins the two into the `Gateway`.
//!
//! # Outcome rules
//! Only a verified `S` is a success. A verified `F`, or an `F` without any signature (the
//! gateway omits signatures when it rejects ours), is a failure. Everything else is unknown:
//! `U`, a timeout, a connection error, HTTP ≠ 200, unparsable JSON, a missing or wrong
//! signature on `S`/`U`, a *wrong* signature on `F`, a `resultStatus` other than S/F/U.
//!
//! # Secrets
//! The payment code leaves this module only inside the serialized pay body; logs carry the
//! masked code. Keys and the agent token are never logged (their `Debug` is masked).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::SecondsFormat;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::wire;
use crate::config::{check_base_url, Config, Secret};
use crate::gateway::http::{send, RawResponse};
use crate::gateway::sign::{Message, PrivateKey, PublicKey, SignError};
use crate::gateway::{Outcome, PayOrder, PreparedPay, RefundOrder, SignedRequest};

/// Client ids with this prefix talk to the sandbox paths (`/ams/sandbox/api/…`).
pub const SANDBOX_CLIENT_PREFIX: &str = "SANDBOX_";

/// The client id used with the embedded sandbox when `[gateway] client_id` is not set.
pub const EMBEDDED_SANDBOX_CLIENT_ID: &str = "SANDBOX_POSD_LOCAL";

/// The AMS calls a terminal makes (docs/protocol.md, "Paths and hosts").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `payments/pay`.
    Pay,
    /// `payments/inquiryPayment`.
    InquiryPayment,
    /// `payments/cancel`.
    Cancel,
    /// `payments/refund`.
    Refund,
    /// `payments/inquiryRefund`.
    InquiryRefund,
}

impl Operation {
    /// Every operation, in declaration order (`op as usize` is its index).
    pub const ALL: [Operation; 5] = [
        Operation::Pay,
        Operation::InquiryPayment,
        Operation::Cancel,
        Operation::Refund,
        Operation::InquiryRefund,
    ];

    /// The last path segment, e.g. `inquiryPayment`.
    pub fn endpoint(self) -> &'static str {
        match self {
            Operation::Pay => "pay",
            Operation::InquiryPayment => "inquiryPayment",
            Operation::Cancel => "cancel",
            Operation::Refund => "refund",
            Operation::InquiryRefund => "inquiryRefund",
        }
    }

    /// Name for logs and metrics (snake case).
    pub fn label(self) -> &'static str {
        match self {
            Operation::Pay => "pay",
            Operation::InquiryPayment => "inquiry_payment",
            Operation::Cancel => "cancel",
            Operation::Refund => "refund",
            Operation::InquiryRefund => "inquiry_refund",
        }
    }

    /// The AMS path for a client id: `/ams/api/v1/payments/<op>`, or
    /// `/ams/sandbox/api/v1/payments/<op>` for `SANDBOX_` client ids.
    pub fn path(self, client_id: &str) -> String {
        let api = if client_id.starts_with(SANDBOX_CLIENT_PREFIX) {
            "/ams/sandbox/api/v1/payments/"
        } else {
            "/ams/api/v1/payments/"
        };
        format!("{api}{}", self.endpoint())
    }
}

/// Merchant, store and terminal identity sent in every pay request (`order.merchant`, `order.env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantIdentity {
    /// `referenceMerchantId`.
    pub merchant_id: String,
    /// `merchantName`.
    pub merchant_name: String,
    /// `merchantMCC`.
    pub merchant_mcc: String,
    /// `referenceStoreId`.
    pub store_id: String,
    /// `storeName`.
    pub store_name: String,
    /// `storeMCC`.
    pub store_mcc: String,
    /// `storeTerminalId`.
    pub terminal_id: String,
}

/// Everything the client needs, as plain values (tests build it directly).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Scheme, host and port of the gateway, e.g. `https://open-sea-global.alipay.com`.
    pub base_url: String,
    /// Our client id (`Client-Id` header and signed content).
    pub client_id: String,
    /// `keyVersion` in the `Signature` header.
    pub key_version: String,
    /// The merchant private key that signs requests.
    pub merchant_key: Arc<PrivateKey>,
    /// The gateway public key that verifies answers.
    pub gateway_key: PublicKey,
    /// `paymentNotifyUrl` in pay requests.
    pub notify_url: Option<String>,
    /// ISV mode: sent as `Agent-Token`.
    pub agent_token: Option<Secret>,
    /// Allows `http://` to a loopback host (test gateways, the embedded sandbox).
    pub insecure_http: bool,
    /// TCP + TLS connect deadline.
    pub connect_timeout: Duration,
    /// Whole-call deadline of pay.
    pub pay_timeout: Duration,
    /// Whole-call deadline of inquiryPayment.
    pub inquiry_timeout: Duration,
    /// Whole-call deadline of cancel, refund and inquiryRefund.
    pub cancel_timeout: Duration,
    /// Who we are in the pay request.
    pub merchant: MerchantIdentity,
}

impl ClientSettings {
    /// Settings from the config. `base_url_override` replaces `[gateway] base_url` (the
    /// embedded sandbox passes its loopback URL). With `kind = "sandbox"` plain http to a
    /// loopback address is allowed and a missing client id defaults to
    /// [`EMBEDDED_SANDBOX_CLIENT_ID`].
    pub fn from_config(
        config: &Config,
        merchant_key: Arc<PrivateKey>,
        gateway_key: PublicKey,
        base_url_override: Option<String>,
    ) -> Result<ClientSettings, ClientError> {
        use crate::config::GatewayKind;
        let g = &config.gateway;
        let sandbox = g.kind == GatewayKind::Sandbox;
        let base_url = base_url_override
            .or_else(|| g.base_url.clone())
            .ok_or(ClientError::Missing("gateway.base_url"))?;
        let client_id = match g.client_id.as_deref().filter(|s| !s.is_empty()) {
            Some(id) => id.to_string(),
            None if sandbox => EMBEDDED_SANDBOX_CLIENT_ID.to_string(),
            None => return Err(ClientError::Missing("gateway.client_id")),
        };
        let t = &config.terminal;
        Ok(ClientSettings {
            base_url,
            client_id,
            key_version: g.key_version.clone(),
            merchant_key,
            gateway_key,
            notify_url: g.notify_url.clone(),
            agent_token: g.agent_token.clone(),
            // check_base_url still refuses http to anything but loopback.
            insecure_http: g.insecure_http || sandbox,
            connect_timeout: g.connect_timeout.0,
            pay_timeout: config.flow.pay_timeout.0,
            inquiry_timeout: config.flow.inquiry_timeout.0,
            cancel_timeout: config.flow.cancel_timeout.0,
            merchant: MerchantIdentity {
                merchant_id: t.merchant_id.clone(),
                merchant_name: t.merchant_name.clone(),
                merchant_mcc: t.merchant_mcc.clone(),
                store_id: t.store_id.clone(),
                store_name: t.store_name.clone(),
                store_mcc: t.store_mcc.clone(),
                terminal_id: t.id.clone(),
            },
        })
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("gateway base url: {0}")]
    BaseUrl(String),
    #[error("{0} is required to reach the gateway")]
    Missing(&'static str),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// One finished gateway call, handed to the observer (metrics hook).
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Which call.
    pub operation: Operation,
    /// `success`, `failed` or `unknown`.
    pub outcome: &'static str,
    /// `result.resultCode` when the gateway answered with one.
    pub result_code: Option<String>,
    /// Wall time from signing to the mapped outcome.
    pub elapsed: Duration,
}

/// A callback run after every call (e.g. to feed Prometheus counters). Must be cheap.
pub type CallObserver = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// The AMS client. Cheap to share behind an `Arc`; one connection pool per client.
pub struct AmsClient {
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    /// Each operation's URL (base and path), parsed once: at [`Operation`]`as usize`. The
    /// path signed is this URL's, so it is the path sent.
    urls: Vec<reqwest::Url>,
    settings: ClientSettings,
    observer: Option<CallObserver>,
}

impl fmt::Debug for AmsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmsClient")
            .field("base", &self.base)
            .field("client_id", &self.settings.client_id)
            .finish_non_exhaustive()
    }
}

/// What the response signature check found.
enum Verification {
    Verified,
    Unsigned,
    Invalid(String),
}

/// Just `result`, read first to decide what the answer means.
#[derive(Deserialize)]
struct Envelope {
    result: Option<wire::WireResult>,
}

impl AmsClient {
    /// Builds a client. Refuses a base URL that is not `https://` (or `http://` to a loopback
    /// host with `insecure_http`), or that carries a query or fragment.
    pub fn new(settings: ClientSettings) -> Result<AmsClient, ClientError> {
        AmsClient::new_with_roots(settings, None)
    }

    /// [`AmsClient::new`], also trusting the certificates of a PEM bundle as roots (a private
    /// CA, e.g. a hub's; `gateway.ca_file`). Certificate verification stays on.
    pub fn new_with_roots(
        settings: ClientSettings,
        extra_roots_pem: Option<&[u8]>,
    ) -> Result<AmsClient, ClientError> {
        check_base_url(&settings.base_url, settings.insecure_http).map_err(ClientError::BaseUrl)?;
        let url = reqwest::Url::parse(&settings.base_url)
            .map_err(|e| ClientError::BaseUrl(e.to_string()))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ClientError::BaseUrl(format!(
                "{:?} must not carry a query or fragment",
                settings.base_url
            )));
        }
        let base = settings.base_url.trim_end_matches('/').to_string();
        let loopback = url.scheme() == "http";
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            // A redirect would change the signed path; treat it as an unexpected status.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("posd/", env!("CARGO_PKG_VERSION")))
            .https_only(!settings.insecure_http);
        if loopback {
            // http is only ever allowed to loopback (checked above); never send it to a proxy.
            builder = builder.no_proxy();
        }
        if let Some(pem) = extra_roots_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        // Parsed here, not on every call (the parse, with its host's IDNA mapping, showed in
        // the sale bench's profile of posd's worker).
        let urls = Operation::ALL
            .iter()
            .map(|op| {
                reqwest::Url::parse(&format!("{base}{}", op.path(&settings.client_id)))
                    .map_err(|e| ClientError::BaseUrl(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AmsClient {
            http: builder.build()?,
            base,
            urls,
            settings,
            observer: None,
        })
    }

    /// Installs a callback run after every call with its operation, outcome and latency.
    pub fn with_observer(mut self, observer: CallObserver) -> AmsClient {
        self.observer = Some(observer);
        self
    }

    /// The settings the client was built with.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The path requested (and signed) for an operation, base-URL path included.
    pub fn request_path(&self, op: Operation) -> &str {
        self.urls[op as usize].path()
    }

    /// The pay request body for an order (docs/protocol.md, "pay"). Contains the clear code: never
    /// log it.
    pub fn pay_request(&self, order: &PayOrder) -> wire::PayRequest {
        let m = &self.settings.merchant;
        let amount = wire::WireAmount::from(&order.amount);
        wire::PayRequest {
            product_code: "IN_STORE_PAYMENT".into(),
            payment_request_id: order.payment_request_id.clone(),
            payment_amount: amount.clone(),
            payment_method: wire::PaymentMethod {
                payment_method_type: "CONNECT_WALLET".into(),
                payment_method_id: order.code.expose().to_string(),
            },
            payment_factor: wire::PaymentFactor {
                in_store_payment_scenario: "PaymentCode".into(),
            },
            order: wire::Order {
                // The gateway wants an order reference; without one from the POS our own
                // request id is unique and ties the order to this attempt.
                reference_order_id: Some(
                    order
                        .order_ref
                        .clone()
                        .unwrap_or_else(|| order.payment_request_id.clone()),
                ),
                order_description: order.description.clone(),
                order_amount: amount,
                merchant: wire::Merchant {
                    reference_merchant_id: m.merchant_id.clone(),
                    merchant_mcc: m.merchant_mcc.clone(),
                    merchant_name: m.merchant_name.clone(),
                    store: wire::Store {
                        reference_store_id: m.store_id.clone(),
                        store_name: m.store_name.clone(),
                        store_mcc: m.store_mcc.clone(),
                    },
                },
                env: wire::Env {
                    store_terminal_id: m.terminal_id.clone(),
                    store_terminal_request_time: order
                        .terminal_time
                        .to_rfc3339_opts(SecondsFormat::Secs, false),
                },
            },
            payment_notify_url: self.settings.notify_url.clone(),
            payment_expiry_time: order
                .expires_at
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false)),
        }
    }

    /// Signs `body` for `op` at `request_time` and returns the `Signature` header value.
    pub fn sign(&self, op: Operation, request_time: &str, body: &[u8]) -> String {
        let path = self.request_path(op);
        let msg = Message {
            method: "POST",
            uri: path,
            client_id: &self.settings.client_id,
            time: request_time,
            body,
        };
        self.settings
            .merchant_key
            .sign_header(&self.settings.key_version, &msg)
    }

    fn deadline(&self, op: Operation) -> Duration {
        match op {
            Operation::Pay => self.settings.pay_timeout,
            Operation::InquiryPayment => self.settings.inquiry_timeout,
            Operation::Cancel | Operation::Refund | Operation::InquiryRefund => {
                self.settings.cancel_timeout
            }
        }
    }

    /// Serializes once, signs those bytes, sends them, and maps the answer.
    async fn call<Req, Resp>(&self, op: Operation, id: &str, request: &Req) -> Outcome<Resp>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        match self.prepare(op, request) {
            Ok(signed) => self.call_signed(op, id, signed).await,
            // Our own structs always serialize; still, never panic on the money path.
            Err(why) => Outcome::Unknown { why },
        }
    }

    /// Serializes a request once and signs exactly those bytes.
    fn prepare<Req: Serialize>(
        &self,
        op: Operation,
        request: &Req,
    ) -> Result<SignedRequest, String> {
        let body = serde_json::to_vec(request)
            .map_err(|e| format!("request not sent: cannot serialize: {e}"))?;
        let request_time = epoch_millis();
        let signature = self.sign(op, &request_time, &body);
        Ok(SignedRequest {
            body,
            request_time,
            signature,
        })
    }

    /// Sends a signed request, maps the answer, logs and observes it.
    async fn call_signed<Resp: DeserializeOwned>(
        &self,
        op: Operation,
        id: &str,
        signed: SignedRequest,
    ) -> Outcome<Resp> {
        let started = Instant::now();
        let (outcome, result_code) = self.exchange(op, signed).await;
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        match &outcome {
            Outcome::Unknown { why } => warn!(
                operation = op.label(),
                request_id = id,
                outcome = outcome.label(),
                result_code = result_code.as_deref().unwrap_or(""),
                elapsed_ms,
                why = why.as_str(),
                "gateway outcome unknown"
            ),
            _ => info!(
                operation = op.label(),
                request_id = id,
                outcome = outcome.label(),
                result_code = result_code.as_deref().unwrap_or(""),
                elapsed_ms,
                "gateway answered"
            ),
        }
        if let Some(observer) = &self.observer {
            observer(&CallRecord {
                operation: op,
                outcome: outcome.label(),
                result_code: result_code.clone(),
                elapsed,
            });
        }
        outcome
    }

    /// The signed POST of one operation, with its headers and deadline (one place for the
    /// envelope, shared by the typed calls and the hub's forwarding).
    fn http_request(
        &self,
        op: Operation,
        request_time: &str,
        signature: String,
        deadline: Duration,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(self.urls[op as usize].clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=UTF-8",
            )
            .header("Client-Id", &self.settings.client_id)
            .header("Request-Time", request_time)
            .header("Signature", signature)
            .timeout(deadline)
            .body(body);
        if let Some(token) = &self.settings.agent_token {
            req = req.header("Agent-Token", token.expose());
        }
        req
    }

    /// One HTTP exchange plus interpretation; also returns the result code for logs.
    async fn exchange<Resp: DeserializeOwned>(
        &self,
        op: Operation,
        signed: SignedRequest,
    ) -> (Outcome<Resp>, Option<String>) {
        let path = self.request_path(op);
        let SignedRequest {
            body,
            request_time,
            signature,
        } = signed;
        let deadline = self.deadline(op);
        let req = self.http_request(op, &request_time, signature, deadline, body);
        debug!(
            operation = op.label(),
            path,
            deadline_ms = deadline.as_millis() as u64,
            "sending gateway request"
        );
        // reqwest's timeout covers connect to end of body; the outer one also bounds our own
        // body read, so nothing in here can outlive the deadline.
        let raw = match tokio::time::timeout(deadline, send(req)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(why)) => return (Outcome::Unknown { why }, None),
            Err(_) => {
                return (
                    Outcome::Unknown {
                        why: format!("timed out after {} ms", deadline.as_millis()),
                    },
                    None,
                )
            }
        };
        self.interpret(path, raw)
    }

    /// Maps a raw answer to an outcome (the rules in the module doc).
    fn interpret<Resp: DeserializeOwned>(
        &self,
        path: &str,
        raw: RawResponse,
    ) -> (Outcome<Resp>, Option<String>) {
        let unknown = |why: String| Outcome::Unknown { why };
        if raw.status != 200 {
            return (unknown(format!("http status {}", raw.status)), None);
        }
        let result = match serde_json::from_slice::<Envelope>(&raw.body) {
            Ok(Envelope { result: Some(r) }) => r,
            Ok(Envelope { result: None }) => {
                return (unknown("answer has no result object".into()), None)
            }
            Err(e) => return (unknown(format!("answer is not AMS JSON: {e}")), None),
        };
        let code = Some(result.result_code.clone());
        let verification = self.verify(path, &raw);
        let outcome = match (result.result_status.as_str(), verification) {
            ("S", Verification::Verified) => match serde_json::from_slice::<Resp>(&raw.body) {
                Ok(resp) => Outcome::Success(resp),
                Err(e) => unknown(format!("verified S answer does not parse: {e}")),
            },
            ("F", Verification::Verified | Verification::Unsigned) => Outcome::Failed {
                code: result.result_code,
                message: result.result_message,
            },
            ("S", Verification::Unsigned) => unknown("S answer is unsigned".into()),
            ("S" | "F", Verification::Invalid(why)) => unknown(format!(
                "{} answer with a bad signature: {why}",
                result.result_status
            )),
            ("U", _) => unknown(format!(
                "gateway said U: {} {}",
                result.result_code, result.result_message
            )),
            (other, _) => unknown(format!("unexpected resultStatus {other:?}")),
        };
        (outcome, code)
    }

    fn verify(&self, path: &str, raw: &RawResponse) -> Verification {
        let Some(header) = raw.signature.as_deref() else {
            return Verification::Unsigned;
        };
        let Some(time) = raw.response_time.as_deref() else {
            return Verification::Invalid("signed answer without response-time".into());
        };
        let msg = Message {
            method: "POST",
            uri: path,
            client_id: raw.client_id.as_deref().unwrap_or(&self.settings.client_id),
            time,
            body: &raw.body,
        };
        match self.settings.gateway_key.verify_header(&msg, header) {
            Ok(()) => Verification::Verified,
            Err(e) => Verification::Invalid(e.to_string()),
        }
    }
}

/// `Request-Time`: epoch milliseconds (docs/protocol.md, "HTTP conventions").
fn epoch_millis() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
        .to_string()
}

/// The AMS calls, each answering the verified envelope with its AMS response (the `Gateway`
/// impl in `ams/mod.rs` interprets them).
impl AmsClient {
    /// `POST …/payments/pay`.
    pub async fn pay(&self, order: &PayOrder) -> Outcome<wire::PayResponse> {
        debug!(
            payment_request_id = order.payment_request_id.as_str(),
            code = %order.code,
            amount = %order.amount,
            "pay"
        );
        let body = self.pay_request(order);
        self.call(Operation::Pay, &order.payment_request_id, &body)
            .await
    }

    /// Serializes and signs a pay request now; [`AmsClient::send_pay`] sends those bytes.
    pub fn prepare_pay(&self, order: PayOrder) -> PreparedPay {
        let wire = self.prepare(Operation::Pay, &self.pay_request(&order)).ok();
        PreparedPay { order, wire }
    }

    /// Sends a prepared pay request byte for byte.
    pub async fn send_pay(&self, prepared: PreparedPay) -> Outcome<wire::PayResponse> {
        let PreparedPay { order, wire } = prepared;
        debug!(
            payment_request_id = order.payment_request_id.as_str(),
            code = %order.code,
            amount = %order.amount,
            "pay (prepared)"
        );
        match wire {
            Some(signed) => {
                self.call_signed(Operation::Pay, &order.payment_request_id, signed)
                    .await
            }
            None => self.pay(&order).await,
        }
    }

    /// `POST …/payments/inquiryPayment` by `paymentRequestId`.
    pub async fn inquiry_payment(
        &self,
        payment_request_id: &str,
    ) -> Outcome<wire::InquiryPaymentResponse> {
        let body = wire::ByRequestId {
            payment_request_id: payment_request_id.to_string(),
        };
        self.call(Operation::InquiryPayment, payment_request_id, &body)
            .await
    }

    /// `POST …/payments/cancel` by `paymentRequestId`.
    pub async fn cancel(&self, payment_request_id: &str) -> Outcome<wire::CancelResponse> {
        let body = wire::ByRequestId {
            payment_request_id: payment_request_id.to_string(),
        };
        self.call(Operation::Cancel, payment_request_id, &body)
            .await
    }

    /// `POST …/payments/refund`.
    pub async fn refund(&self, order: &RefundOrder) -> Outcome<wire::RefundResponse> {
        let body = wire::RefundRequest {
            refund_request_id: order.refund_request_id.clone(),
            payment_id: order.payment_id.clone(),
            refund_amount: wire::WireAmount::from(&order.amount),
            refund_reason: order.reason.clone(),
        };
        self.call(Operation::Refund, &order.refund_request_id, &body)
            .await
    }

    /// `POST …/payments/inquiryRefund` by `refundRequestId`.
    pub async fn inquiry_refund(
        &self,
        refund_request_id: &str,
    ) -> Outcome<wire::InquiryRefundResponse> {
        let body = wire::InquiryRefundRequest {
            refund_request_id: refund_request_id.to_string(),
        };
        self.call(Operation::InquiryRefund, refund_request_id, &body)
            .await
    }
}

/// Verifies a notifyPayment from the gateway (docs/protocol.md, "notifyPayment"): `path` is the
/// path the notification was posted to (query string included if any), the other values are the
/// `client-id`, `request-time` and `signature` headers and the raw body, byte for byte.
pub fn verify_notification(
    gateway_key: &PublicKey,
    path: &str,
    client_id: &str,
    request_time: &str,
    body: &[u8],
    signature_header: &str,
) -> Result<(), SignError> {
    let msg = Message {
        method: "POST",
        uri: path,
        client_id,
        time: request_time,
        body,
    };
    gateway_key.verify_header(&msg, signature_header)
}

/// What the signature check of a forwarded answer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerSignature {
    /// Signed, and it verifies with the gateway's key.
    Verified,
    /// No `signature` header.
    Unsigned,
    /// Signed, but it does not verify (or the header is malformed).
    Invalid(String),
}

/// The answer of a forwarded call as the gateway sent it, byte for byte, with its signature
/// checked: the hub relays AMS bodies to its terminals and applies the outcome rules above.
#[derive(Debug)]
pub struct ForwardedAnswer {
    /// HTTP status.
    pub status: u16,
    /// The raw body.
    pub body: Vec<u8>,
    /// What the signature check found.
    pub signature: AnswerSignature,
}

impl AmsClient {
    /// Signs `body` exactly as given, sends it to `op` within that operation's deadline and
    /// returns the answer with its signature checked, or why no answer arrived (the hub's
    /// forwarding path: the bodies are the terminals', not built here).
    pub async fn forward(&self, op: Operation, body: Vec<u8>) -> Result<ForwardedAnswer, String> {
        let request_time = epoch_millis();
        let signature = self.sign(op, &request_time, &body);
        let path = self.request_path(op);
        let deadline = self.deadline(op);
        let req = self.http_request(op, &request_time, signature, deadline, body);
        let raw = match tokio::time::timeout(deadline, send(req)).await {
            Ok(Ok(raw)) => raw,
            Ok(Err(why)) => return Err(why),
            Err(_) => return Err(format!("timed out after {} ms", deadline.as_millis())),
        };
        let signature = match self.verify(path, &raw) {
            Verification::Verified => AnswerSignature::Verified,
            Verification::Unsigned => AnswerSignature::Unsigned,
            Verification::Invalid(why) => AnswerSignature::Invalid(why),
        };
        Ok(ForwardedAnswer {
            status: raw.status,
            body: raw.body,
            signature,
        })
    }
}

#[doc(hidden)]
pub mod fuzz_entry {
    //! The answer interpretation as one call, for the fuzz target and its corpus replay.

    use super::{wire, AmsClient, Operation, Outcome, RawResponse};

    /// Interprets a raw answer to `op` exactly as a live call would; returns the outcome's
    /// label (`success`, `failed`, `unknown`) and the result code read from the answer.
    pub fn interpret(
        client: &AmsClient,
        op: Operation,
        status: u16,
        signature: Option<String>,
        response_time: Option<String>,
        client_id: Option<String>,
        body: Vec<u8>,
    ) -> (&'static str, Option<String>) {
        let path = client.request_path(op);
        let raw = RawResponse {
            status,
            signature,
            response_time,
            client_id,
            body,
        };
        fn label<T>((o, code): (Outcome<T>, Option<String>)) -> (&'static str, Option<String>) {
            (o.label(), code)
        }
        match op {
            Operation::Pay => label(client.interpret::<wire::PayResponse>(path, raw)),
            Operation::InquiryPayment => {
                label(client.interpret::<wire::InquiryPaymentResponse>(path, raw))
            }
            Operation::Cancel => label(client.interpret::<wire::CancelResponse>(path, raw)),
            Operation::Refund => label(client.interpret::<wire::RefundResponse>(path, raw)),
            Operation::InquiryRefund => {
                label(client.interpret::<wire::InquiryRefundResponse>(path, raw))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_client_id() {
        assert_eq!(Operation::Pay.path("2188"), "/ams/api/v1/payments/pay");
        assert_eq!(
            Operation::InquiryPayment.path("SANDBOX_X"),
            "/ams/sandbox/api/v1/payments/inquiryPayment"
        );
        assert_eq!(
            Operation::InquiryRefund.path("X"),
            "/ams/api/v1/payments/inquiryRefund"
        );
        // The prefix is case-sensitive, as in the official SDKs.
        assert_eq!(
            Operation::Cancel.path("sandbox_x"),
            "/ams/api/v1/payments/cancel"
        );
    }

    #[test]
    fn every_operation_is_at_its_index_in_all() {
        for (i, op) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(op as usize, i, "{op:?}");
        }
    }

    #[test]
    fn request_time_is_epoch_millis() {
        let t = epoch_millis();
        assert_eq!(t.len(), 13, "{t}");
        assert!(t.bytes().all(|b| b.is_ascii_digit()));
    }
}
