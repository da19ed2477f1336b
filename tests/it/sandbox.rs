//! The sandbox gateway driven through the real `AmsClient`: every row of the docs/design.md
//! scenario table, idempotency, the refusal paths, signatures, restarts and the counters.
//! Timings are short: `cancel_outage` 300 ms, 200 ms client deadlines for "no answer".

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::money::Amount;
use posd::gateway::client::{AmsClient, ClientSettings, MerchantIdentity};
use posd::gateway::sandbox::{RequestCounts, Sandbox, SandboxHandle, SandboxSettings};
use posd::gateway::sign::{Message, PrivateKey};
use posd::gateway::wire::{self, InquiryPaymentResponse};
use posd::gateway::{Outcome, PayOrder, RefundOrder};

use crate::support;

const OUTAGE: Duration = Duration::from_millis(300);
/// Deadline for calls the sandbox answers at once.
const ANSWERED: Duration = Duration::from_secs(3);
/// Deadline for calls the sandbox leaves unanswered.
const NO_ANSWER: Duration = Duration::from_millis(200);
const SANDBOX_CLIENT_ID: &str = "SANDBOX_POSD_TEST";

fn listen() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

async fn start_at(db: &Path) -> SandboxHandle {
    let mut settings = SandboxSettings::new(
        listen(),
        db.to_path_buf(),
        support::gateway_key(),
        support::merchant_public(),
    );
    settings.cancel_outage = OUTAGE;
    Sandbox::start(settings).await.expect("sandbox starts")
}

/// A sandbox on a fresh database (keep the `TempDir` alive).
async fn start() -> (tempfile::TempDir, SandboxHandle) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sandbox = start_at(&dir.path().join("sandbox.sqlite3")).await;
    (dir, sandbox)
}

fn settings(sandbox: &SandboxHandle, client_id: &str, deadline: Duration) -> ClientSettings {
    ClientSettings {
        base_url: sandbox.base_url(),
        client_id: client_id.into(),
        key_version: "1".into(),
        merchant_key: support::merchant_key(),
        gateway_key: support::gateway_public(),
        notify_url: None,
        agent_token: None,
        insecure_http: true,
        connect_timeout: Duration::from_secs(1),
        pay_timeout: deadline,
        inquiry_timeout: deadline,
        cancel_timeout: deadline,
        merchant: MerchantIdentity {
            merchant_id: "M1".into(),
            merchant_name: "Test Merchant".into(),
            merchant_mcc: "5812".into(),
            store_id: "S1".into(),
            store_name: "Test Store".into(),
            store_mcc: "5812".into(),
            terminal_id: "T1".into(),
        },
    }
}

/// A client whose calls wait for an answer.
fn client(sandbox: &SandboxHandle) -> AmsClient {
    AmsClient::new(settings(sandbox, SANDBOX_CLIENT_ID, ANSWERED)).expect("client builds")
}

/// A client whose deadline cuts "no answer" short.
fn impatient(sandbox: &SandboxHandle) -> AmsClient {
    AmsClient::new(settings(sandbox, SANDBOX_CLIENT_ID, NO_ANSWER)).expect("client builds")
}

/// An order for CNY `amount` with a code ending in `nn` (the scenario).
fn order(id: &str, nn: u8, amount: &str) -> PayOrder {
    let code = format!("2812345678901234{nn:02}");
    PayOrder {
        code: PaymentCode::parse(&code, &CodeRules::default()).expect("valid code"),
        amount: Amount::parse(amount, support::cny()).expect("valid amount"),
        ..support::pay_order(id)
    }
}

fn refund_order(refund_id: &str, payment_id: &str, amount: &str) -> RefundOrder {
    RefundOrder {
        refund_request_id: refund_id.into(),
        payment_id: payment_id.into(),
        amount: Amount::parse(amount, support::cny()).expect("valid amount"),
        reason: None,
    }
}

#[track_caller]
fn success<T: std::fmt::Debug>(o: Outcome<T>) -> T {
    match o {
        Outcome::Success(t) => t,
        other => panic!("expected success, got {other:?}"),
    }
}

#[track_caller]
fn failed_code<T: std::fmt::Debug>(o: Outcome<T>) -> String {
    match o {
        Outcome::Failed { code, .. } => code,
        other => panic!("expected F, got {other:?}"),
    }
}

