//! The mainland HTTP client: builds the form for each `alipay.trade.*` call, signs it RSA2,
//! POSTs it over reqwest (rustls), finds and verifies the answer in the raw bytes, and hands
//! the reading to [`answer`](super::answer) for its meaning.
//!
//! The clear payment code leaves this module only inside the signed form body; logs carry
//! the method, our ids, the result code and the timing, never the body or a key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{info, warn};

use super::answer::{self, Cancel, Reading, RefundStatus, Signed};
use super::sign::{extract, sign_content, sign_rsa2, verify_extracted};
use super::wire::{self, Method};
use crate::config::check_base_url;
use crate::domain::machine::{Answer, Inquiry, Refusal};
use crate::gateway::ams::client::{CallObserver, CallRecord, Operation};
use crate::gateway::http;
use crate::gateway::sign::{PrivateKey, PublicKey};
use crate::gateway::{Facts, PayOrder, RefundOrder, Reply};

/// How long a bar-code trade stays open at the gateway by default (`timeout_express`).
pub const DEFAULT_TRADE_TIMEOUT: &str = "5m";

/// Everything the client needs, as plain values (tests build it directly).
#[derive(Clone)]
pub struct CnSettings {
    /// The full gateway URL, e.g. `https://openapi.alipay.com/gateway.do`.
    pub base_url: String,
    /// `app_id`.
    pub app_id: String,
    /// Signs requests (the app private key).
    pub merchant_key: Arc<PrivateKey>,
    /// Verifies answers and notifications (the Alipay public key, not the app's own).
    pub alipay_key: PublicKey,
    /// `notify_url` of pay requests.
    pub notify_url: Option<String>,
    /// ISV: `app_auth_token`.
    pub app_auth_token: Option<String>,
    /// `store_id` in pay.
    pub store_id: Option<String>,
    /// `terminal_id` in pay.
    pub terminal_id: Option<String>,
    /// `timeout_express` in pay.
    pub trade_timeout: String,
    /// Allows `http://` to a loopback host (fake gateways, the embedded sandbox).
    pub insecure_http: bool,
    /// TCP + TLS connect deadline.
    pub connect_timeout: Duration,
    /// Whole-call deadline of pay.
    pub pay_timeout: Duration,
    /// Whole-call deadline of query.
    pub inquiry_timeout: Duration,
    /// Whole-call deadline of cancel, refund and refund query.
    pub cancel_timeout: Duration,
}

impl std::fmt::Debug for CnSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CnSettings")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .field("isv", &self.app_auth_token.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CnClientError {
    #[error("gateway base url: {0}")]
    BaseUrl(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A signed form, ready to send byte for byte (prepared while the intent commits).
#[derive(Clone)]
pub struct SignedForm {
    /// Which call.
    pub method: Method,
    /// The form body, `sign` included. Holds the clear code for pay: never log it.
    pub body: String,
}

impl std::fmt::Debug for SignedForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SignedForm({}, {} bytes)",
            self.method.name(),
            self.body.len()
        )
    }
}

/// The mainland client. Cheap to share behind an `Arc`.
pub struct CnClient {
    http: reqwest::Client,
    /// The gateway's URL, parsed once (not on every call).
    url: reqwest::Url,
    settings: CnSettings,
    observer: Option<CallObserver>,
}

impl std::fmt::Debug for CnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CnClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl CnClient {
    /// Builds a client; refuses a base URL that is not `https://` (or `http://` to loopback
    /// with `insecure_http`) or that carries a query or fragment.
    pub fn new(settings: CnSettings) -> Result<CnClient, CnClientError> {
        CnClient::new_with_roots(settings, None)
    }

