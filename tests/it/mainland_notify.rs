//! The mainland notification endpoint in process (form POST, RSA2 over the sorted fields):
//! the SDK vector settles a payment; forged, edited, wrong-amount and other-app notifications
//! change nothing; duplicates and out-of-order statuses are acknowledged and change nothing;
//! `success` is answered only after the commit.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use posd::api::notify::NotifyState;
use posd::api::serve::ListenLimits;
use posd::domain::machine::{Inquiry, State};
use posd::domain::money::Amount;
use posd::engine::{Engine, EngineSettings};
use posd::gateway::alipay_cn::sign::{sign_content, sign_rsa2};
use posd::gateway::sign::PrivateKey;
use posd::gateway::{Answer, Gateway, PayOrder, RefundOrder, Reply};
use posd::metrics::Metrics;
use posd::store::payments::{self, Change, NewPayment};
use posd::store::Store;
use tower::ServiceExt;

use crate::support;

const APP_ID: &str = "2021000000000001";
const PATH: &str = "/alipay/notify";
/// The SDK vector's trade (`tests/vectors/alipay_cn/vectors.json`, `notifications[0]`).
const VECTOR_ID: &str = "T1_0001_pos_20260102";

/// A gateway that never answers: these tests drive the state by hand.
struct Silent;

#[async_trait::async_trait]
impl Gateway for Silent {
    async fn pay(&self, _: &PayOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown("silent")
    }
    async fn inquiry_payment(&self, _: &str) -> Reply<Inquiry> {
        Reply::<Inquiry>::unknown("silent")
    }
    async fn cancel(&self, _: &str) -> Reply<Answer> {
        Reply::<Answer>::unknown("silent")
    }
    async fn refund(&self, _: &RefundOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown("silent")
    }
    async fn inquiry_refund(&self, _: &RefundOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown("silent")
    }
}

struct Harness {
    engine: Engine,
    app: Router,
}

fn config() -> posd::config::Config {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.toml")).expect("config.toml");
    posd::config::Config::parse(&text, &root.join("config.toml"), root)
        .expect("the example config parses")
}

fn settings() -> EngineSettings {
    let mut s = EngineSettings::from_config(&config());
    s.inquiry_interval = Duration::from_millis(20);
    s
}

impl Harness {
    fn new() -> Harness {
        let store = Store::open_in_memory().expect("in-memory store");
        let engine = Engine::new(store, Arc::new(Silent), settings());
        let router = posd::api::notify_cn::router(NotifyState {
            engine: engine.clone(),
            gateway_key: Arc::new(support::gateway_public()),
            client_id: APP_ID.into(),
            path: PATH.into(),
            metrics: Metrics::new(),
        });
        // With what the listener adds around it, as the daemon serves it.
        let app = posd::api::serve::layered(router, ListenLimits::notify(&config()));
        Harness { engine, app }
    }

    /// A CNY 12.34 payment `id` moved to `state` (no task drives it).
    fn payment(&self, id: &str, state: State) {
        let id = id.to_string();
        self.engine
            .store()
            .call_blocking(move |c| {
                let new = NewPayment {
                    order_ref: None,
                    amount: Amount::parse("12.34", support::cny()).unwrap(),
                    state: State::Paying,
                    code_masked: Some("2812**********3456".into()),
                    terminal_time: "2026-01-02T11:04:05+08:00".into(),
                    pay_expires_at: None,
                };
                payments::create(c, &new, 1, |_| id.clone())?;
                if state != State::Paying {
                    let change = Change {
                        to: Some(state),
                        cause: "test set-up".into(),
                        ..Default::default()
                    };
                    payments::apply(c, &id, State::Paying, &change, 2)?.expect("set-up applies");
                }
                Ok(())
            })
            .expect("payment set up");
    }

    fn get(&self, id: &str) -> payments::PaymentRecord {
        let id = id.to_string();
        self.engine
            .store()
            .call_blocking(move |c| Ok(payments::get(c, &id)?))
            .unwrap()
            .expect("payment exists")
    }