#[track_caller]
fn unknown_why<T: std::fmt::Debug>(o: Outcome<T>) -> String {
    match o {
        Outcome::Unknown { why } => why,
        other => panic!("expected unknown, got {other:?}"),
    }
}

async fn status(c: &AmsClient, id: &str) -> String {
    let r: InquiryPaymentResponse = success(c.inquiry_payment(id).await);
    r.payment_status.expect("inquiry carries paymentStatus")
}

#[tokio::test]
async fn rows_00_to_79_pay_at_once() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    for nn in [0, 42, 79] {
        let id = format!("ok-{nn}");
        let r = success(c.pay(&order(&id, nn, "12.34")).await);
        assert_eq!(r.result.result_code, "SUCCESS");
        assert_eq!(r.payment_request_id.as_deref(), Some(id.as_str()));
        assert!(r.payment_id.is_some());
        assert!(r.payment_time.is_some());
        assert_eq!(
            r.payment_amount,
            Some(wire::WireAmount {
                currency: "CNY".into(),
                value: "1234".into()
            })
        );
        assert_eq!(status(&c, &id).await, "SUCCESS");
    }
}

#[tokio::test]
async fn rows_80_81_89_decline() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    for (nn, code) in [
        (80, "USER_BALANCE_NOT_ENOUGH"),
        (81, "EXPIRED_CODE"),
        (89, "RISK_REJECT"),
    ] {
        let id = format!("decline-{nn}");
        assert_eq!(failed_code(c.pay(&order(&id, nn, "5.00")).await), code);
        let r: InquiryPaymentResponse = success(c.inquiry_payment(&id).await);
        assert_eq!(r.payment_status.as_deref(), Some("FAIL"));
        assert_eq!(r.payment_result_code.as_deref(), Some(code));
    }
}

#[tokio::test]
async fn row_82_processes_twice_then_succeeds() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    let why = unknown_why(c.pay(&order("p82", 82, "12.34")).await);
    assert!(why.contains("PAYMENT_IN_PROCESS"), "{why}");
    assert_eq!(status(&c, "p82").await, "PROCESSING");
    assert_eq!(status(&c, "p82").await, "PROCESSING");
    assert_eq!(status(&c, "p82").await, "SUCCESS");
    assert_eq!(status(&c, "p82").await, "SUCCESS");
}

#[tokio::test]
async fn row_83_stays_processing_until_cancelled() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    let why = unknown_why(c.pay(&order("p83", 83, "12.34")).await);
    assert!(why.contains("PAYMENT_IN_PROCESS"), "{why}");
    for _ in 0..4 {
        assert_eq!(status(&c, "p83").await, "PROCESSING");
    }
    let r = success(c.cancel("p83").await);
    assert_eq!(r.payment_request_id.as_deref(), Some("p83"));
    assert!(r.cancel_time.is_some());
    assert_eq!(status(&c, "p83").await, "CANCELLED");
    // Cancel is idempotent; paying a cancelled id is refused.
    success(c.cancel("p83").await);
    assert_eq!(
        failed_code(c.pay(&order("p83", 83, "12.34")).await),
        "ORDER_IS_CLOSED"
    );
}

