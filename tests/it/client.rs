//! The AMS client against a fake gateway (axum on 127.0.0.1:0) that verifies our signatures
//! with the merchant public key and signs its answers with the gateway test key: every answer
//! maps to the right `Outcome`, and the request on the wire is exactly what docs/protocol.md says.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use posd::config::Config;
use posd::gateway::client::{
    AmsClient, CallRecord, ClientError, ClientSettings, MerchantIdentity, Operation,
    EMBEDDED_SANDBOX_CLIENT_ID,
};
use posd::gateway::sign::{Message, PrivateKey, PublicKey};
use posd::gateway::{Outcome, RefundOrder};
use serde_json::{json, Value};

use crate::support;

const CLIENT_ID: &str = "2188120000000001";
const RESPONSE_TIME: &str = "2026-11-21T02:15:31+00:00";
/// Short deadlines: the stall tests wait exactly this long, never seconds.
const DEADLINE: Duration = Duration::from_millis(200);

const PAY_S: &str = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentId":"2026112111121280010018800000001","paymentRequestId":"PR-1","paymentAmount":{"currency":"CNY","value":"1234"},"paymentTime":"2026-11-20T18:15:31-08:00","paymentCreateTime":"2026-11-20T18:15:30-08:00","pspCustomerInfo":{"pspName":"ALIPAYCN","pspCustomerId":"x"},"actualPaymentAmount":{"currency":"CNY","value":"1234"},"someFutureField":{"nested":[1,2,3]},"paymentQuote":null}"#;
const PAY_F: &str = r#"{"result":{"resultCode":"USER_BALANCE_NOT_ENOUGH","resultStatus":"F","resultMessage":"user balance not enough"}}"#;
const PAY_U: &str = r#"{"result":{"resultCode":"PAYMENT_IN_PROCESS","resultStatus":"U","resultMessage":"payment in process"},"paymentId":"2026112111121280010018800000001"}"#;
const PAY_X: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"X","resultMessage":"new status"}}"#;

/// What the fake gateway answers.
#[derive(Debug, Clone)]
enum Reply {
    /// 200, this body, signed correctly.
    Signed(&'static str),
    /// 200, this body, no signature header at all.
    Unsigned(&'static str),
    /// 200, this body, with a signature over a different body.
    WrongSignature(&'static str),
    /// 200, this body, signed with `client-id: OTHER_ID` in the header and the content.
    SignedForOtherClientId(&'static str),
    /// This status, this body, signed correctly.
    Status(u16, &'static str),
    /// Never answers.
    Stall,
}

/// One request as the fake gateway received it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// Whether the `Signature` header verified with the merchant public key over the bytes
    /// actually received and the path actually requested.
    signature_ok: bool,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

struct FakeState {
    reply: Reply,
    seen: Mutex<Vec<Seen>>,
    gateway_key: PrivateKey,
    merchant_public: PublicKey,
}

/// A fake AMS gateway on a loopback port.
struct FakeAms {
    base_url: String,
    state: Arc<FakeState>,
}

impl FakeAms {
    async fn start(reply: Reply) -> FakeAms {
        let state = Arc::new(FakeState {
            reply,
            seen: Mutex::new(Vec::new()),
            gateway_key: support::gateway_key(),
            merchant_public: support::merchant_public(),
        });
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake gateway runs");
        });
        FakeAms {
            base_url: format!("http://{addr}"),
            state,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("not poisoned").clone()
    }

    fn only_request(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "exactly one request expected");
        seen.into_iter().next().expect("one request")
    }
}

fn sign_response(key: &PrivateKey, path: &str, client_id: &str, body: &[u8]) -> String {
    key.sign_header(
        "1",
        &Message {
            method: "POST",
            uri: path,
            client_id,
            time: RESPONSE_TIME,
            body,
        },
    )
}

async fn answer(
    State(st): State<Arc<FakeState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let client_id = h("client-id").to_string();
    let msg = Message {
        method: "POST",
        uri: &path,
        client_id: &client_id,
        time: h("request-time"),
        body: &body,
    };
    let signature_ok = st
        .merchant_public
        .verify_header(&msg, h("signature"))
        .is_ok();
    st.seen.lock().expect("not poisoned").push(Seen {
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
        signature_ok,
    });

    let signed = |status: u16, body: &'static str, sig_client: &str, sig_body: &[u8]| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("client-id", sig_client)
            .header("response-time", RESPONSE_TIME)
            .header(
                "signature",
                sign_response(&st.gateway_key, &path, sig_client, sig_body),
            )
            .body(Body::from(body))
            .expect("valid response")
    };
    match st.reply.clone() {
        Reply::Signed(b) => signed(200, b, &client_id, b.as_bytes()),
        Reply::Status(code, b) => signed(code, b, &client_id, b.as_bytes()),
        Reply::SignedForOtherClientId(b) => signed(200, b, "OTHER_ID", b.as_bytes()),
        Reply::WrongSignature(b) => signed(200, b, &client_id, format!("{b} ").as_bytes()),
        Reply::Unsigned(b) => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("response-time", RESPONSE_TIME)
            .body(Body::from(b))
            .expect("valid response"),
        Reply::Stall => {
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
    }
}

/// A raw TCP gateway for what axum cannot fake: it reads one request, writes `answer` (maybe
/// nothing, maybe a truncated response) and then either closes the socket or holds it open.
async fn raw_server(answer: Vec<u8>, hold_open: bool) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // reqwest may retry a request whose connection closed before any answer; treat
        // every connection alike.
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let _ = tokio::time::timeout(Duration::from_millis(50), sock.read(&mut buf)).await;
            let _ = sock.write_all(&answer).await;
            if hold_open {
                held.push(sock);
            }
        }
    });
    (format!("http://{addr}"), task)
}

