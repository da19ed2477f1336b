//! Upstream notifications at the hub: verified over the raw body with the gateway's key,
//! amount and currency checked against the recorded pay, applied once with the inquiry's
//! compare-and-set (once when two instances race for it); forged ones refused and nothing
//! changes; one the hub cannot record answered "try again".

use std::time::Duration;

use posd::gateway::sign::Message;

use super::super::daemon::free_port;
use super::super::support::gateway_key;
use super::harness::{
    code, hold_row_lock, hub_state, listening_hub, notifications_of, notify_section, pay_body,
    register, wait_hub_state, Signer, TestHub, Upstream,
};
use super::pg::TestDb;

async fn notify(
    url: &str,
    path: &str,
    body: &serde_json::Value,
    key: &posd::gateway::sign::PrivateKey,
) -> serde_json::Value {
    let bytes = serde_json::to_vec(body).unwrap();
    let time = posd::hub::service::now_ms().to_string();
    let sig = key.sign_header(
        "1",
        &Message {
            method: "POST",
            uri: path,
            client_id: "SANDBOX_HUB",
            time: &time,
            body: &bytes,
        },
    );
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .header("client-id", "SANDBOX_HUB")
        .header("request-time", &time)
        .header("signature", sig)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_verified_checked_and_applied_once() {
    let (db, up, hub, url) = listening_hub(false, true).await;
    let t = Signer::new("T_A", "terminal_a");

    // Row 84: the pay is not answered in time (U), but the upstream charges and notifies.
    let r = t
        .send(&hub.base, "pay", &pay_body("N-84", &code("84")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    wait_hub_state(&db, "N-84", "SUCCEEDED", Duration::from_secs(20)).await;
    assert_eq!(
        up.counts().inquiry_payment,
        0,
        "learnt from the notification alone"
    );
    assert!(
        db.count(
            "SELECT count(*) FROM hub_notifications WHERE payment_request_id = 'N-84' AND applied"
        )
        .await
            == 1
    );

    // Forged (signed with the wrong key): refused, nothing recorded as applied.
    let wrong = super::harness::hub_private("terminal_b_private.pem");
    let body = serde_json::json!({"notifyType": "PAYMENT_RESULT", "paymentRequestId": "N-83",
        "result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "success"},
        "paymentAmount": {"currency": "CNY", "value": "1234"}});
    let r = t
        .send(&hub.base, "pay", &pay_body("N-83", &code("83")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    let answer = notify(&url, "/alipay/notify", &body, &wrong).await;
    assert_eq!(answer["result"]["resultStatus"], "F");
    assert_eq!(hub_state(&db, "N-83").await.as_deref(), Some("RECEIVED"));

    // Genuine but for another amount: the payment needs a human, never SUCCEEDED.
    let mut other = body.clone();
    other["paymentAmount"]["value"] = serde_json::json!("999");
    let answer = notify(&url, "/alipay/notify", &other, &gateway_key()).await;
    assert_eq!(
        answer["result"]["resultStatus"], "S",
        "acknowledged: {answer}"
    );
    assert_eq!(
        hub_state(&db, "N-83").await.as_deref(),
        Some("NEEDS_ATTENTION")
    );

    // A duplicate of the applied one changes nothing and is acknowledged.
    let dup = serde_json::json!({"notifyType": "PAYMENT_RESULT", "paymentRequestId": "N-84",
        "result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "success"},
        "paymentAmount": {"currency": "CNY", "value": "1234"}});
    let answer = notify(&url, "/alipay/notify", &dup, &gateway_key()).await;
    assert_eq!(answer["result"]["resultStatus"], "S");
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hub_notifications WHERE payment_request_id = 'N-84' AND applied"
        )
        .await,
        1
    );
    assert_eq!(hub_state(&db, "N-84").await.as_deref(), Some("SUCCEEDED"));
}

/// A payment the upstream keeps PROCESSING (row 83), its pay answered U: RECEIVED at the hub,
/// open for a notification to settle. Returns the signed PAYMENT_RESULT that settles it.
async fn received_83(hub: &TestHub, db: &TestDb, id: &str) -> serde_json::Value {
    let t = Signer::new("T_A", "terminal_a");
    let r = t
        .send(&hub.base, "pay", &pay_body(id, &code("83")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    assert_eq!(hub_state(db, id).await.as_deref(), Some("RECEIVED"));
    serde_json::json!({"notifyType": "PAYMENT_RESULT", "paymentRequestId": id,
        "paymentId": format!("{id}-PID"),
        "result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "success"},
        "paymentAmount": {"currency": "CNY", "value": "1234"}})
}

/// The same notification handed to both instances in the same instant (both wait on the
/// payment's row lock, which is then let go): both acknowledge it, one applies it, the other
/// finds it applied; one transition, one payment id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_raced_across_two_instances_is_applied_once() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hubs = Vec::new();
    let mut urls = Vec::new();
    for name in ["hub-a", "hub-b"] {
        let port = free_port();
        urls.push(format!("http://127.0.0.1:{port}"));
        let extra = format!("instance_id = \"{name}\"");
        let mut hub = TestHub::new(&db, &up.base_url(), &extra, &notify_section(port));
        hub.start(None).await;
        hubs.push(hub);
    }
    let body = received_83(&hubs[0], &db, "R-83").await;

    let release = hold_row_lock(&db, "R-83").await;
    let key = gateway_key();
    let (a, b, ()) = tokio::join!(
        notify(&urls[0], "/alipay/notify", &body, &key),
        notify(&urls[1], "/alipay/notify", &body, &key),
        async {
            // Both requests reach their instance and wait on the lock before it is let go.
            let waiting = async {
                while db
                    .count(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    )
                    .await
                    < 2
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(2), waiting)
                .await
                .expect("both instances wait on the payment's row lock");
            release.send(()).unwrap();
        }
    );
    assert_eq!(a["result"]["resultStatus"], "S", "hub-a: {a}");
    assert_eq!(b["result"]["resultStatus"], "S", "hub-b: {b}");
    assert_eq!(
        notifications_of(&db, "R-83").await,
        ["applied", "unchanged"],
        "one instance applied it, the other found it applied"
    );
    assert_eq!(hub_state(&db, "R-83").await.as_deref(), Some("SUCCEEDED"));
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hub_events WHERE payment_request_id = 'R-83' \
             AND kind = 'notification' AND to_state = 'SUCCEEDED'"
        )
        .await,
        1,
        "one transition"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hub_payments WHERE payment_request_id = 'R-83' \
             AND payment_id = 'R-83-PID'"
        )
        .await,
        1
    );
}

/// A notification the hub cannot record (here: the payment's row stays locked past the hub's
/// lock timeout) is answered "try again", so the gateway sends it again, and changes nothing;
/// sent again once the row is free, it is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_the_hub_cannot_record_is_answered_try_again_and_changes_nothing() {
    let (db, _up, hub, url) = listening_hub(false, false).await;
    let body = received_83(&hub, &db, "L-83").await;

    let release = hold_row_lock(&db, "L-83").await;
    // Past the hub's lock timeout (its longest upstream call, 1.5 s, and one second).
    let answer = notify(&url, "/alipay/notify", &body, &gateway_key()).await;
    assert_eq!(
        answer["result"]["resultStatus"], "U",
        "try again, not acknowledged: {answer}"
    );
    assert_eq!(hub_state(&db, "L-83").await.as_deref(), Some("RECEIVED"));
    assert!(
        notifications_of(&db, "L-83").await.is_empty(),
        "nothing recorded"
    );
    release.send(()).unwrap();

    let answer = notify(&url, "/alipay/notify", &body, &gateway_key()).await;
    assert_eq!(answer["result"]["resultStatus"], "S", "{answer}");
    assert_eq!(notifications_of(&db, "L-83").await, ["applied"]);
    assert_eq!(hub_state(&db, "L-83").await.as_deref(), Some("SUCCEEDED"));
    let metrics = reqwest::get(format!("{}/metrics", hub.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("notification") && l.contains("\"error\"") && l.ends_with(" 1")),
        "the failed one is counted:\n{metrics}"
    );
}