#[tokio::test]
async fn row_84_loses_the_answer_but_charges() {
    let (_dir, sb) = start().await;
    let started = Instant::now();
    let why = unknown_why(impatient(&sb).pay(&order("p84", 84, "12.34")).await);
    assert!(why.contains("timed out"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let c = client(&sb);
    let r: InquiryPaymentResponse = success(c.inquiry_payment("p84").await);
    assert_eq!(r.payment_status.as_deref(), Some("SUCCESS"));
    assert!(r.payment_time.is_some());
}

#[tokio::test]
async fn row_85_never_arrives_and_cancels() {
    let (_dir, sb) = start().await;
    let fast = impatient(&sb);
    let why = unknown_why(fast.pay(&order("p85", 85, "12.34")).await);
    assert!(why.contains("timed out"), "{why}");
    let why = unknown_why(fast.inquiry_payment("p85").await);
    assert!(why.contains("timed out"), "{why}");
    let c = client(&sb);
    success(c.cancel("p85").await);
    assert_eq!(status(&c, "p85").await, "CANCELLED");
}

#[tokio::test]
async fn row_86_cancel_is_unanswered_through_the_outage() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    unknown_why(c.pay(&order("p86", 86, "12.34")).await);
    // The outage runs from the moment the sandbox recorded the pay, which answered U: it
    // began before the answer came back, so it is surely over OUTAGE after this.
    let paid = Instant::now();
    assert_eq!(status(&c, "p86").await, "PROCESSING");
    let why = unknown_why(impatient(&sb).cancel("p86").await);
    assert!(why.contains("timed out"), "{why}");
    // The unanswered cancel changed nothing.
    assert_eq!(status(&c, "p86").await, "PROCESSING");
    if let Some(left) = OUTAGE.checked_sub(paid.elapsed()) {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
    success(c.cancel("p86").await);
    assert_eq!(status(&c, "p86").await, "CANCELLED");
}

#[tokio::test]
async fn row_87_cancel_window_passed_so_refund() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    unknown_why(c.pay(&order("p87", 87, "12.34")).await);
    let r: InquiryPaymentResponse = success(c.inquiry_payment("p87").await);
    assert_eq!(r.payment_status.as_deref(), Some("PROCESSING"));
    let payment_id = r.payment_id.expect("inquiry carries paymentId");
    assert_eq!(failed_code(c.cancel("p87").await), "CANCEL_WINDOW_EXCEED");
    assert_eq!(failed_code(c.cancel("p87").await), "CANCEL_WINDOW_EXCEED");
    let r = success(c.refund(&refund_order("r87", &payment_id, "12.34")).await);
    assert_eq!(r.refund_amount.map(|a| a.value).as_deref(), Some("1234"));
    assert_eq!(r.payment_id.as_deref(), Some(payment_id.as_str()));
    let r = success(c.inquiry_refund("r87").await);
    assert_eq!(r.refund_status.as_deref(), Some("SUCCESS"));
    assert_eq!(
        failed_code(
            c.refund(&refund_order("r87-more", &payment_id, "0.01"))
                .await
        ),
        "REFUND_AMOUNT_EXCEED"
    );
}

#[tokio::test]
async fn row_88_signs_the_success_wrongly() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    let why = unknown_why(c.pay(&order("p88", 88, "12.34")).await);
    assert!(why.contains("bad signature"), "{why}");
    assert_eq!(status(&c, "p88").await, "SUCCESS");
}

#[tokio::test]
async fn a_repeated_pay_answers_the_same_and_charges_once() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    let first = success(c.pay(&order("rep", 7, "12.34")).await);
    let again = success(c.pay(&order("rep", 7, "12.34")).await);
    assert_eq!(first.payment_id, again.payment_id);
    assert_eq!(first.payment_time, again.payment_time);
    // A declined payment repeats its decline.
    assert_eq!(
        failed_code(c.pay(&order("rep-f", 80, "1.00")).await),
        "USER_BALANCE_NOT_ENOUGH"
    );
    assert_eq!(
        failed_code(c.pay(&order("rep-f", 80, "1.00")).await),
        "USER_BALANCE_NOT_ENOUGH"
    );
    // One charge: the whole amount is refundable once, not twice.
    let pid = first.payment_id.expect("paymentId");
    success(c.refund(&refund_order("rep-r1", &pid, "12.34")).await);
    assert_eq!(
        failed_code(c.refund(&refund_order("rep-r2", &pid, "12.34")).await),
        "REFUND_AMOUNT_EXCEED"
    );
}

#[tokio::test]
async fn reused_ids_with_other_key_fields_are_inconsistent() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    let pid = success(c.pay(&order("inc", 1, "12.34")).await)
        .payment_id
        .expect("paymentId");
    assert_eq!(
        failed_code(c.pay(&order("inc", 1, "12.35")).await),
        "REPEAT_REQ_INCONSISTENT"
    );
    assert_eq!(
        failed_code(c.pay(&order("inc", 2, "12.34")).await),
        "REPEAT_REQ_INCONSISTENT"
    );
    // The original stands.
    assert_eq!(
        success(c.pay(&order("inc", 1, "12.34")).await)
            .payment_id
            .as_deref(),
        Some(pid.as_str())
    );

    let r1 = success(c.refund(&refund_order("inc-r", &pid, "1.00")).await);
    let r2 = success(c.refund(&refund_order("inc-r", &pid, "1.00")).await);
    assert_eq!(
        r1.refund_id, r2.refund_id,
        "a repeated refund is the same refund"
    );
    assert_eq!(
        failed_code(c.refund(&refund_order("inc-r", &pid, "2.00")).await),
        "REPEAT_REQ_INCONSISTENT"
    );
    // Only the one refund counted: 11.34 is left.
    success(c.refund(&refund_order("inc-r2", &pid, "11.34")).await);
}