fn identity() -> MerchantIdentity {
    MerchantIdentity {
        merchant_id: "M0001".into(),
        merchant_name: "Demo Cafe".into(),
        merchant_mcc: "5812".into(),
        store_id: "S01".into(),
        store_name: "Demo Cafe Central".into(),
        store_mcc: "5812".into(),
        terminal_id: "T0001".into(),
    }
}

fn settings(base_url: &str) -> ClientSettings {
    ClientSettings {
        base_url: base_url.to_string(),
        client_id: CLIENT_ID.into(),
        key_version: "1".into(),
        merchant_key: support::merchant_key(),
        gateway_key: support::gateway_public(),
        notify_url: None,
        agent_token: None,
        insecure_http: true,
        connect_timeout: DEADLINE,
        pay_timeout: DEADLINE,
        inquiry_timeout: DEADLINE,
        cancel_timeout: DEADLINE,
        merchant: identity(),
    }
}

async fn pay_with(reply: Reply) -> (Outcome<posd::gateway::wire::PayResponse>, FakeAms) {
    let fake = FakeAms::start(reply).await;
    let client = AmsClient::new(settings(&fake.base_url)).expect("client builds");
    let outcome = client.pay(&support::pay_order("PR-1")).await;
    (outcome, fake)
}

fn assert_failed<T: std::fmt::Debug>(outcome: &Outcome<T>, code: &str, message: &str) {
    match outcome {
        Outcome::Failed {
            code: c,
            message: m,
        } => assert_eq!((c.as_str(), m.as_str()), (code, message)),
        other => panic!("expected Failed({code}), got {other:?}"),
    }
}

fn assert_unknown<T: std::fmt::Debug>(outcome: &Outcome<T>, needle: &str) {
    match outcome {
        Outcome::Unknown { why } => assert!(why.contains(needle), "why = {why:?}, want {needle:?}"),
        other => panic!("expected Unknown ({needle}), got {other:?}"),
    }
}

// ---- outcome mapping -------------------------------------------------------------------

#[tokio::test]
async fn verified_s_is_success_with_the_parsed_answer() {
    let (outcome, fake) = pay_with(Reply::Signed(PAY_S)).await;
    let Outcome::Success(resp) = outcome else {
        panic!("expected Success, got {outcome:?}")
    };
    assert_eq!(resp.result.result_code, "SUCCESS");
    assert_eq!(
        resp.payment_id.as_deref(),
        Some("2026112111121280010018800000001")
    );
    assert_eq!(
        resp.payment_amount
            .and_then(|a| a.to_amount())
            .map(|a| a.minor()),
        Some(1234)
    );
    assert_eq!(
        resp.payment_time.as_deref(),
        Some("2026-11-20T18:15:31-08:00")
    );
    assert!(fake.only_request().signature_ok);
}

