//! The notifyPayment endpoint in process: the signature vectors' gateway key, every refusal
//! (forged, edited body, wrong client id, headers, size, content type), amount and currency
//! checks, duplicates, late notifications after a local cancel, unknown payments, and the
//! race with an inquiry answer (exactly one applies).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use posd::api::notify::{NotifyState, MAX_NOTIFY_BODY};
use posd::domain::machine::{Event, Inquiry, State};
use posd::domain::money::Amount;
use posd::engine::{Engine, EngineSettings};
use posd::gateway::sign::{Message, PrivateKey};
use posd::gateway::wire::NOTIFY_ACK;
use posd::gateway::{Answer, Gateway, PayOrder, RefundOrder, Reply};
use posd::metrics::Metrics;
use posd::store::notifications;
use posd::store::payments::{self, Change, NewPayment};
use posd::store::Store;
use tower::ServiceExt;

use crate::support;

/// The vectors' client id, path and payment (`tests/keys/signature_vectors.json`, case
/// `notify_payment`).
const CLIENT_ID: &str = "SANDBOX_5Y3A2N2YEB3002022";
const PATH: &str = "/notify";
const VECTOR_ID: &str = "20261121101530T0001000000012340000042817263";

/// A gateway that never answers: these tests drive the state by hand.
struct Silent;

#[async_trait::async_trait]
impl Gateway for Silent {
    async fn pay(&self, _: &PayOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown(SILENT)
    }
    async fn inquiry_payment(&self, _: &str) -> Reply<Inquiry> {
        Reply::<Inquiry>::unknown(SILENT)
    }
    async fn cancel(&self, _: &str) -> Reply<Answer> {
        Reply::<Answer>::unknown(SILENT)
    }
    async fn refund(&self, _: &RefundOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown(SILENT)
    }
    async fn inquiry_refund(&self, _: &RefundOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown(SILENT)
    }
}

const SILENT: &str = "silent test gateway";

struct Harness {
    engine: Engine,
    app: Router,
    metrics: Arc<Metrics>,
}

/// The repository's example config with short timings (new settings fields follow it).
fn settings() -> EngineSettings {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.toml")).expect("config.toml");
    let cfg = posd::config::Config::parse(&text, &root.join("config.toml"), root)
        .expect("the example config parses");
    let mut s = EngineSettings::from_config(&cfg);
    s.pay_timeout = Duration::from_millis(300);
    s.inquiry_interval = Duration::from_millis(20);
    s.inquiry_timeout = Duration::from_millis(200);
    s.cancel_timeout = Duration::from_millis(200);
    s.cancel_retry_window = Duration::from_millis(300);
    s.cancel_retry_min = Duration::from_millis(20);
    s.cancel_retry_max = Duration::from_millis(50);
    s
}

impl Harness {
    fn new() -> Harness {
        let store = Store::open_in_memory().expect("in-memory store");
        let engine = Engine::new(store, Arc::new(Silent), settings());
        let metrics = Metrics::new();
        let app = posd::api::notify::router(NotifyState {
            engine: engine.clone(),
            gateway_key: Arc::new(support::gateway_public()),
            client_id: CLIENT_ID.into(),
            path: PATH.into(),
            metrics: metrics.clone(),
        });
        Harness {
            engine,
            app,
            metrics,
        }
    }

    /// A CNY 12.34 payment with id `id` moved to `state` (no task drives it).
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
                    terminal_time: "2026-11-21T10:15:30+08:00".into(),
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

    fn event_count(&self, id: &str) -> usize {
        let id = id.to_string();
        self.engine
            .store()
            .call_blocking(move |c| Ok(payments::events(c, &id)?.len()))
            .unwrap()
    }