    fn events(&self, id: &str) -> usize {
        let id = id.to_string();
        self.engine
            .store()
            .call_blocking(move |c| Ok(payments::events(c, &id)?.len()))
            .unwrap()
    }

    fn recorded(&self) -> Vec<String> {
        self.engine
            .store()
            .call_blocking(|c| Ok(posd::store::notifications::since(c, 0, false)?))
            .unwrap()
            .into_iter()
            .map(|n| n.outcome)
            .collect()
    }

    async fn post(&self, body: String) -> (StatusCode, String) {
        let req = Request::post(PATH)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(Body::from(body))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.expect("router answers");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
}

/// A notification for `id` with `status` and `amount`, signed by `key` for `app_id`.
fn form(
    key: &PrivateKey,
    app_id: &str,
    id: &str,
    status: &str,
    amount: &str,
    extra: &[(&str, &str)],
) -> String {
    let trade_no = format!("2026010222001400{}", id.len());
    let notify_id = format!("n-{id}-{status}");
    let mut fields: Vec<(&str, &str)> = vec![
        ("notify_time", "2026-01-02 11:04:08"),
        ("notify_type", "trade_status_sync"),
        ("notify_id", &notify_id),
        ("app_id", app_id),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("trade_no", &trade_no),
        ("out_trade_no", id),
        ("trade_status", status),
        ("total_amount", amount),
        ("gmt_payment", "2026-01-02 11:04:07"),
    ];
    fields.extend_from_slice(extra);
    let content = sign_content(fields.iter().copied(), &["sign", "sign_type"], true);
    let sign = sign_rsa2(key, &content);
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        s.append_pair(k, v);
    }
    s.append_pair("sign", &sign);
    s.append_pair("sign_type", "RSA2");
    s.finish()
}

fn gateway_signed(id: &str, status: &str, amount: &str) -> String {
    form(&support::gateway_key(), APP_ID, id, status, amount, &[])
}

fn assert_ack(r: &(StatusCode, String)) {
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1, "success");
}

fn assert_refused(r: &(StatusCode, String)) {
    assert_ne!(
        r.1, "success",
        "refused notifications are never acknowledged"
    );
    assert_eq!(r.0, StatusCode::BAD_REQUEST, "{}", r.1);
    assert_eq!(r.1, "fail", "Alipay reads the body as it is");
}

#[tokio::test]
async fn the_sdk_vector_notification_settles_an_inquiring_payment() {
    let h = Harness::new();
    h.payment(VECTOR_ID, State::Inquiring);
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/vectors/alipay_cn/vectors.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, val) in v["notifications"][0]["fields"].as_object().unwrap() {
        s.append_pair(k, val.as_str().unwrap());
    }
    assert_ack(&h.post(s.finish()).await);
    let p = h.get(VECTOR_ID);
    assert_eq!(p.state, State::Succeeded);
    assert_eq!(
        p.payment_id.as_deref(),
        Some("2026010222001400001234567890")
    );
    assert_eq!(h.recorded(), vec!["APPLIED"]);
}