#[tokio::test]
async fn verified_f_is_failed_with_code_and_message() {
    let (outcome, _fake) = pay_with(Reply::Signed(PAY_F)).await;
    assert_failed(
        &outcome,
        "USER_BALANCE_NOT_ENOUGH",
        "user balance not enough",
    );
}

#[tokio::test]
async fn verified_u_is_unknown() {
    let (outcome, _fake) = pay_with(Reply::Signed(PAY_U)).await;
    assert_unknown(&outcome, "PAYMENT_IN_PROCESS");
}

#[tokio::test]
async fn unsigned_f_is_failed_because_the_gateway_omits_signatures_on_signature_errors() {
    const F_SIG: &str = r#"{"result":{"resultCode":"INVALID_SIGNATURE","resultStatus":"F","resultMessage":"invalid signature"}}"#;
    let (outcome, _fake) = pay_with(Reply::Unsigned(F_SIG)).await;
    assert_failed(&outcome, "INVALID_SIGNATURE", "invalid signature");
}

#[tokio::test]
async fn unsigned_s_is_unknown() {
    let (outcome, _fake) = pay_with(Reply::Unsigned(PAY_S)).await;
    assert_unknown(&outcome, "unsigned");
}

#[tokio::test]
async fn unsigned_u_is_unknown() {
    let (outcome, _fake) = pay_with(Reply::Unsigned(PAY_U)).await;
    assert_unknown(&outcome, "gateway said U");
}

#[tokio::test]
async fn wrong_signature_on_s_is_unknown() {
    let (outcome, _fake) = pay_with(Reply::WrongSignature(PAY_S)).await;
    assert_unknown(&outcome, "bad signature");
}

#[tokio::test]
async fn wrong_signature_on_f_is_unknown_not_failed() {
    let (outcome, _fake) = pay_with(Reply::WrongSignature(PAY_F)).await;
    assert_unknown(&outcome, "bad signature");
}

#[tokio::test]
async fn http_500_is_unknown_even_with_a_signed_f_body() {
    let (outcome, _fake) = pay_with(Reply::Status(500, PAY_F)).await;
    assert_unknown(&outcome, "http status 500");
}

#[tokio::test]
async fn other_non_200_statuses_are_unknown() {
    for status in [202, 302, 400, 404, 502] {
        let (outcome, _fake) = pay_with(Reply::Status(status, PAY_S)).await;
        assert_unknown(&outcome, &format!("http status {status}"));
    }
}

