//! The hub's upstream. An AMS upstream (`sandbox`, `alipay_plus`) is the AMS client of
//! `gateway/` (the merchant key signs, the gateway's key verifies, rustls with certificate
//! checks) forwarding the terminals' bodies byte for byte, with the outcome rules applied to
//! its raw answers (rule 5: an unverified `S`/`U`, a timeout, an HTTP error or unparsable JSON
//! is unknown, never `S`, never `F`). A mainland upstream (`alipay_cn`) is the mainland client
//! behind the gateway trait, with each request converted ([`super::convert`]). Either way the
//! rest of the hub sees one [`Answer`] with an AMS body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;

use super::config::{HubConfig, UpstreamKind};
use super::convert;
use super::metrics::HubMetrics;
use crate::gateway::alipay_cn::wire::Method;
use crate::gateway::alipay_cn::{CnClient, CnSettings};
use crate::gateway::client::{
    AmsClient, AnswerSignature, ClientSettings, MerchantIdentity, Operation,
};
use crate::gateway::sign::{PrivateKey, PublicKey};
use crate::gateway::wire::{WireAmount, WireResult};
use crate::gateway::{Answer as GAnswer, Inquiry, Reply};

/// What an upstream answer means (the client's rules, on raw bodies).
#[derive(Debug, Clone)]
pub enum Answer {
    /// A verified `S`: the body is relayed as it came.
    Success(Vec<u8>),
    /// A verified `F`, or an unsigned `F` (the gateway's signature refusals are unsigned).
    Failed {
        /// `result.resultCode`.
        code: String,
        /// The body, relayed as it came.
        body: Vec<u8>,
    },
    /// Anything else.
    Unknown {
        /// What happened.
        why: String,
        /// The upstream's `resultCode` when it sent a verified `U`.
        code: Option<String>,
    },
}

impl Answer {
    /// `success`, `failed`, `unknown` (metrics, logs).
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Success(_) => "success",
            Answer::Failed { .. } => "failed",
            Answer::Unknown { .. } => "unknown",
        }
    }

    /// The result code, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            Answer::Success(_) => Some("SUCCESS"),
            Answer::Failed { code, .. } => Some(code),
            Answer::Unknown { code, .. } => code.as_deref(),
        }
    }
}

/// The fields of an answer the hub records (lenient: every one optional).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerFields {
    /// `result`.
    #[serde(default)]
    pub result: Option<WireResult>,
    /// `paymentId`.
    #[serde(default)]
    pub payment_id: Option<String>,
    /// `paymentRequestId`.
    #[serde(default)]
    pub payment_request_id: Option<String>,
    /// `paymentStatus` (inquiry, notification).
    #[serde(default)]
    pub payment_status: Option<String>,
    /// `paymentAmount`.
    #[serde(default)]
    pub payment_amount: Option<WireAmount>,
    /// `refundId`.
    #[serde(default)]
    pub refund_id: Option<String>,
}