    /// [`CnClient::new`], also trusting the certificates of a PEM bundle as roots (a private
    /// CA, e.g. a hub's or a private gateway's; `gateway.ca_file`), as the AMS client does.
    /// Certificate verification stays on; the system roots stay trusted.
    pub fn new_with_roots(
        settings: CnSettings,
        extra_roots_pem: Option<&[u8]>,
    ) -> Result<CnClient, CnClientError> {
        check_base_url(&settings.base_url, settings.insecure_http)
            .map_err(CnClientError::BaseUrl)?;
        let url = reqwest::Url::parse(&settings.base_url)
            .map_err(|e| CnClientError::BaseUrl(e.to_string()))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(CnClientError::BaseUrl(format!(
                "{:?} must not carry a query or fragment (every parameter goes in the form body)",
                settings.base_url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("posd/", env!("CARGO_PKG_VERSION")))
            .https_only(!settings.insecure_http);
        if url.scheme() == "http" {
            builder = builder.no_proxy();
        }
        if let Some(pem) = extra_roots_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(CnClient {
            http: builder.build()?,
            url,
            settings,
            observer: None,
        })
    }

    /// Installs a callback run after every call (the daemon's gateway-call metrics), with the
    /// call under the operation names the metrics share with the AMS dialect.
    pub fn with_observer(mut self, observer: CallObserver) -> CnClient {
        self.observer = Some(observer);
        self
    }

    /// The settings the client was built with.
    pub fn settings(&self) -> &CnSettings {
        &self.settings
    }

    /// Signs a call's parameters and returns the form body with `sign` appended.
    pub fn sign(&self, method: Method, biz_content: &str) -> SignedForm {
        let ts = wire::timestamp(Utc::now());
        let common = wire::Common {
            app_id: &self.settings.app_id,
            notify_url: self.settings.notify_url.as_deref(),
            app_auth_token: self.settings.app_auth_token.as_deref(),
            timestamp: &ts,
        };
        let mut params = wire::params(method, &common, biz_content);
        let content = sign_content(params.iter(), &["sign"], true);
        params.push("sign", sign_rsa2(&self.settings.merchant_key, &content));
        SignedForm {
            method,
            body: params.form_body(),
        }
    }

    /// The pay's `biz_content`; `Err` says why the order cannot go on the mainland wire (it
    /// is then not sent at all).
    pub fn pay_biz(&self, order: &PayOrder) -> Result<String, String> {
        if !wire::is_trade_no(&order.payment_request_id) {
            return Err(format!(
                "paymentRequestId {:?} is not 1-64 letters, digits or underscores",
                order.payment_request_id
            ));
        }
        let total_amount = wire::yuan(&order.amount).ok_or_else(|| {
            format!(
                "the mainland gateway charges CNY only, not {}",
                order.amount.currency().code()
            )
        })?;
        let biz = wire::PayBiz {
            out_trade_no: order.payment_request_id.clone(),
            scene: "bar_code".into(),
            auth_code: order.code.expose().to_string(),
            total_amount,
            subject: wire::clean_subject(&order.description),
            product_code: "FACE_TO_FACE_PAYMENT".into(),
            store_id: self.settings.store_id.clone().filter(|s| !s.is_empty()),
            terminal_id: self.settings.terminal_id.clone().filter(|s| !s.is_empty()),
            timeout_express: order
                .expires_at
                .is_none()
                .then(|| self.settings.trade_timeout.clone()),
            time_expire: order
                .expires_at
                .map(|t| wire::timestamp(t.with_timezone(&Utc))),
        };
        serde_json::to_string(&biz).map_err(|e| format!("cannot serialize the pay: {e}"))
    }

    /// Serializes and signs a pay without sending it.
    pub fn prepare_pay(&self, order: &PayOrder) -> Result<SignedForm, String> {
        Ok(self.sign(Method::Pay, &self.pay_biz(order)?))
    }

    /// `alipay.trade.pay`.
    pub async fn pay(&self, order: &PayOrder) -> Reply<Answer> {
        match self.prepare_pay(order) {
            Ok(form) => self.send_pay(&order.payment_request_id, form).await,
            Err(why) => not_sent(why),
        }
    }

    /// Sends a prepared pay.
    pub async fn send_pay(&self, id: &str, form: SignedForm) -> Reply<Answer> {
        answer::pay(&self.exchange(id, form).await)
    }

    /// `alipay.trade.query` by our paymentRequestId.
    pub async fn query(&self, out_trade_no: &str) -> Reply<Inquiry> {
        let biz = trade_biz(out_trade_no);
        answer::query(
            &self
                .exchange(out_trade_no, self.sign(Method::Query, &biz))
                .await,
        )
    }

    /// `alipay.trade.cancel` by our paymentRequestId; identical on every resend but for the
    /// timestamp and signature.
    pub async fn cancel(&self, out_trade_no: &str) -> (Cancel, Facts) {
        let biz = trade_biz(out_trade_no);
        answer::cancel(
            &self
                .exchange(out_trade_no, self.sign(Method::Cancel, &biz))
                .await,
        )
    }

    /// `alipay.trade.refund` of the trade `order.payment_id` (the gateway's `trade_no`).
    pub async fn refund(&self, order: &RefundOrder) -> (Reply<Answer>, Option<bool>) {
        let Some(refund_amount) = wire::yuan(&order.amount) else {
            return (
                not_sent("the mainland gateway refunds CNY only".into()),
                None,
            );
        };
        if !wire::is_trade_no(&order.refund_request_id) {
            return (
                not_sent("refundRequestId is not letters, digits or underscores".into()),
                None,
            );
        }
        let biz = wire::RefundBiz {
            out_trade_no: None,
            trade_no: Some(order.payment_id.clone()),
            refund_amount,
            out_request_no: order.refund_request_id.clone(),
            refund_reason: order.reason.clone().map(|r| wire::clean_subject(&r)),
        };
        let biz = serde_json::to_string(&biz).expect("plain strings serialize");
        let reading = self
            .exchange(&order.refund_request_id, self.sign(Method::Refund, &biz))
            .await;
        answer::refund(&reading)
    }

    /// `alipay.trade.fastpay.refund.query` of our refundRequestId on the trade `trade_no`.
    pub async fn refund_query(
        &self,
        trade_no: &str,
        out_request_no: &str,
    ) -> (RefundStatus, Facts) {
        let biz = wire::RefundQueryBiz {
            out_trade_no: None,
            trade_no: Some(trade_no.to_string()),
            out_request_no: out_request_no.to_string(),
        };
        let biz = serde_json::to_string(&biz).expect("plain strings serialize");
        let reading = self
            .exchange(out_request_no, self.sign(Method::RefundQuery, &biz))
            .await;
        answer::refund_query(&reading)
    }

    fn deadline(&self, m: Method) -> Duration {
        match m {
            Method::Pay => self.settings.pay_timeout,
            Method::Query => self.settings.inquiry_timeout,
            Method::Cancel | Method::Refund | Method::RefundQuery => self.settings.cancel_timeout,
        }
    }

    /// One POST and the reading of its answer.
    pub async fn exchange(&self, id: &str, form: SignedForm) -> Reading {
        let started = Instant::now();
        let deadline = self.deadline(form.method);
        let method = form.method;
        let req = self
            .http
            .post(self.url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .timeout(deadline)
            .body(form.body);
        let reading = match tokio::time::timeout(deadline, http::send(req)).await {
            Err(_) => Reading::NoAnswer {
                why: format!("timed out after {} ms", deadline.as_millis()),
            },
            Ok(Err(why)) => Reading::NoAnswer { why },
            Ok(Ok(raw)) => self.read(method, raw.status, &raw.body),
        };
        let elapsed = started.elapsed();
        if let Some(observer) = &self.observer {
            observer(&CallRecord {
                operation: operation_of(method),
                outcome: label(&reading),
                result_code: match &reading {
                    Reading::Answer { reply, .. } => {
                        Some(reply.sub_code.clone().unwrap_or_else(|| reply.code.clone()))
                    }
                    Reading::NoAnswer { .. } => None,
                },
                elapsed,
            });
        }
        let elapsed_ms = elapsed.as_millis() as u64;
        match &reading {
            Reading::NoAnswer { why } => warn!(
                method = method.label(),
                request_id = id,
                elapsed_ms,
                why = why.as_str(),
                "mainland gateway: no answer"
            ),
            Reading::Answer { reply, signed } => info!(
                method = method.label(),
                request_id = id,
                code = reply.code.as_str(),
                sub_code = reply.sub_code.as_deref().unwrap_or(""),
                signed = ?signed,
                elapsed_ms,
                "mainland gateway answered"
            ),
        }
        reading
    }

    /// Reads an HTTP answer: status 200, the `…_response` object found in the raw text, its
    /// signature checked over exactly those bytes, then the fields parsed from them.
    pub fn read(&self, method: Method, status: u16, body: &[u8]) -> Reading {
        read_answer(&self.settings.alipay_key, method, status, body)
    }
}

/// [`CnClient::read`] without a client (the sandbox tests and the notification path share it).
pub fn read_answer(key: &PublicKey, method: Method, status: u16, body: &[u8]) -> Reading {
    if status != 200 {
        return Reading::NoAnswer {
            why: format!("http status {status}"),
        };
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Reading::NoAnswer {
            why: "answer is not UTF-8".into(),
        };
    };
    let found = match extract(text, &method.response_key()) {
        Ok(e) => e,
        Err(e) => return Reading::NoAnswer { why: e.to_string() },
    };
    let signed = match verify_extracted(key, &found) {
        None => Signed::Unsigned,
        Some(true) => Signed::Verified,
        Some(false) => Signed::Invalid,
    };
    match serde_json::from_str::<wire::Reply>(found.content) {
        Ok(reply) => Reading::Answer {
            reply: Box::new(reply),
            signed,
        },
        Err(e) => Reading::NoAnswer {
            why: format!("{} does not parse: {e}", found.key),
        },
    }
}

/// The shared metrics' name of a call.
fn operation_of(m: Method) -> Operation {
    match m {
        Method::Pay => Operation::Pay,
        Method::Query => Operation::InquiryPayment,
        Method::Cancel => Operation::Cancel,
        Method::Refund => Operation::Refund,
        Method::RefundQuery => Operation::InquiryRefund,
    }
}

/// `success` (a verified `10000`), `failed` (a `4000x`) or `unknown`, for the metrics.
fn label(r: &Reading) -> &'static str {
    match r {
        Reading::Answer {
            reply,
            signed: Signed::Verified,
        } if reply.code == answer::SUCCESS => "success",
        Reading::Answer { reply, signed }
            if *signed != Signed::Invalid && reply.code.starts_with("400") =>
        {
            "failed"
        }
        _ => "unknown",
    }
}

fn trade_biz(out_trade_no: &str) -> String {
    serde_json::to_string(&wire::TradeBiz {
        out_trade_no: Some(out_trade_no.to_string()),
        trade_no: None,
    })
    .expect("plain strings serialize")
}

/// The refusal of an order that never left the terminal (so it cannot have been charged).
fn not_sent(why: String) -> Reply<Answer> {
    Reply::bare(Answer::Failed {
        refusal: Refusal::Other,
        code: NOT_SENT.into(),
        message: why,
    })
}

/// The result code of an order posd refused to send (not a gateway code).
pub const NOT_SENT: &str = "posd.REQUEST_NOT_SENT";