#[tokio::test]
async fn garbage_json_is_unknown() {
    let (outcome, _fake) = pay_with(Reply::Signed("<html>502 bad gateway</html>")).await;
    assert_unknown(&outcome, "not AMS JSON");
    let (outcome, _fake) = pay_with(Reply::Signed(r#"{"paymentId":"1"}"#)).await;
    assert_unknown(&outcome, "no result");
    let (outcome, _fake) = pay_with(Reply::Signed(r#"{"result":{"resultStatus":7}}"#)).await;
    assert_unknown(&outcome, "not AMS JSON");
}

#[tokio::test]
async fn verified_s_whose_fields_do_not_parse_is_unknown() {
    const BAD_AMOUNT: &str = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"ok"},"paymentAmount":"12.34"}"#;
    let (outcome, _fake) = pay_with(Reply::Signed(BAD_AMOUNT)).await;
    assert_unknown(&outcome, "does not parse");
}

#[tokio::test]
async fn result_status_other_than_s_f_u_is_unknown() {
    let (outcome, _fake) = pay_with(Reply::Signed(PAY_X)).await;
    assert_unknown(&outcome, "unexpected resultStatus \"X\"");
}

#[tokio::test]
async fn a_stalled_answer_is_unknown_at_the_deadline() {
    let started = Instant::now();
    let (outcome, fake) = pay_with(Reply::Stall).await;
    let elapsed = started.elapsed();
    assert_unknown(&outcome, "timed out");
    assert!(elapsed >= DEADLINE, "gave up early: {elapsed:?}");
    assert!(elapsed < DEADLINE * 5, "deadline not enforced: {elapsed:?}");
    assert_eq!(fake.seen().len(), 1, "the request did reach the gateway");
}

#[tokio::test]
async fn a_body_that_stalls_after_the_headers_is_unknown_at_the_deadline() {
    // Headers promise the whole signed body; only half of it ever arrives.
    let path = "/ams/api/v1/payments/pay";
    let sig = sign_response(&support::gateway_key(), path, CLIENT_ID, PAY_S.as_bytes());
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         client-id: {CLIENT_ID}\r\nresponse-time: {RESPONSE_TIME}\r\nsignature: {sig}\r\n\r\n",
        PAY_S.len()
    )
    .into_bytes();
    answer.extend_from_slice(&PAY_S.as_bytes()[..PAY_S.len() / 2]);
    let (base, server) = raw_server(answer, true).await;
    let client = AmsClient::new(settings(&base)).unwrap();
    let started = Instant::now();
    let outcome = client.pay(&support::pay_order("PR-1")).await;
    let elapsed = started.elapsed();
    assert_unknown(&outcome, "timed out");
    assert!(elapsed >= DEADLINE, "gave up early: {elapsed:?}");
    assert!(elapsed < DEADLINE * 5, "deadline not enforced: {elapsed:?}");
    server.abort();
}

#[tokio::test]
async fn a_dropped_connection_is_unknown() {
    let (base, server) = raw_server(Vec::new(), false).await;
    let client = AmsClient::new(settings(&base)).unwrap();
    let started = Instant::now();
    let outcome = client.pay(&support::pay_order("PR-1")).await;
    assert_unknown(&outcome, "error");
    assert!(
        started.elapsed() < DEADLINE,
        "a dropped connection is noticed before the deadline"
    );
    server.abort();
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_unknown() {
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        PAY_S.len(),
        &PAY_S[..20]
    );
    let (base, server) = raw_server(answer.into_bytes(), false).await;
    let client = AmsClient::new(settings(&base)).unwrap();
    let outcome = client.pay(&support::pay_order("PR-1")).await;
    assert_unknown(&outcome, "error");
    server.abort();
}

#[tokio::test]
async fn a_refused_connection_is_unknown() {
    // Bind and drop to get a port nobody listens on.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = AmsClient::new(settings(&format!("http://{addr}"))).unwrap();
    let outcome = client.cancel("PR-1").await;
    assert_unknown(&outcome, "connect error");
}

#[tokio::test]
async fn the_answer_verifies_with_the_client_id_from_the_response_header() {
    let (outcome, _fake) = pay_with(Reply::SignedForOtherClientId(PAY_S)).await;
    assert!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
}

#[tokio::test]
async fn an_answer_signed_with_another_key_is_not_trusted() {
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let mut s = settings(&fake.base_url);
    // Verify with the merchant public key instead of the gateway's: the signature is wrong.
    s.gateway_key = support::merchant_public();
    let client = AmsClient::new(s).unwrap();
    let outcome = client.pay(&support::pay_order("PR-1")).await;
    assert_unknown(&outcome, "bad signature");
}

#[tokio::test]
async fn unknown_fields_and_enum_values_are_tolerated() {
    const INQ: &str = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentStatus":"SOMETHING_NEW","paymentResultCode":"NEW_CODE","paymentRequestId":"PR-1","transactions":[{"transactionType":"REFUND"}],"brandNewObject":{"a":"b"}}"#;
    let fake = FakeAms::start(Reply::Signed(INQ)).await;
    let client = AmsClient::new(settings(&fake.base_url)).unwrap();
    let Outcome::Success(resp) = client.inquiry_payment("PR-1").await else {
        panic!("expected Success")
    };
    assert_eq!(resp.payment_status.as_deref(), Some("SOMETHING_NEW"));
    assert_eq!(resp.payment_result_code.as_deref(), Some("NEW_CODE"));
    // Unknown result codes on F are kept verbatim for the journal.
    const CANCEL_F: &str = r#"{"result":{"resultCode":"A_CODE_FROM_2030","resultStatus":"F","resultMessage":"new","resultExtra":1}}"#;
    let fake = FakeAms::start(Reply::Signed(CANCEL_F)).await;
    let client = AmsClient::new(settings(&fake.base_url)).unwrap();
    assert_failed(&client.cancel("PR-1").await, "A_CODE_FROM_2030", "new");
}

// ---- what goes on the wire ---------------------------------------------------------------

#[tokio::test]
async fn the_body_received_is_exactly_the_body_signed() {
    let (_outcome, fake) = pay_with(Reply::Signed(PAY_S)).await;
    let seen = fake.only_request();
    assert!(
        seen.signature_ok,
        "gateway-side verification over the received bytes"
    );
    // PKCS#1 v1.5 is deterministic: re-signing the received bytes gives the same header.
    let expected = support::merchant_key().sign_header(
        "1",
        &Message {
            method: "POST",
            uri: "/ams/api/v1/payments/pay",
            client_id: CLIENT_ID,
            time: seen.header("request-time").unwrap(),
            body: &seen.body,
        },
    );
    assert_eq!(seen.header("signature"), Some(expected.as_str()));
}

#[tokio::test]
async fn request_headers_follow_the_protocol() {
    let (_outcome, fake) = pay_with(Reply::Signed(PAY_S)).await;
    let seen = fake.only_request();
    assert_eq!(seen.path, "/ams/api/v1/payments/pay");
    assert_eq!(
        seen.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert_eq!(seen.header("client-id"), Some(CLIENT_ID));
    let time = seen.header("request-time").unwrap();
    assert!(
        time.len() == 13 && time.bytes().all(|b| b.is_ascii_digit()),
        "epoch ms: {time}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now_ms - time.parse::<i64>().unwrap()).abs() < 60_000,
        "request time is now"
    );
    assert!(seen
        .header("signature")
        .unwrap()
        .starts_with("algorithm=RSA256,keyVersion=1,signature="));
    assert_eq!(
        seen.header("agent-token"),
        None,
        "no Agent-Token unless configured"
    );
}

#[tokio::test]
async fn the_pay_body_has_every_field_of_protocol_2_2() {
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let mut s = settings(&fake.base_url);
    s.notify_url = Some("https://pos.example.com/alipay/notify".into());
    let client = AmsClient::new(s).unwrap();
    client.pay(&support::pay_order("PR-1")).await;
    let body = fake.only_request().json();
    assert_eq!(
        body,
        json!({
            "productCode": "IN_STORE_PAYMENT",
            "paymentRequestId": "PR-1",
            "paymentAmount": {"currency": "CNY", "value": "1234"},
            "paymentMethod": {"paymentMethodType": "CONNECT_WALLET", "paymentMethodId": support::CODE},
            "paymentFactor": {"inStorePaymentScenario": "PaymentCode"},
            "order": {
                "referenceOrderId": "A-1001",
                "orderDescription": "Coffee",
                "orderAmount": {"currency": "CNY", "value": "1234"},
                "merchant": {
                    "referenceMerchantId": "M0001",
                    "merchantMCC": "5812",
                    "merchantName": "Demo Cafe",
                    "store": {"referenceStoreId": "S01", "storeName": "Demo Cafe Central", "storeMCC": "5812"}
                },
                "env": {"storeTerminalId": "T0001", "storeTerminalRequestTime": "2026-11-21T10:15:30+08:00"}
            },
            "paymentNotifyUrl": "https://pos.example.com/alipay/notify"
        })
    );
}

#[tokio::test]
async fn the_pay_carries_its_expiry_as_iso_8601_with_the_terminal_offset() {
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let client = AmsClient::new(settings(&fake.base_url)).unwrap();
    let order = posd::gateway::PayOrder {
        expires_at: Some(
            chrono::DateTime::parse_from_rfc3339("2026-11-21T10:18:30+08:00").unwrap(),
        ),
        ..support::pay_order("PR-3")
    };
    client.pay(&order).await;
    let body = fake.only_request().json();
    assert_eq!(body["paymentExpiryTime"], "2026-11-21T10:18:30+08:00");
    // Without one the field is omitted (the gateway applies its contract default).
    let (_outcome, fake) = pay_with(Reply::Signed(PAY_S)).await;
    assert!(fake
        .only_request()
        .json()
        .get("paymentExpiryTime")
        .is_none());
}

#[tokio::test]
async fn the_pay_body_without_notify_url_or_order_ref() {
    let (_outcome, fake) = pay_with(Reply::Signed(PAY_S)).await;
    let body = fake.only_request().json();
    assert!(
        body.get("paymentNotifyUrl").is_none(),
        "omitted, never null or empty"
    );
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let client = AmsClient::new(settings(&fake.base_url)).unwrap();
    let mut order = support::pay_order("PR-2");
    order.order_ref = None;
    client.pay(&order).await;
    let body = fake.only_request().json();
    assert_eq!(
        body["order"]["referenceOrderId"], "PR-2",
        "falls back to our request id"
    );
}

#[tokio::test]
async fn follow_up_calls_send_their_bodies_to_their_paths() {
    const OK: &str =
        r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;
    let fake = FakeAms::start(Reply::Signed(OK)).await;
    let client = AmsClient::new(settings(&fake.base_url)).unwrap();
    assert!(matches!(
        client.inquiry_payment("PR-1").await,
        Outcome::Success(_)
    ));
    assert!(matches!(client.cancel("PR-1").await, Outcome::Success(_)));
    let refund = RefundOrder {
        refund_request_id: "RF-1".into(),
        payment_id: "PAY-9".into(),
        amount: posd::domain::money::Amount::parse("5.00", support::cny()).unwrap(),
        reason: Some("changed mind".into()),
    };
    assert!(matches!(client.refund(&refund).await, Outcome::Success(_)));
    assert!(matches!(
        client.inquiry_refund("RF-1").await,
        Outcome::Success(_)
    ));
    let seen = fake.seen();
    let got: Vec<(&str, Value)> = seen.iter().map(|s| (s.path.as_str(), s.json())).collect();
    assert_eq!(
        got,
        vec![
            (
                "/ams/api/v1/payments/inquiryPayment",
                json!({"paymentRequestId": "PR-1"})
            ),
            (
                "/ams/api/v1/payments/cancel",
                json!({"paymentRequestId": "PR-1"})
            ),
            (
                "/ams/api/v1/payments/refund",
                json!({"refundRequestId": "RF-1", "paymentId": "PAY-9",
                       "refundAmount": {"currency": "CNY", "value": "500"}, "refundReason": "changed mind"})
            ),
            (
                "/ams/api/v1/payments/inquiryRefund",
                json!({"refundRequestId": "RF-1"})
            ),
        ]
    );
    assert!(
        seen.iter().all(|s| s.signature_ok),
        "every call is signed over its own path"
    );
}

#[tokio::test]
async fn a_sandbox_client_id_uses_and_signs_the_sandbox_path() {
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let mut s = settings(&fake.base_url);
    s.client_id = "SANDBOX_5Y3A2N2YEB3002022".into();
    let client = AmsClient::new(s).unwrap();
    assert_eq!(
        client.request_path(Operation::Pay),
        "/ams/sandbox/api/v1/payments/pay"
    );
    let outcome = client.pay(&support::pay_order("PR-1")).await;
    assert!(matches!(outcome, Outcome::Success(_)), "{outcome:?}");
    let seen = fake.only_request();
    assert_eq!(seen.path, "/ams/sandbox/api/v1/payments/pay");
    assert!(seen.signature_ok, "signed over the sandbox path");
}

#[tokio::test]
async fn a_base_url_under_a_path_puts_every_call_under_it_and_signs_the_whole_path() {
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let client = AmsClient::new(settings(&format!("{}/gateway/v2/", fake.base_url))).unwrap();
    assert_eq!(
        client.request_path(Operation::InquiryPayment),
        "/gateway/v2/ams/api/v1/payments/inquiryPayment"
    );
    client.pay(&support::pay_order("PR-1")).await;
    client.inquiry_payment("PR-1").await;
    client.cancel("PR-1").await;
    let seen = fake.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/gateway/v2/ams/api/v1/payments/pay",
            "/gateway/v2/ams/api/v1/payments/inquiryPayment",
            "/gateway/v2/ams/api/v1/payments/cancel",
        ]
    );
    assert!(
        seen.iter().all(|s| s.signature_ok),
        "each call is signed over its whole path, the base's included"
    );
}