impl AnswerFields {
    /// Reads what it can from a body; an unreadable body gives empty fields.
    pub fn of(body: &[u8]) -> AnswerFields {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// Applies the outcome rules to a raw answer.
pub fn classify(answer: Result<crate::gateway::client::ForwardedAnswer, String>) -> Answer {
    let raw = match answer {
        Ok(raw) => raw,
        Err(why) => return Answer::Unknown { why, code: None },
    };
    if raw.status != 200 {
        return Answer::Unknown {
            why: format!("http status {}", raw.status),
            code: None,
        };
    }
    let result = match AnswerFields::of(&raw.body).result {
        Some(r) if serde_json::from_slice::<serde_json::Value>(&raw.body).is_ok() => r,
        _ => {
            return Answer::Unknown {
                why: "answer is not AMS JSON with a result".into(),
                code: None,
            }
        }
    };
    match (result.result_status.as_str(), raw.signature) {
        ("S", AnswerSignature::Verified) => Answer::Success(raw.body),
        ("F", AnswerSignature::Verified | AnswerSignature::Unsigned) => Answer::Failed {
            code: result.result_code,
            body: raw.body,
        },
        ("S", AnswerSignature::Unsigned) => Answer::Unknown {
            why: "S answer is unsigned".into(),
            code: None,
        },
        ("S" | "F" | "U", AnswerSignature::Invalid(why)) => Answer::Unknown {
            why: format!(
                "{} answer with a bad signature: {why}",
                result.result_status
            ),
            code: None,
        },
        ("U", AnswerSignature::Verified) => Answer::Unknown {
            why: format!("upstream said U: {}", result.result_code),
            code: Some(result.result_code),
        },
        ("U", AnswerSignature::Unsigned) => Answer::Unknown {
            why: "U answer is unsigned".into(),
            code: None,
        },
        (other, _) => Answer::Unknown {
            why: format!("unexpected resultStatus {other:?}"),
            code: None,
        },
    }
}

/// How the hub reaches its upstream.
enum Backend {
    /// AMS upstreams (`sandbox`, `alipay_plus`): the terminal's body is forwarded byte for
    /// byte and the verified answer relayed as it came, so every field the gateway sends
    /// reaches the terminal and a resend is the identical request.
    Relay(Box<AmsClient>),
    /// `alipay_cn`: protocol conversion through the gateway trait ([`super::convert`]).
    Convert(Arc<CnClient>),
}

/// The upstream gateway as the hub uses it.
pub struct Upstream {
    backend: Backend,
    metrics: Arc<HubMetrics>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Relay(c) => f.debug_struct("Upstream").field("relay", c).finish(),
            Backend::Convert(c) => f.debug_struct("Upstream").field("convert", c).finish(),
        }
    }
}

