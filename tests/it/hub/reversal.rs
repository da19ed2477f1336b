//! What a terminal hears about a payment the hub reverses on its own (active cancel): an
//! inquiry never relays the upstream's SUCCESS while the hub's cancel is owed, and a cancel
//! after the hub's cancel became a full refund is answered S, not U for ever — and one
//! delivered through the hub's own cancel as it is refused for its window hears U, not the
//! refusal (which would have the terminal refund as well).

use std::time::Duration;

use serde_json::json;

use super::harness::{
    code, hub_state, pay_body, register, wait_hub_state, LostPaymentId, Signer, TestHub, Upstream,
};
use super::pg::TestDb;

/// A hub (with `hub_extra` in its config) in front of an upstream whose cancels fail for a
/// minute, terminal `T_A` registered, and that terminal's signer.
struct Setup {
    db: TestDb,
    up: Upstream,
    hub: TestHub,
    t: Signer,
}

async fn setup(hub_extra: &str) -> Setup {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hub = TestHub::new(&db, &up.base_url(), hub_extra, "");
    hub.start(None).await;
    let t = Signer::new("T_A", "terminal_a");
    Setup { db, up, hub, t }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inquiry_does_not_relay_success_while_the_hub_owes_a_cancel() {
    // The upstream and the hub live to the end of the test.
    let Setup {
        db,
        up: _up,
        hub,
        t,
    } = setup("").await;
    let r = t
        .send(&hub.base, "pay", &pay_body("REV-1", &code("00")), 0)
        .await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    let ask = json!({"paymentRequestId": "REV-1"});
    let r = t.send(&hub.base, "inquiryPayment", &ask, 0).await;
    assert_eq!(r.body["paymentStatus"], "SUCCESS", "{:?}", r.body);
    // The moment between the hub's active-cancel decision (its last inquiry had no answer)
    // and the cancel's delivery, with the upstream approving meanwhile: the hub's record
    // says CANCELLING, the upstream SUCCESS — and the cancel will reverse it.
    db.execute(
        "UPDATE hub_payments SET state = 'CANCELLING', active_cancel_at = now() \
         WHERE payment_request_id = 'REV-1'",
    )
    .await;
    let r = t.send(&hub.base, "inquiryPayment", &ask, 0).await;
    assert!(r.signed);
    assert_eq!(
        r.status(),
        "U",
        "a terminal told SUCCESS would report a sale the hub is reversing: {:?}",
        r.body
    );
    assert_eq!(hub_state(&db, "REV-1").await.as_deref(), Some("CANCELLING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_the_hubs_own_cancel_became_a_full_refund_is_answered_s() {
    let Setup { db, up, hub, t } =
        setup("active_cancel_after = \"2s\"\nterminal_decision_time = \"1s\"").await;
    // Row 87: the pay stays PROCESSING and its cancel window has passed. The terminal goes
    // silent; the hub cancels on its own, is refused for the window, and refunds in full.
    let r = t
        .send(&hub.base, "pay", &pay_body("REV-87", &code("87")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    wait_hub_state(&db, "REV-87", "REFUNDED", Duration::from_secs(30)).await;
    assert_eq!(up.record("REV-87").unwrap().1, 1234, "refunded in full");
    // The terminal comes back and cancels, as its recovery does: the payment is reversed.
    let (cancels, refunds) = (up.counts().cancel, up.counts().refund);
    for _ in 0..2 {
        let r = t
            .send(
                &hub.base,
                "cancel",
                &json!({"paymentRequestId": "REV-87"}),
                0,
            )
            .await;
        assert!(r.signed);
        assert_eq!(r.status(), "S", "{:?}", r.body);
    }
    assert_eq!(hub_state(&db, "REV-87").await.as_deref(), Some("REFUNDED"));
    assert_eq!(
        (up.counts().cancel, up.counts().refund),
        (cancels, refunds),
        "nothing sent again"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_delivered_through_the_hubs_own_and_refused_for_its_window_is_not_relayed() {
    let Setup { db, up, hub, t } = setup("").await;
    let r = t
        .send(&hub.base, "pay", &pay_body("REV-W", &code("87")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    // The hub has decided to cancel on its own and queued the cancel (not yet due), when the
    // terminal's own cancel arrives and is delivered through that item.
    let pool = db.pool().await;
    pool.get()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE hub_payments SET state = 'CANCELLING', active_cancel_at = now() \
             WHERE payment_request_id = 'REV-W'; \
             INSERT INTO hub_queue (kind, payment_request_id, body, origin, next_at) VALUES \
             ('cancel', 'REV-W', convert_to('{\"paymentRequestId\":\"REV-W\"}', 'UTF8'), 'active', \
             now() + interval '1 hour')",
        )
        .await
        .unwrap();
    let ask = json!({"paymentRequestId": "REV-W"});
    let r = t.send(&hub.base, "cancel", &ask, 0).await;
    // CANCEL_WINDOW_EXCEED relayed, the terminal would refund as well.
    assert_ne!(r.status(), "F", "{:?}", r.body);
    wait_hub_state(&db, "REV-W", "REFUNDED", Duration::from_secs(30)).await;
    let r = t.send(&hub.base, "cancel", &ask, 0).await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    assert_eq!(up.counts().refund, 1, "the hub's refund, once");
    assert_eq!(up.record("REV-W").unwrap().1, 1234);
}

/// The same, before any answer gave the hub the upstream's paymentId and while the upstream's
/// inquiries are down: the hub cannot refund yet, and still the terminal hears U, not the
/// refusal; the hub refunds once an inquiry answers, and only the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_refusal_of_the_hubs_own_cancel_is_not_relayed_while_the_payment_id_is_unknown() {
    let lost = LostPaymentId::start("", "REV-WN").await;
    let LostPaymentId { db, up, hub, t, .. } = &lost;
    // The hub has decided to cancel on its own (its cancel queued, not yet due) and no answer
    // carried the paymentId, when the terminal's own cancel arrives.
    let n = db
        .execute(
            "UPDATE hub_payments SET state = 'CANCELLING', active_cancel_at = now() \
             WHERE payment_request_id = 'REV-WN'",
        )
        .await;
    assert_eq!(n, 1);
    db.execute(
        "INSERT INTO hub_queue (kind, payment_request_id, body, origin, next_at) VALUES \
         ('cancel', 'REV-WN', convert_to('{\"paymentRequestId\":\"REV-WN\"}', 'UTF8'), \
         'active', now() + interval '1 hour')",
    )
    .await;
    let ask = json!({"paymentRequestId": "REV-WN"});
    let r = t.send(&hub.base, "cancel", &ask, 0).await;
    assert!(r.signed);
    assert_eq!(r.status(), "U", "{:?}", r.body);
    assert_eq!(hub_state(db, "REV-WN").await.as_deref(), Some("CANCELLING"));
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hub_queue WHERE payment_request_id = 'REV-WN' \
             AND status = 'PENDING' AND kind = 'cancel'"
        )
        .await,
        1,
        "the cancel stays owed"
    );
    lost.inquiries_back();
    wait_hub_state(db, "REV-WN", "REFUNDED", Duration::from_secs(30)).await;
    let r = t.send(&hub.base, "cancel", &ask, 0).await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    assert_eq!(up.counts().refund, 1, "the hub's refund, once");
    assert_eq!(up.record("REV-WN").unwrap().1, 1234);
}