#[tokio::test]
async fn unknown_ids_do_not_exist() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    assert_eq!(failed_code(c.cancel("nobody").await), "ORDER_NOT_EXIST");
    assert_eq!(
        failed_code(c.inquiry_payment("nobody").await),
        "ORDER_NOT_EXIST"
    );
    assert_eq!(
        failed_code(
            c.refund(&refund_order("r-nobody", "SBX-nobody", "1.00"))
                .await
        ),
        "ORDER_NOT_EXIST"
    );
    assert_eq!(
        failed_code(c.inquiry_refund("r-nobody").await),
        "ORDER_NOT_EXIST"
    );
}

#[tokio::test]
async fn refunds_stop_at_what_is_left() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    let pid = success(c.pay(&order("left", 3, "12.34")).await)
        .payment_id
        .expect("paymentId");
    success(c.refund(&refund_order("left-1", &pid, "10.00")).await);
    assert_eq!(
        failed_code(c.refund(&refund_order("left-2", &pid, "2.35")).await),
        "REFUND_AMOUNT_EXCEED"
    );
    success(c.refund(&refund_order("left-3", &pid, "2.34")).await);
    // After a refund, a cancel can no longer reverse the whole payment.
    assert_eq!(failed_code(c.cancel("left").await), "ORDER_STATUS_INVALID");
}

#[tokio::test]
async fn only_charged_payments_refund() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    failed_code(c.pay(&order("declined", 80, "12.34")).await);
    let declined = success(c.inquiry_payment("declined").await)
        .payment_id
        .expect("paymentId");
    assert_eq!(
        failed_code(c.refund(&refund_order("rd", &declined, "1.00")).await),
        "ORDER_STATUS_INVALID"
    );
    let pid = success(c.pay(&order("cx", 4, "12.34")).await)
        .payment_id
        .expect("paymentId");
    // A cancel of a success gives the money back; nothing is left to refund.
    success(c.cancel("cx").await);
    assert_eq!(status(&c, "cx").await, "CANCELLED");
    assert_eq!(
        failed_code(c.refund(&refund_order("rc", &pid, "1.00")).await),
        "ORDER_STATUS_INVALID"
    );
}

#[tokio::test]
async fn a_forged_request_gets_an_unsigned_invalid_signature() {
    let (_dir, sb) = start().await;
    // Signed with the wrong private key.
    let mut s = settings(&sb, SANDBOX_CLIENT_ID, ANSWERED);
    s.merchant_key = Arc::new(support::gateway_key());
    let forged = AmsClient::new(s).expect("client builds");
    assert_eq!(
        failed_code(forged.pay(&order("forged", 0, "12.34")).await),
        "INVALID_SIGNATURE"
    );
    // Nothing was charged.
    assert_eq!(
        failed_code(client(&sb).inquiry_payment("forged").await),
        "ORDER_NOT_EXIST"
    );

    // On the wire: no signature headers on the refusal, and a tampered body is refused too.
    let body = br#"{"paymentRequestId":"forged"}"#;
    let path = "/ams/sandbox/api/v1/payments/inquiryPayment";
    let resp = raw_post(&sb, path, body, Some(br#"{"paymentRequestId":"other"}"#)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("signature").is_none());
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["result"]["resultCode"], "INVALID_SIGNATURE");
    assert_eq!(v["result"]["resultStatus"], "F");

    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}{path}", sb.base_url()))
        .body(&body[..])
        .send()
        .await
        .expect("sent");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["result"]["resultCode"], "INVALID_SIGNATURE");
    assert_eq!(sb.counts().rejected, 3);
}