    fn recorded(&self) -> Vec<notifications::NotificationRecord> {
        self.engine
            .store()
            .call_blocking(|c| Ok(notifications::since(c, 0, false)?))
            .unwrap()
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, String) {
        let resp = self.app.clone().oneshot(req).await.expect("router answers");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
}

fn body_for(id: &str, status: &str, code: &str, value: &str, currency: &str) -> String {
    format!(
        r#"{{"notifyType":"PAYMENT_RESULT","result":{{"resultCode":"{code}","resultStatus":"{status}","resultMessage":"m"}},"paymentRequestId":"{id}","paymentId":"G-{id}","paymentAmount":{{"currency":"{currency}","value":"{value}"}},"paymentCreateTime":"2026-11-20T18:15:30-08:00","paymentTime":"2026-11-20T18:15:31-08:00"}}"#
    )
}

fn paid(id: &str) -> String {
    body_for(id, "S", "SUCCESS", "1234", "CNY")
}

const TIME: &str = "2026-11-21T02:15:32+00:00";

/// A request signed by `key` over `signed_path`, posted to `uri`.
fn signed_by(
    key: &PrivateKey,
    uri: &str,
    signed_path: &str,
    client_id: &str,
    body: &str,
) -> Request<Body> {
    let sig = key.sign_header(
        "1",
        &Message {
            method: "POST",
            uri: signed_path,
            client_id,
            time: TIME,
            body: body.as_bytes(),
        },
    );
    Request::post(uri)
        .header("content-type", "application/json; charset=UTF-8")
        .header("client-id", client_id)
        .header("request-time", TIME)
        .header("signature", sig)
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn signed(body: &str) -> Request<Body> {
    signed_by(&support::gateway_key(), PATH, PATH, CLIENT_ID, body)
}

fn assert_ack(r: &(StatusCode, String)) {
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1, NOTIFY_ACK);
}

fn assert_not_s(r: &(StatusCode, String), status: StatusCode) {
    assert_eq!(r.0, status, "{}", r.1);
    let v: serde_json::Value = serde_json::from_str(&r.1).expect("JSON answer");
    assert_ne!(v["result"]["resultStatus"], "S", "{}", r.1);
}

fn vector() -> serde_json::Value {
    let text = support::key_text("signature_vectors.json");
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "notify_payment")
        .expect("vector notify_payment")
        .clone()
}

fn vector_request(body: &str) -> Request<Body> {
    let v = vector();
    Request::post(v["path"].as_str().unwrap())
        .header("content-type", "application/json")
        .header("client-id", v["client_id"].as_str().unwrap())
        .header("request-time", v["time"].as_str().unwrap())
        .header("signature", v["signature_header"].as_str().unwrap())
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_vector_notification_settles_an_inquiring_payment() {
    let h = Harness::new();
    h.payment(VECTOR_ID, State::Inquiring);
    let v = vector();
    let r = h.send(vector_request(v["body"].as_str().unwrap())).await;
    assert_ack(&r);
    let p = h.get(VECTOR_ID);
    assert_eq!(p.state, State::Succeeded);
    assert_eq!(
        p.payment_id.as_deref(),
        Some("20261121111212800100188000000000001")
    );
    let rows = h.recorded();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "APPLIED");
    // The sale's slip is in the print journal, committed with the state change.
    let slip = h
        .engine
        .store()
        .call_blocking(|c| {
            Ok(posd::store::print_journal::latest_for_payment(
                c, VECTOR_ID,
            )?)
        })
        .unwrap()
        .expect("a SALE slip is queued");
    assert_eq!(
        slip.data.payment_id.as_deref(),
        Some("20261121111212800100188000000000001")
    );
    assert_eq!(rows[0].state_before.as_deref(), Some("INQUIRING"));
    assert_eq!(rows[0].state_after.as_deref(), Some("SUCCEEDED"));
    assert!(h
        .metrics
        .encode()
        .contains("posd_notifications_total{verdict=\"accepted\",reason=\"applied\"} 1"));
}