#[tokio::test]
async fn a_forwarded_call_under_a_base_path_is_sent_and_signed_and_verified_at_the_whole_path() {
    // The hub's forwarding path: a terminal's body, signed and sent as given.
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let client = AmsClient::new(settings(&format!("{}/gateway/v2", fake.base_url))).unwrap();
    let answer = client
        .forward(Operation::Pay, br#"{"paymentRequestId":"PR-1"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.signature,
        posd::gateway::client::AnswerSignature::Verified,
        "the answer, signed over the whole path, verifies"
    );
    let seen = fake.only_request();
    assert_eq!(seen.path, "/gateway/v2/ams/api/v1/payments/pay");
    assert!(seen.signature_ok, "signed over the whole path");
}

#[tokio::test]
async fn agent_token_is_sent_when_configured() {
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let mut s = settings(&fake.base_url);
    s.agent_token = Some(serde_json::from_str("\"agent-secret-1\"").unwrap());
    let client = AmsClient::new(s).unwrap();
    client.cancel("PR-1").await;
    assert_eq!(
        fake.only_request().header("agent-token"),
        Some("agent-secret-1")
    );
    assert!(!format!("{client:?} {:?}", client.settings()).contains("agent-secret-1"));
}

#[tokio::test]
async fn key_version_is_sent_as_configured() {
    let fake = FakeAms::start(Reply::Signed(PAY_S)).await;
    let mut s = settings(&fake.base_url);
    s.key_version = "3".into();
    AmsClient::new(s).unwrap().cancel("PR-1").await;
    assert!(fake
        .only_request()
        .header("signature")
        .unwrap()
        .starts_with("algorithm=RSA256,keyVersion=3,signature="));
}