/// POSTs `body` signed as the merchant (over `signed_body` instead when given).
async fn raw_post(
    sb: &SandboxHandle,
    path: &str,
    body: &[u8],
    signed_body: Option<&[u8]>,
) -> reqwest::Response {
    let key: Arc<PrivateKey> = support::merchant_key();
    let time = "1700000000000";
    let signature = key.sign_header(
        "1",
        &Message {
            method: "POST",
            uri: path,
            client_id: SANDBOX_CLIENT_ID,
            time,
            body: signed_body.unwrap_or(body),
        },
    );
    reqwest::Client::new()
        .post(format!("{}{path}", sb.base_url()))
        .header("content-type", "application/json; charset=UTF-8")
        .header("client-id", SANDBOX_CLIENT_ID)
        .header("request-time", time)
        .header("signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn malformed_requests_are_param_illegal_and_signed() {
    let (_dir, sb) = start().await;
    let gateway = support::gateway_public();
    for (path, body) in [
        ("/ams/sandbox/api/v1/payments/pay", &b"{not json"[..]),
        (
            "/ams/api/v1/payments/pay",
            &br#"{"paymentRequestId":"x"}"#[..],
        ),
        ("/ams/api/v1/payments/cancel", &b"{}"[..]),
        (
            "/ams/api/v1/payments/refund",
            &br#"{"refundRequestId":"r"}"#[..],
        ),
    ] {
        let resp = raw_post(&sb, path, body, None).await;
        assert_eq!(resp.status(), 200, "{path}");
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (sig, time, cid) = (
            h("signature").expect("signed"),
            h("response-time").expect("time"),
            h("client-id"),
        );
        assert_eq!(cid.as_deref(), Some(SANDBOX_CLIENT_ID));
        let raw = resp.bytes().await.expect("body");
        let msg = Message {
            method: "POST",
            uri: path,
            client_id: SANDBOX_CLIENT_ID,
            time: &time,
            body: &raw,
        };
        gateway
            .verify_header(&msg, &sig)
            .expect("the answer verifies");
        let v: serde_json::Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(v["result"]["resultCode"], "PARAM_ILLEGAL", "{path}");
        assert_eq!(v["result"]["resultStatus"], "F");
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let (_dir, sb) = start().await;
    for path in [
        "/ams/api/v1/payments/cancelPayment",
        "/ams/api/v2/payments/pay",
        "/",
    ] {
        let resp = raw_post(&sb, path, b"{}", None).await;
        assert_eq!(resp.status(), 404, "{path}");
    }
    assert_eq!(sb.counts(), RequestCounts::default());
}

#[tokio::test]
async fn both_path_forms_are_served() {
    let (_dir, sb) = start().await;
    let production = AmsClient::new(settings(&sb, "2188000000000001", ANSWERED)).expect("client");
    success(production.pay(&order("prod-path", 9, "1.00")).await);
    // Payments are shared: the sandbox-form client sees it.
    assert_eq!(status(&client(&sb), "prod-path").await, "SUCCESS");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("sandbox.sqlite3");
    let sb = start_at(&db).await;
    let c = client(&sb);
    unknown_why(c.pay(&order("restart", 82, "12.34")).await);
    assert_eq!(status(&c, "restart").await, "PROCESSING");
    sb.shutdown().await;

    let sb = start_at(&db).await;
    let c = client(&sb);
    assert_eq!(status(&c, "restart").await, "PROCESSING");
    assert_eq!(status(&c, "restart").await, "SUCCESS");
    // The same payment, not a new one.
    let again = success(c.pay(&order("restart", 82, "12.34")).await);
    assert_eq!(again.result.result_code, "SUCCESS");
    sb.shutdown().await;
}

#[tokio::test]
async fn counters_count_every_request() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    success(c.pay(&order("cnt", 5, "3.00")).await);
    success(c.pay(&order("cnt", 5, "3.00")).await);
    success(c.inquiry_payment("cnt").await);
    let pid = success(c.inquiry_payment("cnt").await)
        .payment_id
        .expect("paymentId");
    success(c.refund(&refund_order("cnt-r", &pid, "1.00")).await);
    success(c.inquiry_refund("cnt-r").await);
    failed_code(c.cancel("cnt").await);
    assert_eq!(
        sb.counts(),
        RequestCounts {
            pay: 2,
            inquiry_payment: 2,
            cancel: 1,
            refund: 1,
            inquiry_refund: 1,
            ..RequestCounts::default()
        }
    );
    // Unanswered requests count too.
    unknown_why(impatient(&sb).pay(&order("cnt-85", 85, "3.00")).await);
    assert_eq!(sb.counts().pay, 3);
}

#[tokio::test]
async fn shutdown_ends_held_requests() {
    let (_dir, sb) = start().await;
    let patient =
        AmsClient::new(settings(&sb, SANDBOX_CLIENT_ID, Duration::from_secs(30))).expect("client");
    let held = tokio::spawn(async move { patient.pay(&order("held", 85, "1.00")).await });
    while sb.counts().pay == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), sb.shutdown())
        .await
        .expect("shutdown does not hang");
    let outcome = held.await.expect("task");
    unknown_why(outcome);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// What a notification receiver saw.
