//! Terminal posd → hub → sandbox, every sandbox row: the terminal ends where it ends without
//! the hub, the hub's record agrees, and the upstream's own record agrees with both. Once with
//! the sandbox's AMS as the hub's upstream (the byte relay), once with its mainland dialect
//! (`kind = "alipay_cn"`: the terminal still speaks AMS, the hub converts).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::{
    code, register, terminal, wait_hub_state, TestHub, Upstream, MAINLAND_APP_ID,
};
use super::pg::TestDb;

/// (code suffix, terminal final state, hub state once settled, upstream status). The
/// sandbox keeps row 87's payment PROCESSING (its cancel is refused) and records the refund.
const ROWS: &[(&str, &str, &str, &str)] = &[
    ("00", "SUCCEEDED", "SUCCEEDED", "SUCCESS"),
    ("79", "SUCCEEDED", "SUCCEEDED", "SUCCESS"),
    ("80", "FAILED", "FAILED", "FAIL"),
    ("81", "FAILED", "FAILED", "FAIL"),
    ("82", "SUCCEEDED", "SUCCEEDED", "SUCCESS"),
    ("83", "CANCELLED", "CANCELLED", "CANCELLED"),
    ("84", "SUCCEEDED", "SUCCEEDED", "SUCCESS"),
    ("85", "CANCELLED", "CANCELLED", "CANCELLED"),
    ("86", "CANCEL_QUEUED", "CANCELLED", "CANCELLED"),
    ("87", "REFUNDED", "REFUNDED", "PROCESSING"),
    ("88", "SUCCEEDED", "SUCCEEDED", "SUCCESS"),
    ("89", "FAILED", "FAILED", "FAIL"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sandbox_row_through_the_hub() {
    every_row(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sandbox_row_through_a_hub_converting_to_the_mainland_dialect() {
    every_row(true).await
}

async fn every_row(mainland: bool) {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(10)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hub = if mainland {
        TestHub::mainland(&db, &up.base_url(), "", "")
    } else {
        TestHub::new(&db, &up.base_url(), "", "")
    };
    hub.start(None).await;
    let mut t = terminal(&hub.base, "T_A", "terminal_a", "");
    t.start(None).await;

    let mut ids = Vec::new();
    for (last2, ..) in ROWS {
        ids.push(t.pay(&code(last2), "12.34").await);
    }
    for ((last2, want, hub_want, up_want), id) in ROWS.iter().zip(&ids) {
        let p: Value = t.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(p["state"], *want, "row {last2}: {p}");
        wait_hub_state(&db, id, hub_want, Duration::from_secs(20)).await;
        let (status, refunded) = up
            .record(id)
            .unwrap_or_else(|| panic!("row {last2}: upstream never saw it"));
        assert_eq!(status, *up_want, "row {last2}: upstream record");
        if *last2 == "87" {
            assert_eq!(refunded, 1234, "row 87 refunded in full upstream");
        }
    }
    // The upstream was reached in the dialect configured, and the terminal's journal holds
    // the upstream's own code where a human reads it, as without the hub.
    assert_eq!(
        up.sender(&ids[0]).as_deref(),
        Some(if mainland {
            MAINLAND_APP_ID
        } else {
            "SANDBOX_HUB"
        })
    );
    let p80 = t.get(&ids[2]).await;
    let want80 = if mainland {
        "ACQ.BUYER_BALANCE_NOT_ENOUGH"
    } else {
        "USER_BALANCE_NOT_ENOUGH"
    };
    assert_eq!(p80["result_code"], want80, "{p80}");
    // One pay per row upstream: the hub never sent a second pay for any of them.
    assert_eq!(up.counts().pay, ROWS.len() as u64);
    assert_eq!(up.payments(), ROWS.len() as i64);
    // Row 86: the terminal's queued cancel, replayed, is answered from the hub's record.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/queue/replay", t.base))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let id86 = &ids[8];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = t.get(id86).await;
        if p["state"] == "CANCELLED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "86 not cancelled on the terminal: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The hub journalled every decision with its instance.
    assert!(
        db.count("SELECT count(*) FROM hub_events WHERE kind = 'pay_recorded'")
            .await
            >= ROWS.len() as i64
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await,
        0
    );
    t.kill();
}