// ---- construction ------------------------------------------------------------------------

#[test]
fn plain_http_is_refused_unless_loopback_and_allowed() {
    let refuse = |url: &str, insecure: bool| {
        let mut s = settings(url);
        s.insecure_http = insecure;
        match AmsClient::new(s) {
            Err(ClientError::BaseUrl(m)) => m,
            other => panic!("{url} accepted: {other:?}"),
        }
    };
    assert!(refuse("http://10.0.0.1:8080", true).contains("non-loopback"));
    assert!(refuse("http://open-sea-global.alipay.com", true).contains("non-loopback"));
    assert!(refuse("http://127.0.0.1:8080", false).contains("https"));
    assert!(refuse("ftp://127.0.0.1", true).contains("scheme"));
    assert!(refuse("not a url", true).contains("not a URL"));
    assert!(refuse("https://open-sea-global.alipay.com/?x=1", false).contains("query"));
    let mut s = settings("https://open-sea-global.alipay.com");
    s.insecure_http = false;
    assert!(AmsClient::new(s).is_ok());
    assert!(AmsClient::new(settings("http://127.0.0.1:1")).is_ok());
    assert!(AmsClient::new(settings("http://[::1]:1")).is_ok());
}

const CONFIG: &str = r#"
[terminal]
id = "T0001"
merchant_id = "M0001"
merchant_name = "Demo Cafe"
merchant_mcc = "5812"
store_id = "S01"
store_name = "Demo Cafe Central"
store_mcc = "5812"
[flow]
pay_timeout = "250ms"
inquiry_timeout = "150ms"
cancel_timeout = "120ms"
"#;