#[derive(Debug, Clone)]
struct Received {
    client_id: String,
    time: String,
    signature: String,
    body: Vec<u8>,
}

/// A notification endpoint on loopback that answers "retry" first, then the ACK.
async fn notify_receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    use axum::http::HeaderMap;
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/alipay/notify",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let mut log = log.lock().expect("lock");
                log.push(Received {
                    client_id: h("client-id"),
                    time: h("request-time"),
                    signature: h("signature"),
                    body: body.to_vec(),
                });
                if log.len() == 1 {
                    wire::NOTIFY_RETRY
                } else {
                    wire::NOTIFY_ACK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen()).await.expect("bind");
    let url = format!(
        "http://{}/alipay/notify",
        listener.local_addr().expect("addr")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn results_are_notified_until_acknowledged() {
    let (_dir, sb) = start().await;
    let (url, seen) = notify_receiver().await;
    let mut s = settings(&sb, SANDBOX_CLIENT_ID, ANSWERED);
    s.notify_url = Some(url);
    let c = AmsClient::new(s).expect("client");
    let paid = success(c.pay(&order("ntf", 11, "12.34")).await);

    let deadline = Instant::now() + Duration::from_secs(5);
    while sb.counts().notifications_acked == 0 {
        assert!(
            Instant::now() < deadline,
            "no acknowledged notification: {:?}",
            sb.counts()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "one retry after the non-ACK answer");
    assert_eq!(sb.counts().notifications, 2);
    let last = &seen[1];
    assert_eq!(last.client_id, SANDBOX_CLIENT_ID);
    posd::gateway::client::verify_notification(
        &support::gateway_public(),
        "/alipay/notify",
        &last.client_id,
        &last.time,
        &last.body,
        &last.signature,
    )
    .expect("the notification verifies");
    let n: wire::NotifyPayment = serde_json::from_slice(&last.body).expect("notify json");
    assert_eq!(n.notify_type.as_deref(), Some("PAYMENT_RESULT"));
    assert_eq!(n.result.result_status, "S");
    assert_eq!(n.payment_request_id.as_deref(), Some("ntf"));
    assert_eq!(n.payment_id, paid.payment_id);
    assert_eq!(n.payment_amount.map(|a| a.value).as_deref(), Some("1234"));
    assert!(n.payment_time.is_some());

    // A repeated pay does not notify again.
    success(c.pay(&order("ntf", 11, "12.34")).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sb.counts().notifications, 2);
}

#[tokio::test]
async fn a_pay_that_arrives_after_its_expiry_is_not_processed() {
    let (_dir, sb) = start().await;
    let c = client(&sb);
    let late = PayOrder {
        expires_at: Some(chrono::Utc::now().fixed_offset() - chrono::Duration::seconds(1)),
        ..order("expired-1", 10, "12.34")
    };
    assert_eq!(failed_code(c.pay(&late).await), "ORDER_IS_CLOSED");
    // Not recorded: the gateway has no such payment, and nothing was charged.
    assert_eq!(
        failed_code(c.inquiry_payment("expired-1").await),
        "ORDER_NOT_EXIST"
    );
    assert_eq!(failed_code(c.cancel("expired-1").await), "ORDER_NOT_EXIST");
    // In time, the same scenario charges.
    let in_time = PayOrder {
        expires_at: Some(chrono::Utc::now().fixed_offset() + chrono::Duration::minutes(3)),
        ..order("expired-2", 10, "12.34")
    };
    success(c.pay(&in_time).await);
}
