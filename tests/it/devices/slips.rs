//! A slip's barcode through the real binary: the daemon's `paymentRequestId` is the 36-digit
//! identifier the slip barcodes, and scanning it — with no sale waiting, or while one waits —
//! looks the payment up and never pays with it.

use std::time::{Duration, Instant};

use posd::domain::request_id::{parse_payment_request_id, PAYMENT_ID_DIGITS};
use serde_json::json;

use crate::daemon::TestDaemon;

/// Waits until the daemon's log holds `needle`.
async fn log_shows(d: &TestDaemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanning_a_slip_looks_the_payment_up_and_never_pays() {
    let mut d = TestDaemon::new("[scanner]\nkind = \"stdin\"\n");
    d.start(None).await;
    let id = d.pay("281234567890123400", "12.34").await;
    assert_eq!(id.len(), PAYMENT_ID_DIGITS, "{id}");
    let parts = parse_payment_request_id(&id).expect("the 36-digit layout");
    assert_eq!(
        (parts.terminal.as_str(), parts.amount_minor),
        ("000001", 1234)
    );
    let v = d.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["state"], "SUCCEEDED", "{v}");

    // No sale waits: the scan is a look-up.
    d.scan(&id);
    log_shows(&d, &format!("posd: slip {id}: SUCCEEDED CNY 12.34")).await;

    // A sale waits for a code: the slip does not bind to it; the customer's code then does.
    let (status, waiting) = d.create(json!({"amount": "5.00"})).await;
    assert_eq!(status, 202, "{waiting}");
    let waiting = waiting["payment_request_id"].as_str().unwrap().to_string();
    // (An unknown id of the older layout first, so the repeat filter lets the slip through.)
    d.scan("20261121140305T000100000000123400000042123456");
    log_shows(
        &d,
        "slip 20261121140305T000100000000123400000042123456: no payment with this id",
    )
    .await;
    d.scan(&format!("{id}\r"));
    let summary = format!("posd: slip {id}: SUCCEEDED CNY 12.34");
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.log().matches(&summary).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "second look-up missing:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.get(&waiting).await["state"], "AWAITING_CODE");
    assert_eq!(
        d.sandbox_payments(),
        1,
        "the gateway saw one pay only:\n{}",
        d.log()
    );
    d.scan("281234567890123401");
    let v = d.wait_final(&waiting, Duration::from_secs(20)).await;
    assert_eq!(v["state"], "SUCCEEDED", "{v}");
    assert_eq!(d.sandbox_payments(), 2);
}
