//! The reversal queue through the real binary with the sandbox speaking the mainland dialect:
//! row 86's cancel queued through the outage and delivered once, and SIGKILL at every point of
//! a replay (lease taken, cancel in flight, answer not yet recorded, settle committed) — the
//! same checks the AMS dialect passes in `queue.rs`.

use std::time::Duration;

use super::daemon::TestDaemon;
use super::queue::{db, replay_crash_in, transitions, wait_state, QUEUE_FLOW};

/// The embedded sandbox in the mainland dialect.
const CN: &str = "[gateway]\nkind = \"sandbox\"\ndialect = \"alipay_cn\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_86_is_queued_through_the_outage_and_delivered_once() {
    let mut d = TestDaemon::new(&format!(
        "{CN}{QUEUE_FLOW}\n[sandbox]\ncancel_outage = \"1s\"\n"
    ));
    d.start(None).await;
    let id = d.pay("281234567890123486", "12.34").await;
    wait_state(&d, &id, "CANCEL_QUEUED", Duration::from_secs(20)).await;
    let p = wait_state(&d, &id, "CANCELLED", Duration::from_secs(30)).await;
    let t = transitions(&p);
    assert_eq!(
        t.iter()
            .filter(|(f, to)| f == "CANCEL_QUEUED" && to == "CANCELLED")
            .count(),
        1,
        "{t:?}"
    );
    assert_eq!(d.sandbox_record(&id).unwrap().0, "CANCELLED");
    let (status, n): (String, i64) = db(&d)
        .query_row(
            "SELECT max(status), count(*) FROM reversal_queue WHERE payment_request_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), n), ("DONE", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_lease_is_taken() {
    replay_crash_in(CN, "replay_leased", "3s", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_replayed_cancel_is_in_flight() {
    replay_crash_in(CN, "replay_sent", "3s", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_answer_before_it_is_recorded() {
    replay_crash_in(CN, "replay_answered", "3s", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_the_settle_commits() {
    replay_crash_in(CN, "replay_settled", "3s", true).await;
}