#[tokio::test]
async fn forged_and_edited_notifications_are_refused_and_change_nothing() {
    let h = Harness::new();
    h.payment("F1", State::Inquiring);
    // Signed with the merchant's own key (or any key but the Alipay one).
    let forged = form(
        &support::merchant_key(),
        APP_ID,
        "F1",
        "TRADE_SUCCESS",
        "12.34",
        &[],
    );
    assert_refused(&h.post(forged).await);
    // The gateway's signature, then a field changed.
    let edited =
        gateway_signed("F1", "TRADE_CLOSED", "12.34").replace("TRADE_CLOSED", "TRADE_SUCCESS");
    assert_refused(&h.post(edited).await);
    // An added field the signature does not cover.
    let added = format!(
        "{}&refund_fee=12.34",
        gateway_signed("F1", "TRADE_SUCCESS", "12.34")
    );
    assert_refused(&h.post(added).await);
    // No signature at all; RSA (SHA1) instead of RSA2.
    let unsigned = gateway_signed("F1", "TRADE_SUCCESS", "12.34")
        .split('&')
        .filter(|kv| !kv.starts_with("sign="))
        .collect::<Vec<_>>()
        .join("&");
    assert_refused(&h.post(unsigned).await);
    let sha1 =
        gateway_signed("F1", "TRADE_SUCCESS", "12.34").replace("sign_type=RSA2", "sign_type=RSA");
    assert_refused(&h.post(sha1).await);
    assert_refused(&h.post("not a form &&& a=1&a=2".into()).await);
    assert_eq!(h.get("F1").state, State::Inquiring);
    assert_eq!(h.events("F1"), 2);
    assert!(h.recorded().is_empty(), "nothing recorded");
}

/// A genuine notification the store cannot record (its write refused) is answered a plain
/// `fail` with a 500, so Alipay sends it again, and changes nothing; sent again once the
/// store takes writes, it is applied once.
#[tokio::test]
async fn a_notification_that_cannot_be_recorded_is_answered_fail_and_changes_nothing() {
    let h = Harness::new();
    h.payment("D1", State::Inquiring);
    let refuse = |on: bool| {
        let sql = if on {
            "CREATE TRIGGER refuse BEFORE INSERT ON notifications \
             BEGIN SELECT RAISE(ABORT, 'the disk refuses the write'); END"
        } else {
            "DROP TRIGGER refuse"
        };
        h.engine
            .store()
            .call_blocking(move |c| Ok(c.execute_batch(sql)?))
            .unwrap();
    };
    let genuine = gateway_signed("D1", "TRADE_SUCCESS", "12.34");
    refuse(true);
    assert_eq!(
        h.post(genuine.clone()).await,
        (StatusCode::INTERNAL_SERVER_ERROR, "fail".to_string()),
        "not recorded: a 500 and the plain fail Alipay reads"
    );
    assert_eq!(h.get("D1").state, State::Inquiring);
    assert_eq!(h.events("D1"), 2);
    assert!(h.recorded().is_empty(), "nothing recorded");
    refuse(false);
    assert_ack(&h.post(genuine.clone()).await);
    assert_eq!(h.get("D1").state, State::Succeeded);
    assert_ack(&h.post(genuine).await);
    assert_eq!(h.recorded(), vec!["APPLIED", "DUPLICATE"]);
}

#[tokio::test]
async fn another_app_id_is_refused_even_when_signed_by_the_gateway() {
    let h = Harness::new();
    h.payment("W1", State::Inquiring);
    let other = form(
        &support::gateway_key(),
        "2021999999999999",
        "W1",
        "TRADE_SUCCESS",
        "12.34",
        &[],
    );
    assert_refused(&h.post(other).await);
    assert_eq!(h.get("W1").state, State::Inquiring);
    assert!(h.recorded().is_empty());
}

#[tokio::test]
async fn a_wrong_amount_needs_attention_instead_of_success() {
    let h = Harness::new();
    for (id, amount) in [
        ("A1", "12.35"),
        ("A2", "1234"),
        ("A3", "12.340"),
        ("A4", "012.34"),
    ] {
        h.payment(id, State::Inquiring);
        assert_ack(&h.post(gateway_signed(id, "TRADE_SUCCESS", amount)).await);
        let p = h.get(id);
        assert_eq!(p.state, State::NeedsAttention, "{id} {amount}");
        assert!(
            p.attention_reason
                .as_deref()
                .unwrap_or("")
                .contains("notification"),
            "{id}: {:?}",
            p.attention_reason
        );
    }
}