impl Upstream {
    /// Builds the upstream client from `[upstream]` (keys loaded; the merchant key must be 0600).
    pub fn from_config(config: &HubConfig, metrics: Arc<HubMetrics>) -> anyhow::Result<Upstream> {
        let u = &config.upstream;
        let key_path = u
            .merchant_private_key
            .as_ref()
            .context("upstream.merchant_private_key is required")?;
        let merchant_key = PrivateKey::load(key_path)
            .with_context(|| "upstream.merchant_private_key".to_string())?;
        let gw_path = u
            .gateway_public_key
            .as_ref()
            .context("upstream.gateway_public_key is required")?;
        let gateway_key =
            PublicKey::load(gw_path).with_context(|| "upstream.gateway_public_key".to_string())?;
        let ca = match &u.ca_file {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("upstream.ca_file {}: cannot read", p.display()))?,
            ),
            None => None,
        };
        if u.kind == UpstreamKind::AlipayCn {
            let settings = CnSettings {
                base_url: u
                    .base_url
                    .clone()
                    .unwrap_or_else(|| crate::config::MAINLAND_GATEWAY_URL.to_string()),
                app_id: u.app_id.clone().context("upstream.app_id is required")?,
                merchant_key: Arc::new(merchant_key),
                alipay_key: gateway_key,
                notify_url: u.notify_url.clone(),
                app_auth_token: u.app_auth_token.as_ref().map(|s| s.expose().to_string()),
                // Each pay names its own store and terminal, from the registry.
                store_id: None,
                terminal_id: None,
                trade_timeout: crate::gateway::alipay_cn::client::DEFAULT_TRADE_TIMEOUT.into(),
                insecure_http: u.insecure_http,
                connect_timeout: u.call_timeout().min(Duration::from_secs(3)),
                pay_timeout: u.pay_timeout(),
                inquiry_timeout: u.call_timeout(),
                cancel_timeout: u.call_timeout(),
            };
            let client = CnClient::new_with_roots(settings, ca.as_deref())
                .context("cannot build the mainland client")?;
            return Ok(Upstream {
                backend: Backend::Convert(Arc::new(client)),
                metrics,
            });
        }
        let settings = ClientSettings {
            base_url: u
                .base_url
                .clone()
                .context("upstream.base_url is required")?,
            client_id: u
                .client_id
                .clone()
                .context("upstream.client_id is required")?,
            key_version: u.key_version.clone().unwrap_or_else(|| "1".into()),
            merchant_key: Arc::new(merchant_key),
            gateway_key,
            notify_url: u.notify_url.clone(),
            agent_token: None,
            insecure_http: u.insecure_http,
            connect_timeout: u.call_timeout().min(Duration::from_secs(3)),
            pay_timeout: u.pay_timeout(),
            inquiry_timeout: u.call_timeout(),
            cancel_timeout: u.call_timeout(),
            // The hub forwards the terminals' bodies; the client never builds a pay itself.
            merchant: MerchantIdentity {
                merchant_id: String::new(),
                merchant_name: String::new(),
                merchant_mcc: String::new(),
                store_id: String::new(),
                store_name: String::new(),
                store_mcc: String::new(),
                terminal_id: String::new(),
            },
        };
        let client = AmsClient::new_with_roots(settings, ca.as_deref())
            .context("cannot build the upstream client")?;
        Ok(Upstream {
            backend: Backend::Relay(Box::new(client)),
            metrics,
        })
    }

    /// Whether the upstream speaks another dialect than the terminals (the hub converts).
    pub fn converts(&self) -> bool {
        matches!(self.backend, Backend::Convert(_))
    }

    /// The hub's name at the upstream (AMS `client-id`, mainland `app_id`): notifications
    /// carry it.
    pub fn client_id(&self) -> &str {
        match &self.backend {
            Backend::Relay(c) => &c.settings().client_id,
            Backend::Convert(c) => &c.settings().app_id,
        }
    }

    /// The upstream behind the gateway abstraction the terminal's engine uses: the hub's own
    /// decisions (the active-cancel inquiry) go through it.
    pub fn gateway(&self) -> &dyn crate::gateway::Gateway {
        match &self.backend {
            Backend::Relay(c) => &**c,
            Backend::Convert(c) => &**c,
        }
    }

    /// The hub's own inquiry (the active-cancel decision, the paymentId a window refund
    /// needs) through the gateway trait, observed like every forwarded call.
    pub async fn inquiry_payment(&self, payment_request_id: &str) -> Reply<Inquiry> {
        let started = Instant::now();
        let reply = self.gateway().inquiry_payment(payment_request_id).await;
        let outcome = match &reply.answer {
            Inquiry::Unknown { .. } => "unknown",
            Inquiry::NotFound | Inquiry::Failed { .. } => "failed",
            _ => "success",
        };
        self.metrics
            .upstream(Operation::InquiryPayment, outcome, started.elapsed());
        reply
    }

    /// The gateway's public key (verifies notifications).
    pub fn gateway_key(&self) -> &PublicKey {
        match &self.backend {
            Backend::Relay(c) => &c.settings().gateway_key,
            Backend::Convert(c) => &c.settings().alipay_key,
        }
    }

    /// Sends `body` (a terminal's AMS body, or one the hub built) to `op` and classifies the
    /// answer (relayed, or converted), observes it.
    pub async fn call(&self, op: Operation, body: &[u8]) -> Answer {
        let started = Instant::now();
        let answer = match &self.backend {
            Backend::Relay(c) => classify(c.forward(op, body.to_vec()).await),
            Backend::Convert(c) => convert_call(c, op, body).await,
        };
        let elapsed = started.elapsed();
        self.metrics.upstream(op, answer.label(), elapsed);
        match &answer {
            Answer::Unknown { why, .. } => tracing::warn!(
                operation = op.label(),
                elapsed_ms = elapsed.as_millis() as u64,
                why = why.as_str(),
                "upstream outcome unknown"
            ),
            a => tracing::info!(
                operation = op.label(),
                outcome = a.label(),
                result_code = a.code().unwrap_or(""),
                elapsed_ms = elapsed.as_millis() as u64,
                "upstream answered"
            ),
        }
        answer
    }
}

