//! Upstream notifications at the hub: verified over the raw body with the gateway's key,
//! amount and currency checked against the recorded pay, applied once with the inquiry's
//! compare-and-set; forged ones refused and nothing changes.

use std::time::Duration;

use posd::gateway::sign::Message;

use super::super::daemon::free_port;
use super::super::support::gateway_key;
use super::harness::{
    code, hub_state, notify_section, pay_body, register, wait_hub_state, Signer, TestHub, Upstream,
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
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut hub = TestHub::new(&db, &up.base_url(), "", &notify_section(port));
    hub.notify_url(&format!("{url}/alipay/notify"));
    hub.start(None).await;
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
