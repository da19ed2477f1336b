//! A hub whose upstream is the mainland dialect (`kind = "alipay_cn"`, the sandbox's
//! `/gateway.do`): an answer that does not verify is U to the terminal, never S; the hub's
//! own work (active cancel, its queue) goes through the same conversion; mainland
//! notifications reach the hub verified, amount-checked and applied once, and one the hub
//! cannot record is answered `fail`.

use std::time::Duration;

use posd::gateway::alipay_cn::sign::{sign_content, sign_rsa2};
use posd::gateway::alipay_cn::wire::Params;
use posd::gateway::sign::PrivateKey;

use super::super::support::gateway_key;
use super::harness::{
    code, hold_row_lock, hub_private, hub_state, journal, listening_hub, notifications_of,
    pay_body, register, terminal, wait_hub_state, Signer, TestHub, Upstream, MAINLAND_APP_ID,
};
use super::pg::TestDb;

async fn mainland_hub(hub_extra: &str, extra: &str) -> (TestDb, Upstream, TestHub) {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hub = TestHub::mainland(&db, &up.base_url(), hub_extra, extra);
    hub.start(None).await;
    (db, up, hub)
}

async fn pay_status(db: &TestDb, id: &str) -> Option<String> {
    let c = db.pool().await.get().await.unwrap();
    c.query_opt(
        "SELECT pay_status FROM hub_payments WHERE payment_request_id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_does_not_verify_is_unknown_to_the_terminal_and_an_inquiry_settles_it() {
    let (db, up, hub) = mainland_hub("", "").await;
    let t = Signer::new("T_A", "terminal_a");
    // Row 88: the sandbox signs the pay answer wrongly (a charged trade).
    let r = t
        .send(&hub.base, "pay", &pay_body("CN_88", &code("88")), 0)
        .await;
    assert_eq!(r.status(), "U", "never S on a bad signature: {:?}", r.body);
    assert!(r.signed, "the hub signs its own U");
    assert_eq!(hub_state(&db, "CN_88").await.as_deref(), Some("RECEIVED"));
    assert_eq!(pay_status(&db, "CN_88").await.as_deref(), Some("U"));
    assert_eq!(up.record("CN_88").unwrap().0, "SUCCESS", "charged upstream");
    // The terminal's inquiry, converted to alipay.trade.query, finds it paid.
    let q = t
        .send(
            &hub.base,
            "inquiryPayment",
            &serde_json::json!({"paymentRequestId": "CN_88"}),
            0,
        )
        .await;
    assert_eq!(q.status(), "S", "{:?}", q.body);
    assert!(q.signed);
    assert_eq!(q.body["paymentStatus"], "SUCCESS", "{:?}", q.body);
    assert_eq!(q.body["paymentAmount"]["value"], "1234", "{:?}", q.body);
    assert_eq!(hub_state(&db, "CN_88").await.as_deref(), Some("SUCCEEDED"));
    // A declined pay is F with the upstream's own code.
    let f = t
        .send(&hub.base, "pay", &pay_body("CN_80", &code("80")), 0)
        .await;
    assert_eq!(f.status(), "F", "{:?}", f.body);
    assert_eq!(f.code(), "ACQ.BUYER_BALANCE_NOT_ENOUGH");
    assert_eq!(hub_state(&db, "CN_80").await.as_deref(), Some("FAILED"));
    // A repeat with the same body is answered from the record: no second upstream pay.
    let pays = up.counts().pay;
    let again = t
        .send(&hub.base, "pay", &pay_body("CN_80", &code("80")), 0)
        .await;
    assert_eq!(again.code(), "ACQ.BUYER_BALANCE_NOT_ENOUGH");
    assert_eq!(up.counts().pay, pays);
    // An id the mainland wire cannot carry is refused with nothing sent upstream.
    let bad = t
        .send(&hub.base, "pay", &pay_body("CN-dash", &code("00")), 0)
        .await;
    assert_eq!(bad.status(), "F", "{:?}", bad.body);
    assert_eq!(bad.code(), "PARAM_ILLEGAL");
    assert_eq!(up.counts().pay, pays, "nothing sent");
    assert!(up.record("CN-dash").is_none());
    assert_eq!(hub_state(&db, "CN-dash").await.as_deref(), Some("FAILED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_terminal_is_cancelled_once_through_the_mainland_and_an_approved_pay_never() {
    let (db, up, hub) = mainland_hub(
        "active_cancel_after = \"4s\"\nterminal_decision_time = \"3s\"",
        "",
    )
    .await;
    // A real terminal killed right after its pay answer (U, WAIT_BUYER_PAY for ever).
    let mut t = terminal(&hub.base, "T_A", "terminal_a", "");
    t.start(Some("pay_answered")).await;
    let id = t.pay(&code("83"), "12.34").await;
    t.wait_exit(Duration::from_secs(20)).await;
    // A pay the upstream charges late (row 84: no answer), its terminal silent too.
    let s = Signer::new("T_A", "terminal_a");
    let r = s
        .send(&hub.base, "pay", &pay_body("CN_approved", &code("84")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);

    wait_hub_state(&db, &id, "CANCELLED", Duration::from_secs(30)).await;
    assert_eq!(up.record(&id).unwrap().0, "CANCELLED");
    wait_hub_state(&db, "CN_approved", "SUCCEEDED", Duration::from_secs(30)).await;
    // More worker passes change nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        up.counts().cancel,
        1,
        "cancelled once (alipay.trade.cancel)"
    );
    assert_eq!(up.record("CN_approved").unwrap().0, "SUCCESS");
    let j = journal(&db, &id).await;
    assert!(j.contains("active_cancel | RECEIVED | CANCELLING"), "{j}");
    assert!(j.contains("cancel_answered"), "{j}");
    assert_eq!(
        db.count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await,
        0
    );
    let m = hub.metrics().await;
    assert!(
        m.contains("posd_hub_active_cancels_total{decision=\"cancel\"} 1"),
        "{m}"
    );
    // The hub's own calls are in the per-operation upstream metrics too.
    assert!(
        m.contains("posd_hub_upstream_calls_total{operation=\"cancel\",outcome=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "posd_hub_upstream_calls_total{operation=\"inquiry_payment\",outcome=\"success\"}"
        ),
        "the active-cancel inquiries: {m}"
    );
    assert!(
        m.contains("posd_hub_upstream_call_duration_seconds_count{operation=\"inquiry_payment\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_refunds_through_the_mainland_when_the_cancel_window_has_passed() {
    let (db, up, mut hub) = mainland_hub("reversal_advice = true", "").await;
    let s = Signer::new("T_A", "terminal_a");
    // Row 87: charged, but too late to cancel (ACQ.TRADE_CANCEL_TIME_OUT upstream).
    let r = s
        .send(&hub.base, "pay", &pay_body("CN_87", &code("87")), 0)
        .await;
    assert_ne!(r.status(), "F", "{:?}", r.body);
    let c = s
        .send(
            &hub.base,
            "cancel",
            &serde_json::json!({"paymentRequestId": "CN_87"}),
            0,
        )
        .await;
    assert_eq!(
        c.status(),
        "S",
        "answered once durably queued: {:?}",
        c.body
    );
    wait_hub_state(&db, "CN_87", "REFUNDED", Duration::from_secs(30)).await;
    assert_eq!(
        up.record("CN_87").unwrap().1,
        1234,
        "refunded in full upstream"
    );
    assert_eq!(up.counts().refund, 1, "one refund");
    let j = journal(&db, "CN_87").await;
    assert!(j.contains("cancel_window_passed"), "{j}");
    // The terminal asks about the refund from a restarted instance (no memory of sending it):
    // the mainland refund query names the trade from the hub's record.
    let c = db.pool().await.get().await.unwrap();
    let rid: String = c
        .query_one(
            "SELECT refund_request_id FROM hub_refunds WHERE payment_request_id = 'CN_87'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    hub.kill();
    hub.start(None).await;
    let q = s
        .send(
            &hub.base,
            "inquiryRefund",
            &serde_json::json!({"refundRequestId": rid}),
            0,
        )
        .await;
    assert_eq!(q.status(), "S", "{:?}", q.body);
    assert_eq!(q.body["refundStatus"], "SUCCESS", "{:?}", q.body);
    assert_eq!(up.counts().inquiry_refund, 1);
}

fn mainland_notification(key: &PrivateKey, id: &str, trade_no: &str, yuan: &str) -> String {
    let mut p = Params::default();
    for (k, v) in [
        ("notify_time", "2026-12-01 10:00:05"),
        ("notify_type", "trade_status_sync"),
        ("notify_id", "N1"),
        ("app_id", MAINLAND_APP_ID),
        ("charset", "utf-8"),
        ("version", "1.0"),
        ("trade_no", trade_no),
        ("out_trade_no", id),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", yuan),
    ] {
        p.push(k, v);
    }
    let content = sign_content(p.iter(), &["sign", "sign_type"], true);
    p.push("sign_type", "RSA2");
    p.push("sign", sign_rsa2(key, &content));
    p.form_body()
}

/// The hub's answer to a notification: its HTTP status and body.
async fn post_form(url: &str, body: String) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mainland_notifications_are_verified_checked_and_applied_once() {
    let (db, up, hub, base) = listening_hub(true, true).await;
    let url = format!("{base}/alipay/notify");
    let t = Signer::new("T_A", "terminal_a");

    // Row 84: the pay is not answered in time (U), the upstream charges and notifies.
    let r = t
        .send(&hub.base, "pay", &pay_body("CN_N84", &code("84")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    wait_hub_state(&db, "CN_N84", "SUCCEEDED", Duration::from_secs(20)).await;
    assert_eq!(
        up.counts().inquiry_payment,
        0,
        "learnt from the mainland notification alone"
    );

    // Forged (signed with another key): `fail`, nothing applied.
    let r = t
        .send(&hub.base, "pay", &pay_body("CN_N83", &code("83")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    let forged = mainland_notification(
        &hub_private("terminal_b_private.pem"),
        "CN_N83",
        "2026T83",
        "12.34",
    );
    assert_eq!(
        post_form(&url, forged).await,
        (400, "fail".into()),
        "refused for good: 400"
    );
    assert_eq!(hub_state(&db, "CN_N83").await.as_deref(), Some("RECEIVED"));

    // Genuine but for another amount: acknowledged, the payment needs a human.
    let other = mainland_notification(&gateway_key(), "CN_N83", "2026T83", "9.99");
    assert_eq!(post_form(&url, other).await, (200, "success".into()));
    assert_eq!(
        hub_state(&db, "CN_N83").await.as_deref(),
        Some("NEEDS_ATTENTION")
    );

    // A duplicate of an applied one changes nothing and is acknowledged.
    let applied = || async {
        db.count(
            "SELECT count(*) FROM hub_notifications WHERE payment_request_id = 'CN_N84' AND applied",
        )
        .await
    };
    assert_eq!(applied().await, 1);
    let dup = mainland_notification(&gateway_key(), "CN_N84", "2026T84", "12.34");
    assert_eq!(post_form(&url, dup).await, (200, "success".into()));
    assert_eq!(applied().await, 1);
    assert_eq!(hub_state(&db, "CN_N84").await.as_deref(), Some("SUCCEEDED"));
}

/// A genuine mainland notification the hub cannot record (the payment's row locked past the
/// hub's lock timeout) is answered `fail`, so Alipay sends it again, and changes nothing; sent
/// again once the row is free, it is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mainland_notification_the_hub_cannot_record_is_answered_fail_and_changes_nothing() {
    let (db, _up, hub, base) = listening_hub(true, false).await;
    let url = format!("{base}/alipay/notify");
    let r = Signer::new("T_A", "terminal_a")
        .send(&hub.base, "pay", &pay_body("CN_L83", &code("83")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    let genuine = mainland_notification(&gateway_key(), "CN_L83", "2026T83", "12.34");

    let release = hold_row_lock(&db, "CN_L83").await;
    assert_eq!(
        post_form(&url, genuine.clone()).await,
        (500, "fail".into()),
        "not recorded: 500"
    );
    assert_eq!(hub_state(&db, "CN_L83").await.as_deref(), Some("RECEIVED"));
    assert!(notifications_of(&db, "CN_L83").await.is_empty());
    release.send(()).unwrap();

    assert_eq!(post_form(&url, genuine).await, (200, "success".into()));
    assert_eq!(notifications_of(&db, "CN_L83").await, ["applied"]);
    assert_eq!(hub_state(&db, "CN_L83").await.as_deref(), Some("SUCCEEDED"));
}