/// One call to the mainland upstream: the AMS body read into a domain order, the call made
/// through the gateway trait (or, for the pay, the client's own form with the store and
/// terminal the body names), the typed answer written back as AMS.
async fn convert_call(cn: &CnClient, op: Operation, body: &[u8]) -> Answer {
    use crate::gateway::Gateway as _;
    use convert::OpFields;
    match op {
        Operation::Pay => {
            let (order, place) = match convert::pay_order(body) {
                Ok(o) => o,
                Err(why) => return convert::not_carried("paymentRequestId", "", &why),
            };
            let id = order.payment_request_id.clone();
            let biz = match cn.pay_biz(&order) {
                Ok(b) => b,
                Err(why) => return convert::not_carried("paymentRequestId", &id, &why),
            };
            let mut biz: serde_json::Value = serde_json::from_str(&biz).expect("json from serde");
            for (k, v) in [
                ("store_id", place.store_id),
                ("terminal_id", place.terminal_id),
            ] {
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    biz[k] = serde_json::Value::String(v);
                }
            }
            let form = cn.sign(Method::Pay, &biz.to_string());
            convert::answer(OpFields::Pay, &id, &cn.send_pay(&id, form).await)
        }
        Operation::InquiryPayment => match convert::payment_request_id(body) {
            Ok(id) => convert::inquiry(&id, &cn.inquiry_payment(&id).await),
            Err(why) => convert::not_carried("paymentRequestId", "", &why),
        },
        Operation::Cancel => match convert::payment_request_id(body) {
            Ok(id) => convert::answer(
                OpFields::Cancel,
                &id,
                &crate::gateway::Gateway::cancel(cn, &id).await,
            ),
            Err(why) => convert::not_carried("paymentRequestId", "", &why),
        },
        Operation::Refund => match convert::refund_order(body) {
            Ok(o) => convert::answer(
                OpFields::Refund,
                &o.refund_request_id,
                &crate::gateway::Gateway::refund(cn, &o).await,
            ),
            Err(why) => convert::not_carried("refundRequestId", "", &why),
        },
        Operation::InquiryRefund => {
            // Any instance may be asked: the trade and the amount come from the hub's record
            // (the service adds them to the body), not from the client's memory.
            let (rid, _) = match convert::refund_inquiry(body) {
                Ok(x) => x,
                Err(why) => return convert::not_carried("refundRequestId", "", &why),
            };
            let reply = match convert::refund_order(body) {
                Ok(order) => cn.inquiry_refund(&order).await,
                Err(why) => Reply::<GAnswer>::unknown(format!(
                    "the hub's record does not name this refund's trade: {why}"
                )),
            };
            convert::answer(OpFields::InquiryRefund, &rid, &reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::client::ForwardedAnswer;

    fn test_key(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    }

    /// The mainland pay carries the store and terminal the terminal's body names (the
    /// registry checked them), and a garbage answer is unknown, never S or F.
    #[tokio::test]
    async fn a_converted_pay_names_the_terminals_store_and_an_unreadable_answer_is_unknown() {
        use axum::routing::post;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let app = axum::Router::new().route(
            "/gateway.do",
            post(move |body: axum::body::Bytes| {
                let _ = tx.send(body.to_vec());
                async { "<html>busy</html>" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let cn = CnClient::new(CnSettings {
            base_url: format!("http://{addr}/gateway.do"),
            app_id: "2021000000000001".into(),
            merchant_key: Arc::new(
                PrivateKey::from_text(&test_key("merchant_private_pkcs8.pem"), "m").unwrap(),
            ),
            alipay_key: PublicKey::from_text(&test_key("gateway_public.pem"), "g").unwrap(),
            notify_url: None,
            app_auth_token: None,
            store_id: None,
            terminal_id: None,
            trade_timeout: "5m".into(),
            insecure_http: true,
            connect_timeout: Duration::from_secs(2),
            pay_timeout: Duration::from_secs(2),
            inquiry_timeout: Duration::from_secs(2),
            cancel_timeout: Duration::from_secs(2),
        })
        .unwrap();
        let body = serde_json::json!({
            "paymentRequestId": "P_1",
            "paymentAmount": {"currency": "CNY", "value": "1234"},
            "paymentMethod": {"paymentMethodType": "CONNECT_WALLET", "paymentMethodId": "281234567890123400"},
            "order": {"orderDescription": "Coffee",
                "merchant": {"referenceMerchantId": "M1", "store": {"referenceStoreId": "S01"}},
                "env": {"storeTerminalId": "T0042"}}
        });
        let answer = convert_call(&cn, Operation::Pay, &serde_json::to_vec(&body).unwrap()).await;
        assert!(matches!(answer, Answer::Unknown { .. }), "{answer:?}");
        let form = rx.recv().await.unwrap();
        let params = crate::gateway::alipay_cn::wire::Params::parse_form(&form).unwrap();
        assert_eq!(params.get("method"), Some("alipay.trade.pay"));
        let biz: serde_json::Value =
            serde_json::from_str(params.get("biz_content").unwrap()).unwrap();
        assert_eq!(biz["out_trade_no"], "P_1");
        assert_eq!(biz["total_amount"], "12.34");
        assert_eq!(biz["store_id"], "S01");
        assert_eq!(biz["terminal_id"], "T0042");
        // The form is signed over exactly what was sent (the store fields included).
        let content = crate::gateway::alipay_cn::sign::sign_content(params.iter(), &["sign"], true);
        let public = PublicKey::from_text(&test_key("merchant_public.pem"), "p").unwrap();
        assert!(crate::gateway::alipay_cn::sign::verify_rsa2(
            &public,
            content.as_bytes(),
            params.get("sign").unwrap()
        ));
    }

    fn raw(status: u16, body: &str, signature: AnswerSignature) -> Result<ForwardedAnswer, String> {
        Ok(ForwardedAnswer {
            status,
            body: body.as_bytes().to_vec(),
            signature,
        })
    }

    const S: &str = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"ok"},"paymentId":"P1"}"#;
    const F: &str =
        r#"{"result":{"resultCode":"RISK_REJECT","resultStatus":"F","resultMessage":"no"}}"#;
    const U: &str = r#"{"result":{"resultCode":"PAYMENT_IN_PROCESS","resultStatus":"U","resultMessage":"wait"}}"#;

    #[test]
    fn only_a_verified_s_is_a_success() {
        assert!(
            matches!(classify(raw(200, S, AnswerSignature::Verified)), Answer::Success(b) if b == S.as_bytes())
        );
        for sig in [
            AnswerSignature::Unsigned,
            AnswerSignature::Invalid("bad".into()),
        ] {
            assert!(matches!(classify(raw(200, S, sig)), Answer::Unknown { .. }));
        }
    }

    #[test]
    fn an_f_is_failed_when_verified_or_unsigned_and_unknown_when_badly_signed() {
        for sig in [AnswerSignature::Verified, AnswerSignature::Unsigned] {
            assert!(
                matches!(classify(raw(200, F, sig)), Answer::Failed { code, .. } if code == "RISK_REJECT")
            );
        }
        assert!(matches!(
            classify(raw(200, F, AnswerSignature::Invalid("bad".into()))),
            Answer::Unknown { .. }
        ));
    }

    #[test]
    fn u_errors_and_garbage_are_unknown() {
        assert!(matches!(
            classify(raw(200, U, AnswerSignature::Verified)),
            Answer::Unknown { code: Some(c), .. } if c == "PAYMENT_IN_PROCESS"
        ));
        assert!(matches!(
            classify(raw(500, S, AnswerSignature::Verified)),
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            classify(raw(200, "<html>", AnswerSignature::Verified)),
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            classify(raw(200, "{}", AnswerSignature::Verified)),
            Answer::Unknown { .. }
        ));
        let odd = r#"{"result":{"resultCode":"X","resultStatus":"Q","resultMessage":""}}"#;
        assert!(matches!(
            classify(raw(200, odd, AnswerSignature::Verified)),
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            classify(Err("timed out".into())),
            Answer::Unknown { .. }
        ));
    }
}
