//! `reversal_advice = true` (the seed's switch): a terminal's cancel is answered `S` as soon as
//! it is queued; the hub owns its delivery — through an outage (row 86) and, when the cancel
//! window has passed, as a full refund (row 87).

use std::time::Duration;

use serde_json::json;

use super::harness::{
    code, hub_state, pay_body, register, wait_hub_state, LostPaymentId, Signer, TestHub, Upstream,
};
use super::pg::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_answers_at_once_and_delivers_what_it_owes() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(3)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hub = TestHub::new(&db, &up.base_url(), "reversal_advice = true", "");
    hub.start(None).await;
    let t = Signer::new("T_A", "terminal_a");

    // Row 86: the upstream does not answer cancels for 3 s after the pay.
    let r = t
        .send(&hub.base, "pay", &pay_body("ADV-86", &code("86")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    let r = t
        .send(
            &hub.base,
            "cancel",
            &json!({"paymentRequestId": "ADV-86"}),
            0,
        )
        .await;
    assert_eq!(
        (r.status(), r.code()),
        ("S", "SUCCESS"),
        "answered once queued: {:?}",
        r.body
    );
    assert!(r.signed);
    assert_eq!(
        hub_state(&db, "ADV-86").await.as_deref(),
        Some("CANCELLING")
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_queue WHERE payment_request_id = 'ADV-86' AND status = 'PENDING'").await,
        1,
        "durably queued before the S"
    );
    wait_hub_state(&db, "ADV-86", "CANCELLED", Duration::from_secs(30)).await;
    assert_eq!(up.record("ADV-86").unwrap().0, "CANCELLED");

    // Row 87: the cancel window has passed; the hub refunds in full on its own.
    let r = t
        .send(&hub.base, "pay", &pay_body("ADV-87", &code("87")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    let r = t
        .send(
            &hub.base,
            "cancel",
            &json!({"paymentRequestId": "ADV-87"}),
            0,
        )
        .await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    wait_hub_state(&db, "ADV-87", "REFUNDED", Duration::from_secs(30)).await;
    assert_eq!(
        up.record("ADV-87").unwrap().1,
        1234,
        "refunded in full upstream"
    );
    assert_eq!(
        up.counts().refund,
        1,
        "one refund, identical id on every resend"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await,
        0
    );
    // A repeated cancel from the terminal changes nothing and is answered again.
    let r = t
        .send(
            &hub.base,
            "cancel",
            &json!({"paymentRequestId": "ADV-87"}),
            0,
        )
        .await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.counts().refund, 1);
    assert_eq!(hub_state(&db, "ADV-87").await.as_deref(), Some("REFUNDED"));
}

/// The hub owns a cancel refused for its window, and no answer has given it the paymentId
/// the full refund needs while the upstream's inquiries are down: the cancel stays owed and
/// is retried (never a dead letter for a human), and once an inquiry answers, the hub refunds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_refusal_before_the_payment_id_is_known_waits_for_it_then_refunds() {
    let lost = LostPaymentId::start("reversal_advice = true", "ADV-87N").await;
    let LostPaymentId { db, up, hub, t, .. } = &lost;
    let r = t
        .send(
            &hub.base,
            "cancel",
            &json!({"paymentRequestId": "ADV-87N"}),
            0,
        )
        .await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    // The cancel is refused for its window again and again; each time the inquiry is down.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tries = db
            .count(
                "SELECT count(*) FROM hub_queue WHERE payment_request_id = 'ADV-87N' \
                 AND kind = 'cancel' AND status = 'PENDING' AND attempts >= 3 \
                 AND last_error LIKE '%paymentId%'",
            )
            .await;
        if tries == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel was not retried: {:?}",
            hub_state(db, "ADV-87N").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        hub_state(db, "ADV-87N").await.as_deref(),
        Some("CANCELLING")
    );
    assert_eq!(up.counts().refund, 0);
    // The inquiries answer again: the next attempt learns the id and refunds in full.
    lost.inquiries_back();
    wait_hub_state(db, "ADV-87N", "REFUNDED", Duration::from_secs(30)).await;
    assert_eq!(up.record("ADV-87N").unwrap().1, 1234, "refunded in full");
    assert_eq!(up.counts().refund, 1);
}