#[tokio::test]
async fn a_body_edited_after_signing_is_rejected_and_changes_nothing() {
    let h = Harness::new();
    h.payment(VECTOR_ID, State::Inquiring);
    let v = vector();
    // Same headers and signature, one digit of the body changed.
    let edited = v["body"].as_str().unwrap().replace("\"1234\"", "\"1235\"");
    let r = h.send(vector_request(&edited)).await;
    assert_not_s(&r, StatusCode::UNAUTHORIZED);
    // Even a byte of whitespace breaks it.
    let r = h
        .send(vector_request(&format!("{} ", v["body"].as_str().unwrap())))
        .await;
    assert_not_s(&r, StatusCode::UNAUTHORIZED);
    assert_eq!(h.get(VECTOR_ID).state, State::Inquiring);
    assert!(h.recorded().is_empty());
    assert!(h
        .metrics
        .encode()
        .contains("posd_notifications_total{verdict=\"rejected\",reason=\"signature\"} 2"));
}

#[tokio::test]
async fn a_forged_signature_is_rejected() {
    let h = Harness::new();
    h.payment("P1", State::Inquiring);
    // Signed with a key that is not the gateway's (the merchant's own).
    let forged =
        PrivateKey::from_text(&support::key_text("merchant_private_pkcs8.pem"), "merchant")
            .unwrap();
    let r = h
        .send(signed_by(&forged, PATH, PATH, CLIENT_ID, &paid("P1")))
        .await;
    assert_not_s(&r, StatusCode::UNAUTHORIZED);
    // Garbage in the header.
    let mut req = signed(&paid("P1"));
    req.headers_mut().insert(
        "signature",
        "algorithm=RSA256,keyVersion=1,signature=AAAA"
            .parse()
            .unwrap(),
    );
    assert_not_s(&h.send(req).await, StatusCode::UNAUTHORIZED);
    // Signed for another path (a notification meant for another endpoint).
    let r = h
        .send(signed_by(
            &support::gateway_key(),
            PATH,
            "/other",
            CLIENT_ID,
            &paid("P1"),
        ))
        .await;
    assert_not_s(&r, StatusCode::UNAUTHORIZED);
    assert_eq!(h.get("P1").state, State::Inquiring);
    assert!(h.recorded().is_empty());
}