#[tokio::test]
async fn duplicates_and_out_of_order_statuses_change_nothing_and_are_acknowledged() {
    let h = Harness::new();
    h.payment("D1", State::Inquiring);
    let paid = gateway_signed("D1", "TRADE_SUCCESS", "12.34");
    assert_ack(&h.post(paid.clone()).await);
    assert_eq!(h.get("D1").state, State::Succeeded);
    let events = h.events("D1");
    // The same notification again (the gateway resends until it reads `success`).
    assert_ack(&h.post(paid.clone()).await);
    // TRADE_FINISHED later, then a late TRADE_SUCCESS after it: statuses only move forward.
    assert_ack(
        &h.post(gateway_signed("D1", "TRADE_FINISHED", "12.34"))
            .await,
    );
    assert_ack(&h.post(paid).await);
    // A close after a full refund made outside this sale.
    let closed = form(
        &support::gateway_key(),
        APP_ID,
        "D1",
        "TRADE_CLOSED",
        "12.34",
        &[
            ("refund_fee", "12.34"),
            ("gmt_refund", "2026-01-03 10:00:00"),
        ],
    );
    assert_ack(&h.post(closed).await);
    let p = h.get("D1");
    assert_eq!(p.state, State::Succeeded);
    assert_eq!(h.events("D1"), events, "nothing after the first applied");
    let outcomes = h.recorded();
    assert_eq!(outcomes[0], "APPLIED");
    assert!(outcomes[1..].iter().all(|o| o != "APPLIED"), "{outcomes:?}");
}

#[tokio::test]
async fn a_close_without_refund_fails_an_unpaid_sale_and_wait_buyer_pay_changes_nothing() {
    let h = Harness::new();
    h.payment("C1", State::Inquiring);
    assert_ack(
        &h.post(gateway_signed("C1", "WAIT_BUYER_PAY", "12.34"))
            .await,
    );
    assert_eq!(h.get("C1").state, State::Inquiring);
    assert_ack(&h.post(gateway_signed("C1", "TRADE_CLOSED", "12.34")).await);
    assert_eq!(h.get("C1").state, State::Failed);
    // A late TRADE_SUCCESS cannot undo a final state.
    assert_ack(&h.post(gateway_signed("C1", "TRADE_SUCCESS", "12.34")).await);
    assert_eq!(h.get("C1").state, State::Failed);
}

#[tokio::test]
async fn the_mainland_sandbox_notifies_a_paid_trade_and_the_endpoint_applies_it() {
    use posd::gateway::alipay_cn::{CnClient, CnSettings};
    use posd::gateway::sandbox::{Sandbox, SandboxSettings};
    let h = Harness::new();
    h.payment("N1", State::Inquiring);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let notify_url = format!("http://{}{PATH}", listener.local_addr().unwrap());
    let app = h.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::start(SandboxSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("sandbox.sqlite3"),
        support::gateway_key(),
        support::merchant_public(),
    ))
    .await
    .unwrap();
    let client = CnClient::new(CnSettings {
        base_url: format!("{}/gateway.do", sandbox.base_url()),
        app_id: APP_ID.into(),
        merchant_key: support::merchant_key(),
        alipay_key: support::gateway_public(),
        notify_url: Some(notify_url),
        app_auth_token: None,
        store_id: None,
        terminal_id: None,
        trade_timeout: "5m".into(),
        insecure_http: true,
        connect_timeout: Duration::from_secs(1),
        pay_timeout: Duration::from_secs(3),
        inquiry_timeout: Duration::from_secs(3),
        cancel_timeout: Duration::from_secs(3),
    })
    .unwrap();
    // The pay answers here; the test's engine learns it only through the notification.
    assert_eq!(
        client.pay(&support::pay_order("N1")).await.answer,
        Answer::Success
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.get("N1").state != State::Succeeded {
        assert!(
            std::time::Instant::now() < deadline,
            "the notification never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.recorded(), vec!["APPLIED"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sandbox.counts().notifications_acked < 1 {
        assert!(std::time::Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sandbox.counts().notifications,
        1,
        "acknowledged at once: no resend"
    );
    sandbox.shutdown().await;
}
