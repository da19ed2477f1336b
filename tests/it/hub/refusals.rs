//! Every refusal at the hub, with nothing forwarded: unknown and forged terminals, a replay
//! outside the window, a disabled terminal, a merchant not registered for the terminal, a
//! payment code the record could not mask, a body that differs under a known id, one
//! terminal's cancel / inquiry / refund of another's payment. And the positive side: the
//! identical repeat is answered from the record, a cancel's too when the upstream never saw
//! the pay (the payment stays FAILED).

use std::time::Duration;

use serde_json::json;

use super::harness::{code, hub_state, pay_body, register, Signer, TestHub, Upstream};
use super::pg::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_forward_nothing_and_repeats_come_from_the_record() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    register(&db, "T_B", "terminal_b").await;
    let mut hub = TestHub::new(&db, &up.base_url(), "", "");
    hub.start(None).await;
    let a = Signer::new("T_A", "terminal_a");
    let b = Signer::new("T_B", "terminal_b");
    let base = hub.base.clone();

    // Unknown client: CLIENT_INVALID, unsigned.
    let stranger = Signer::new("T_NOBODY", "terminal_a");
    let r = stranger
        .send(&base, "pay", &pay_body("R-unknown", &code("00")), 0)
        .await;
    assert_eq!(
        (r.status(), r.code()),
        ("F", "CLIENT_INVALID"),
        "{:?}",
        r.body
    );
    assert!(!r.signed, "signature refusals are unsigned");

    // Forged: T_A's id signed with T_B's key.
    let forger = Signer::new("T_A", "terminal_b");
    let r = forger
        .send(&base, "pay", &pay_body("R-forged", &code("00")), 0)
        .await;
    assert_eq!(
        (r.status(), r.code()),
        ("F", "INVALID_SIGNATURE"),
        "{:?}",
        r.body
    );
    assert!(!r.signed);

    // Replayed outside the window (10 minutes old; the window is 5 minutes), and from the future.
    for skew in [-600_000, 600_000] {
        let r = a
            .send(&base, "pay", &pay_body("R-replay", &code("00")), skew)
            .await;
        assert_eq!(
            (r.status(), r.code()),
            ("F", "PARAM_ILLEGAL"),
            "{:?}",
            r.body
        );
    }

    // A merchant, a store, a terminal id not registered for T_A.
    for (path, value) in [
        ("/order/merchant/referenceMerchantId", "M9999"),
        ("/order/merchant/store/referenceStoreId", "S99"),
        ("/order/env/storeTerminalId", "T9999"),
    ] {
        let mut body = pay_body("R-merchant", &code("00"));
        *body.pointer_mut(path).unwrap() = json!(value);
        let r = a.send(&base, "pay", &body, 0).await;
        assert_eq!(
            (r.status(), r.code()),
            ("F", "ACCESS_DENIED"),
            "{path}: {:?}",
            r.body
        );
        assert!(r.signed, "an authenticated terminal gets a signed refusal");
    }

    // A code the record could not mask (a number, not the string AMS sends) would be kept
    // in clear: refused before anything is recorded.
    let mut numeric = pay_body("R-numeric", &code("00"));
    numeric["paymentMethod"]["paymentMethodId"] = json!(code("00").parse::<u64>().unwrap());
    let r = a.send(&base, "pay", &numeric, 0).await;
    assert_eq!(
        (r.status(), r.code()),
        ("F", "PARAM_ILLEGAL"),
        "{:?}",
        r.body
    );
    assert!(r.signed);

    // Above the registered limit (1,000,000 minor units).
    let mut big = pay_body("R-big", &code("00"));
    big["paymentAmount"]["value"] = json!("1000001");
    let r = a.send(&base, "pay", &big, 0).await;
    assert_eq!(r.code(), "PAYMENT_AMOUNT_EXCEED_LIMIT", "{:?}", r.body);

    assert_eq!(up.counts().pay, 0, "no refused pay reached the upstream");
    assert_eq!(
        db.count("SELECT count(*) FROM hub_payments").await,
        0,
        "nothing recorded"
    );

    // B pays for real.
    let r = b
        .send(&base, "pay", &pay_body("R-b1", &code("00")), 0)
        .await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    assert!(r.signed, "answers are signed with the hub key");
    let payment_id = r.body["paymentId"].as_str().unwrap().to_string();
    assert_eq!(up.counts().pay, 1);
    // The record keeps the code masked only.
    let clear = format!(
        "SELECT count(*) FROM hub_payments WHERE position(convert_to('{}', 'UTF8') in forward_body) > 0",
        code("00")
    );
    assert_eq!(
        db.count(&clear).await,
        0,
        "no clear payment code in the hub's database"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_payments WHERE position(convert_to('2812**********3400', 'UTF8') in forward_body) > 0").await,
        1
    );

    // The identical repeat, from the record: the same answer, nothing forwarded.
    let again = b
        .send(&base, "pay", &pay_body("R-b1", &code("00")), 0)
        .await;
    assert_eq!(again.body, r.body);
    assert_eq!(up.counts().pay, 1, "answered from the record");
    // Key order does not make a different body.
    let reordered: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&pay_body("R-b1", &code("00"))).unwrap())
            .unwrap();
    assert_eq!(b.send(&base, "pay", &reordered, 0).await.body, r.body);

    // A different body under the same id: REPEAT_REQ_INCONSISTENT, nothing forwarded.
    let mut other = pay_body("R-b1", &code("00"));
    other["paymentAmount"]["value"] = json!("999");
    other["order"]["orderAmount"]["value"] = json!("999");
    let r2 = b.send(&base, "pay", &other, 0).await;
    assert_eq!(
        (r2.status(), r2.code()),
        ("F", "REPEAT_REQ_INCONSISTENT"),
        "{:?}",
        r2.body
    );
    // The same id from another terminal.
    let r3 = a
        .send(&base, "pay", &pay_body("R-b1", &code("00")), 0)
        .await;
    assert_eq!(r3.code(), "ACCESS_DENIED", "{:?}", r3.body);
    assert_eq!(up.counts().pay, 1);

    // A touches B's payment: cancel, inquiry (by either id), refund.
    let r = a
        .send(&base, "cancel", &json!({"paymentRequestId": "R-b1"}), 0)
        .await;
    assert_eq!(r.code(), "ACCESS_DENIED", "{:?}", r.body);
    let r = a
        .send(
            &base,
            "inquiryPayment",
            &json!({"paymentRequestId": "R-b1"}),
            0,
        )
        .await;
    assert_eq!(r.code(), "ACCESS_DENIED", "{:?}", r.body);
    let r = a
        .send(
            &base,
            "inquiryPayment",
            &json!({"paymentId": payment_id}),
            0,
        )
        .await;
    assert_eq!(r.code(), "ACCESS_DENIED", "{:?}", r.body);
    let refund = json!({"refundRequestId": "RF-a1", "paymentId": payment_id,
        "refundAmount": {"currency": "CNY", "value": "100"}});
    let r = a.send(&base, "refund", &refund, 0).await;
    assert_eq!(r.code(), "ACCESS_DENIED", "{:?}", r.body);
    let c = up.counts();
    assert_eq!(
        (c.cancel, c.inquiry_payment, c.refund),
        (0, 0, 0),
        "nothing of A's reached B's payment"
    );
    assert_eq!(hub_state(&db, "R-b1").await.as_deref(), Some("SUCCEEDED"));
    assert_eq!(up.record("R-b1").unwrap().0, "SUCCESS");

    // Disabled: refused from the next request on, by the registry read on every request.
    let pool = db.pool().await;
    posd::hub::registry::set_enabled(&pool, "T_B", false)
        .await
        .unwrap();
    let r = b
        .send(
            &base,
            "inquiryPayment",
            &json!({"paymentRequestId": "R-b1"}),
            0,
        )
        .await;
    assert_eq!(
        (r.status(), r.code()),
        ("F", "ACCESS_DENIED"),
        "{:?}",
        r.body
    );
    assert_eq!(up.counts().inquiry_payment, 0);
    posd::hub::registry::set_enabled(&pool, "T_B", true)
        .await
        .unwrap();
    let r = b
        .send(
            &base,
            "inquiryPayment",
            &json!({"paymentRequestId": "R-b1"}),
            0,
        )
        .await;
    assert_eq!(r.body["paymentStatus"], "SUCCESS", "{:?}", r.body);

    // The metrics count refusals by reason, never by terminal.
    let m = hub.metrics().await;
    assert!(
        m.contains("posd_hub_refusals_total{reason=\"ACCESS_DENIED\"}"),
        "{m}"
    );
    assert!(
        !m.contains("\"T_A\"") && !m.contains("\"T_B\""),
        "no terminal label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_cancel_of_a_pay_that_never_arrived_is_answered_from_the_record() {
    // The upstream answers the first cancel ORDER_NOT_EXIST (no pay ever reached it): the
    // payment is FAILED and the cancel done. The terminal asking again (a retry, its
    // recovery after a restart) gets the recorded answer, and the payment stays FAILED —
    // not back in CANCELLING with nothing left to settle it.
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hub = TestHub::new(&db, &up.base_url(), "", "");
    hub.start(None).await;
    let a = Signer::new("T_A", "terminal_a");
    let body = json!({"paymentRequestId": "R-never-paid"});
    let first = a.send(&hub.base, "cancel", &body, 0).await;
    assert_eq!(
        (first.status(), first.code()),
        ("F", "ORDER_NOT_EXIST"),
        "{:?}",
        first.body
    );
    assert_eq!(
        hub_state(&db, "R-never-paid").await.as_deref(),
        Some("FAILED")
    );
    let cancels = up.counts().cancel;
    for _ in 0..2 {
        let again = a.send(&hub.base, "cancel", &body, 0).await;
        assert!(again.signed);
        assert_eq!(again.body, first.body, "answered from the record");
        assert_eq!(
            hub_state(&db, "R-never-paid").await.as_deref(),
            Some("FAILED"),
            "{}",
            super::harness::journal(&db, "R-never-paid").await
        );
    }
    assert_eq!(up.counts().cancel, cancels, "nothing sent again");
    assert_eq!(
        db.count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await,
        0
    );
}