#[test]
fn settings_from_a_sandbox_config() {
    let cfg = Config::parse(
        CONFIG,
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
    )
    .unwrap();
    let s = ClientSettings::from_config(
        &cfg,
        support::merchant_key(),
        support::gateway_public(),
        Some("http://127.0.0.1:4567".into()),
    )
    .unwrap();
    assert_eq!(s.base_url, "http://127.0.0.1:4567");
    assert_eq!(s.client_id, EMBEDDED_SANDBOX_CLIENT_ID);
    assert!(
        s.insecure_http,
        "the embedded sandbox is plain http on loopback"
    );
    assert_eq!(s.key_version, "1");
    assert_eq!(s.pay_timeout, Duration::from_millis(250));
    assert_eq!(s.inquiry_timeout, Duration::from_millis(150));
    assert_eq!(s.cancel_timeout, Duration::from_millis(120));
    assert_eq!(s.connect_timeout, Duration::from_secs(3));
    assert_eq!(s.merchant, identity());
    assert!(AmsClient::new(s).is_ok());
}

#[test]
fn settings_from_a_production_config() {
    let text = format!(
        "{CONFIG}\n[gateway]\nkind = \"alipay_plus\"\nbase_url = \"https://open-sea-global.alipay.com\"\n\
         client_id = \"2188120000000001\"\nkey_version = \"2\"\nmerchant_private_key = \"k\"\n\
         gateway_public_key = \"g\"\nnotify_url = \"https://pos.example.com/n\"\nagent_token = \"tok\"\n\
         connect_timeout = \"700ms\"\n"
    );
    let cfg = Config::parse(
        &text,
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
    )
    .unwrap();
    let s = ClientSettings::from_config(
        &cfg,
        support::merchant_key(),
        support::gateway_public(),
        None,
    )
    .unwrap();
    assert_eq!(s.base_url, "https://open-sea-global.alipay.com");
    assert_eq!(s.client_id, "2188120000000001");
    assert_eq!(s.key_version, "2");
    assert!(!s.insecure_http);
    assert_eq!(s.notify_url.as_deref(), Some("https://pos.example.com/n"));
    assert_eq!(s.agent_token.as_ref().map(|t| t.expose()), Some("tok"));
    assert_eq!(s.connect_timeout, Duration::from_millis(700));
    let client = AmsClient::new(s).unwrap();
    assert_eq!(
        client.request_path(Operation::Refund),
        "/ams/api/v1/payments/refund"
    );

    // A sandbox config without an override has nowhere to go.
    let cfg = Config::parse(
        CONFIG,
        std::path::Path::new("t.toml"),
        std::path::Path::new("."),
    )
    .unwrap();
    let err = ClientSettings::from_config(
        &cfg,
        support::merchant_key(),
        support::gateway_public(),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("gateway.base_url"), "{err}");
}

