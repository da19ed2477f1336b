//! PostgreSQL refusing writes in the middle of a request (`default_transaction_read_only` and
//! every session ended, so the hub's pool reconnects read-only): the terminal gets U, never
//! S and never F, even when the upstream has approved; nothing is forwarded before its
//! write-ahead record; once writes are allowed again the terminal's retries complete with one
//! upstream pay each.

use std::time::{Duration, Instant};

use serde_json::json;

use super::harness::{
    code, hub_state, pay_body, register, Gate, HubAnswer, Signer, TestHub, Upstream,
};
use super::pg::TestDb;

async fn read_only(db: &TestDb, on: bool) {
    let sql = if on {
        format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            db.name()
        )
    } else {
        format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            db.name()
        )
    };
    db.admin().await.batch_execute(&sql).await.unwrap();
    // Settings apply to new sessions: end the hub's, its pool reconnects.
    db.terminate_sessions().await;
}

/// Sends until the answer is not U (a pool still holding an ended session answers U once).
async fn until_certain(s: &Signer, base: &str, op: &str, body: &serde_json::Value) -> HubAnswer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.send(base, op, body, 0).await;
        if r.status() != "U" {
            return r;
        }
        assert!(Instant::now() < deadline, "still U: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_writes_mid_request_gives_u_and_the_retry_completes() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let gate = Gate::start(&up.base_url()).await;
    let mut hub = TestHub::new(&db, &gate.base, "", "");
    // Room for the test to act while the upstream's answer is held.
    let text = std::fs::read_to_string(&hub.config)
        .unwrap()
        .replace("pay_timeout = \"1500ms\"", "pay_timeout = \"6s\"")
        .replace("lease = \"2s\"", "lease = \"8s\"");
    std::fs::write(&hub.config, text).unwrap();
    hub.start(None).await;
    let s = Signer::new("T_A", "terminal_a");

    // 1. The upstream approves W_00, the answer is held before the hub hears it: the
    //    write-ahead record is already there. Then the database refuses writes.
    gate.close();
    let base = hub.base.clone();
    let pay = tokio::spawn(async move {
        Signer::new("T_A", "terminal_a")
            .send(&base, "pay", &pay_body("W_00", &code("00")), 0)
            .await
    });
    gate.wait_held(Duration::from_secs(20)).await;
    assert_eq!(hub_state(&db, "W_00").await.as_deref(), Some("RECEIVED"));
    assert_eq!(up.record("W_00").unwrap().0, "SUCCESS", "approved upstream");
    read_only(&db, true).await;
    gate.open();
    let r = pay.await.unwrap();
    assert_eq!(
        r.status(),
        "U",
        "an approval the hub could not record is U, never S: {:?}",
        r.body
    );
    assert!(r.signed, "the hub's own U is signed");
    assert!(
        hub.log().contains("hub request failed"),
        "the U comes from the database, not the upstream:\n{}",
        hub.log()
    );
    let m = hub.metrics().await;
    assert!(
        m.contains("posd_hub_upstream_calls_total{operation=\"pay\",outcome=\"success\"} 1"),
        "{m}"
    );
    assert_eq!(hub_state(&db, "W_00").await.as_deref(), Some("RECEIVED"));

    // 2. While writes are refused, a new pay is U and is never forwarded: its record
    //    cannot be written. An inquiry that would record what it learns is U too.
    let r = s
        .send(&hub.base, "pay", &pay_body("W_01", &code("00")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    assert_eq!(up.counts().pay, 1, "nothing forwarded before its record");
    assert!(up.record("W_01").is_none());
    assert_eq!(hub_state(&db, "W_01").await, None);
    let q = s
        .send(
            &hub.base,
            "inquiryPayment",
            &json!({"paymentRequestId": "W_00"}),
            0,
        )
        .await;
    assert_eq!(q.status(), "U", "{:?}", q.body);
    let c = s
        .send(&hub.base, "cancel", &json!({"paymentRequestId": "W_02"}), 0)
        .await;
    assert_eq!(
        c.status(),
        "U",
        "a cancel not queued is not answered: {:?}",
        c.body
    );
    assert_eq!(up.counts().cancel, 0);
    assert_eq!(hub_state(&db, "W_02").await, None, "nothing queued");

    // 3. Writes allowed again: the terminal's retries complete.
    read_only(&db, false).await;
    let q = until_certain(
        &s,
        &hub.base,
        "inquiryPayment",
        &json!({"paymentRequestId": "W_00"}),
    )
    .await;
    assert_eq!(q.status(), "S", "{:?}", q.body);
    assert_eq!(q.body["paymentStatus"], "SUCCESS");
    assert_eq!(hub_state(&db, "W_00").await.as_deref(), Some("SUCCEEDED"));
    let r = until_certain(&s, &hub.base, "pay", &pay_body("W_01", &code("00"))).await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    assert_eq!(hub_state(&db, "W_01").await.as_deref(), Some("SUCCEEDED"));
    assert_eq!(up.counts().pay, 2, "one upstream pay per payment");
    assert_eq!(up.payments(), 2);
}