#[tokio::test]
async fn another_client_id_is_refused_even_when_signed() {
    let h = Harness::new();
    h.payment("P1", State::Inquiring);
    let r = h
        .send(signed_by(
            &support::gateway_key(),
            PATH,
            PATH,
            "SANDBOX_SOMEONE_ELSE",
            &paid("P1"),
        ))
        .await;
    assert_not_s(&r, StatusCode::FORBIDDEN);
    assert_eq!(h.get("P1").state, State::Inquiring);
    assert!(h.recorded().is_empty());
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let h = Harness::new();
    h.payment("P1", State::Paying);
    // Wrong content type.
    let mut req = signed(&paid("P1"));
    req.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    assert_not_s(&h.send(req).await, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Each required header missing in turn.
    for name in ["client-id", "request-time", "signature"] {
        let mut req = signed(&paid("P1"));
        req.headers_mut().remove(name);
        let r = h.send(req).await;
        assert_not_s(&r, StatusCode::BAD_REQUEST);
        assert!(r.1.contains(name), "{}", r.1);
    }
    // Over the size limit (validly signed, so only the size can refuse it).
    let big = format!(
        r#"{{"pad":"{}","result":{{"resultStatus":"S"}},"paymentRequestId":"P1"}}"#,
        "x".repeat(MAX_NOTIFY_BODY)
    );
    assert_not_s(&h.send(signed(&big)).await, StatusCode::PAYLOAD_TOO_LARGE);
    // Signed, but not a notification.
    assert_not_s(&h.send(signed("[1,2")).await, StatusCode::BAD_REQUEST);
    // GET and other paths are not the endpoint.
    let r = h
        .send(Request::get(PATH).body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h.get("P1").state, State::Paying);
    assert!(h.recorded().is_empty());
}

#[tokio::test]
async fn the_query_string_is_part_of_what_is_signed() {
    let h = Harness::new();
    h.payment("P1", State::Paying);
    let key = support::gateway_key();
    // Signed without the query but posted with it: refused.
    let r = h
        .send(signed_by(&key, "/notify?t=1", PATH, CLIENT_ID, &paid("P1")))
        .await;
    assert_not_s(&r, StatusCode::UNAUTHORIZED);
    let r = h
        .send(signed_by(
            &key,
            "/notify?t=1",
            "/notify?t=1",
            CLIENT_ID,
            &paid("P1"),
        ))
        .await;
    assert_ack(&r);
    assert_eq!(h.get("P1").state, State::Succeeded);
}

#[tokio::test]
async fn amount_or_currency_mismatch_needs_attention() {
    let h = Harness::new();
    h.payment("A1", State::Paying);
    h.payment("A2", State::Inquiring);
    h.payment("A3", State::Inquiring);
    for (id, value, currency) in [
        ("A1", "1233", "CNY"),
        ("A2", "1234", "USD"),
        ("A3", "01234", "CNY"),
    ] {
        let r = h
            .send(signed(&body_for(id, "S", "SUCCESS", value, currency)))
            .await;
        assert_ack(&r);
        let p = h.get(id);
        assert_eq!(p.state, State::NeedsAttention, "{id}");
        assert_eq!(p.result_code.as_deref(), Some("AMOUNT_MISMATCH"), "{id}");
        let reason = p.attention_reason.expect("a reason is stored");
        assert!(
            reason.contains(value) && reason.contains("1234"),
            "{reason}"
        );
    }
    // A missing amount cannot be checked: a human looks.
    h.payment("A4", State::Inquiring);
    let body = r#"{"notifyType":"PAYMENT_RESULT","result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"m"},"paymentRequestId":"A4"}"#;
    assert_ack(&h.send(signed(body)).await);
    assert_eq!(h.get("A4").state, State::NeedsAttention);
}

#[tokio::test]
async fn a_failure_notification_fails_the_payment() {
    let h = Harness::new();
    h.payment("F1", State::Inquiring);
    let r = h
        .send(signed(&body_for(
            "F1",
            "F",
            "USER_BALANCE_NOT_ENOUGH",
            "1234",
            "CNY",
        )))
        .await;
    assert_ack(&r);
    let p = h.get("F1");
    assert_eq!(p.state, State::Failed);
    assert_eq!(p.result_code.as_deref(), Some("USER_BALANCE_NOT_ENOUGH"));
}

#[tokio::test]
async fn duplicates_and_late_notifications_change_nothing_and_are_acknowledged() {
    let h = Harness::new();
    h.payment("D1", State::Inquiring);
    assert_ack(&h.send(signed(&paid("D1"))).await);
    let events = h.event_count("D1");
    let before = h.get("D1");
    // The same notification again, and then a contradicting one: both acknowledged, no change.
    assert_ack(&h.send(signed(&paid("D1"))).await);
    let failed = body_for("D1", "F", "PROCESS_FAIL", "1234", "CNY");
    assert_ack(&h.send(signed(&failed)).await);
    assert_eq!(h.get("D1"), before);
    assert_eq!(h.event_count("D1"), events);
    let outcomes: Vec<String> = h.recorded().into_iter().map(|n| n.outcome).collect();
    assert_eq!(outcomes, ["APPLIED", "DUPLICATE", "IGNORED"]);
}

#[tokio::test]
async fn success_after_a_local_cancel_keeps_the_cancel_owed() {
    let h = Harness::new();
    h.payment("C1", State::Cancelling);
    h.payment("C2", State::CancelQueued);
    h.payment("C3", State::Cancelled);
    for id in ["C1", "C2", "C3"] {
        let before = h.get(id);
        assert_ack(&h.send(signed(&paid(id))).await);
        assert_eq!(h.get(id), before, "{id} must not turn into a sale");
    }
    let rows = h.recorded();
    assert!(rows.iter().all(|n| n.outcome == "IGNORED"), "{rows:?}");
}

#[tokio::test]
async fn a_pending_notification_changes_nothing() {
    let h = Harness::new();
    h.payment("N1", State::Inquiring);
    let body = paid("N1").replace("PAYMENT_RESULT", "PAYMENT_PENDING");
    assert_ack(&h.send(signed(&body)).await);
    assert_eq!(h.get("N1").state, State::Inquiring);
    assert_eq!(h.recorded()[0].outcome, "PENDING");
}

#[tokio::test]
async fn an_unknown_payment_is_kept_for_the_back_office() {
    let h = Harness::new();
    assert_ack(&h.send(signed(&paid("NOT-OURS-1"))).await);
    let listed = h
        .engine
        .store()
        .call_blocking(|c| Ok(notifications::since(c, 0, true)?))
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].claimed_request_id.as_deref(), Some("NOT-OURS-1"));
    assert_eq!(listed[0].payment_request_id, None);
    assert_eq!(listed[0].amount_value.as_deref(), Some("1234"));
    assert_eq!(listed[0].outcome, "UNKNOWN_PAYMENT");
    // The back office sees it in the journal (`posd journal`, `GET /v1/journal`).
    let who = posd::api::journal::JournalIdentity {
        terminal_id: "T0001".into(),
        store_id: "S01".into(),
        timezone: None,
    };
    let rows = posd::api::journal::load(h.engine.store(), &who, 0, i64::MAX)
        .await
        .unwrap();
    let row = rows
        .iter()
        .find(|r| r.record_type == "UNKNOWN_NOTIFICATION")
        .expect("the unknown notification is a journal row");
    assert_eq!(row.payment_request_id, "NOT-OURS-1");
    assert_eq!(
        (row.amount.as_str(), row.currency.as_str()),
        ("1234", "CNY")
    );
    assert!(posd::api::journal::to_csv(&rows).contains("UNKNOWN_NOTIFICATION,NOT-OURS-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_racing_an_inquiry_answer_applies_exactly_once() {
    let h = Arc::new(Harness::new());
    let (mut by_notification, mut by_inquiry) = (0, 0);
    for i in 0..60 {
        let id = format!("R{i}");
        h.payment(&id, State::Inquiring);
        // The notification says failed, the inquiry says paid: whichever commits first wins
        // and the other must change nothing.
        let note = {
            let h = h.clone();
            let body = body_for(&id, "F", "PROCESS_FAIL", "1234", "CNY");
            tokio::spawn(async move { h.send(signed(&body)).await })
        };
        let inquiry = {
            let h = h.clone();
            let id = id.clone();
            tokio::spawn(async move {
                h.engine
                    .apply_event(&id, Event::Inquired(Inquiry::Paid))
                    .await
            })
        };
        assert_ack(&note.await.unwrap());
        inquiry
            .await
            .unwrap()
            .expect("the inquiry's event is decided");
        let p = h.get(&id);
        let events = h.event_count(&id);
        // create + set-up + exactly one settling transition.
        assert_eq!(events, 3, "{id}: exactly one transition out of INQUIRING");
        let row = h
            .recorded()
            .into_iter()
            .find(|n| n.claimed_request_id.as_deref() == Some(id.as_str()))
            .unwrap();
        match p.state {
            State::Failed => {
                assert_eq!(row.outcome, "APPLIED");
                by_notification += 1;
            }
            State::Succeeded => {
                assert_eq!(row.outcome, "IGNORED");
                by_inquiry += 1;
            }
            other => panic!("{id}: unexpected {other}"),
        }
    }
    assert_eq!(by_notification + by_inquiry, 60);
}