// ---- observability -----------------------------------------------------------------------

#[tokio::test]
async fn the_observer_sees_every_call_with_outcome_and_latency() {
    let fake = FakeAms::start(Reply::Signed(PAY_F)).await;
    let records: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
    let sink = records.clone();
    let client = AmsClient::new(settings(&fake.base_url))
        .unwrap()
        .with_observer(Arc::new(move |r: &CallRecord| {
            sink.lock().unwrap().push(r.clone())
        }));
    client.pay(&support::pay_order("PR-1")).await;
    client.cancel("PR-1").await;
    let records = records.lock().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].operation, Operation::Pay);
    assert_eq!(records[0].outcome, "failed");
    assert_eq!(
        records[0].result_code.as_deref(),
        Some("USER_BALANCE_NOT_ENOUGH")
    );
    assert_eq!(records[1].operation, Operation::Cancel);
    assert!(records.iter().all(|r| r.elapsed < Duration::from_secs(5)));
}

#[tokio::test]
async fn logs_carry_the_masked_code_and_never_the_clear_code_or_token() {
    let logs = support::capture_logs();
    for reply in [
        Reply::Signed(PAY_S),
        Reply::Signed(PAY_U),
        Reply::Status(500, PAY_F),
    ] {
        let fake = FakeAms::start(reply).await;
        let mut s = settings(&fake.base_url);
        s.agent_token = Some(serde_json::from_str("\"agent-secret-1\"").unwrap());
        let client = AmsClient::new(s).unwrap();
        client.pay(&support::pay_order("PR-LOG")).await;
    }
    let logs = logs.text();
    assert!(
        logs.contains("2812**********3456"),
        "masked code logged: {logs}"
    );
    assert!(
        logs.contains("PR-LOG") && logs.contains("elapsed_ms"),
        "{logs}"
    );
    assert!(
        logs.contains("outcome=\"success\"") || logs.contains("outcome=success"),
        "{logs}"
    );
    assert!(!logs.contains(support::CODE), "clear code leaked into logs");
    assert!(
        !logs.contains("agent-secret-1"),
        "agent token leaked into logs"
    );
}
