//! Two hub instances on one database behind a balancer, one SIGKILLed at each point of its
//! money path (`POSD_FAILPOINT`, or a kill while the upstream holds the pay); the terminal's
//! retries reach the other instance; afterwards the upstream's record, the hub's and the
//! terminal's agree: no second upstream pay, no reversal lost, nothing left open. And active
//! cancel: a terminal killed after its pay is cancelled by the hub once; an approved pay
//! never is; an instance killed holding the active-cancel lease or mid-send of the queued
//! cancel leaves it to the other.

use std::time::{Duration, Instant};

use serde_json::json;

use super::harness::{
    code, hub_state, journal, pay_body, register, terminal, wait_hub_state, Balancer, Signer,
    TestHub, Upstream,
};
use super::pg::TestDb;

struct Estate {
    db: TestDb,
    up: Upstream,
    a: TestHub,
    b: TestHub,
    lb: Balancer,
}

async fn estate(failpoint_a: Option<&str>, hub_extra: &str) -> Estate {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut a = TestHub::new(
        &db,
        &up.base_url(),
        &format!("instance_id = \"hub-a\"\n{hub_extra}"),
        "",
    );
    let mut b = TestHub::new(
        &db,
        &up.base_url(),
        &format!("instance_id = \"hub-b\"\n{hub_extra}"),
        "",
    );
    a.start(failpoint_a).await;
    b.start(None).await;
    let lb = Balancer::start(&[&a.base, &b.base]).await;
    Estate { db, up, a, b, lb }
}

/// Terminal, hub and upstream agree on one payment.
async fn assert_agree(e: &Estate, id: &str, terminal_state: &str) {
    let hub_want = match terminal_state {
        "SUCCEEDED" => "SUCCEEDED",
        "FAILED" => "FAILED",
        "CANCELLED" => "CANCELLED",
        other => panic!("{id}: unexpected terminal state {other}"),
    };
    wait_hub_state(&e.db, id, hub_want, Duration::from_secs(30)).await;
    let up = e.up.record(id);
    match terminal_state {
        "SUCCEEDED" => assert_eq!(
            up.as_ref().map(|r| r.0.as_str()),
            Some("SUCCESS"),
            "{id}: {up:?}"
        ),
        _ => assert!(
            up.as_ref().is_none_or(|r| r.0 != "SUCCESS" || r.1 > 0),
            "{id}: the terminal says {terminal_state} but the upstream charged: {up:?}\n{}",
            journal(&e.db, id).await
        ),
    }
    assert!(e.up.counts().pay <= 1, "no second upstream pay");
    assert_eq!(
        e.db.count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await,
        0,
        "nothing left open"
    );
}

/// Replays the terminal's queue until the payment leaves `CANCEL_QUEUED`.
async fn replay_until_settled(t: &super::super::daemon::TestDaemon, id: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = http
            .post(format!("{}/v1/queue/replay", t.base))
            .json(&json!({}))
            .send()
            .await;
        if t.get(id).await["state"] != "CANCEL_QUEUED" {
            return;
        }
        assert!(Instant::now() < deadline, "{id} stays CANCEL_QUEUED");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pay_path_kill(failpoint: &str, last2: &str, want: &str) {
    let mut e = estate(Some(failpoint), "").await;
    let mut t = terminal(&e.lb.base, "T_A", "terminal_a", "");
    t.start(None).await;
    let id = t.pay(&code(last2), "12.34").await;
    e.a.wait_exit(Duration::from_secs(20)).await;
    let mut p = t.wait_final(&id, Duration::from_secs(60)).await;
    if p["state"] == "CANCEL_QUEUED" {
        // Final for the cashier (treated as not charged); the terminal's queue settles it.
        replay_until_settled(&t, &id).await;
        p = t.get(&id).await;
    }
    assert_eq!(p["state"], want, "{p}\n{}", journal(&e.db, &id).await);
    assert_agree(&e, &id, want).await;
    // The survivor did the rest.
    let j = journal(&e.db, &id).await;
    assert!(j.contains("hub-a"), "{j}");
    assert!(j.contains("hub-b") || want == "SUCCEEDED", "{j}");
    e.b.kill();
    t.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_request_is_recorded() {
    // Recorded, never forwarded: the terminal's inquiries and cancel go to hub-b; nobody is
    // charged and the late pay is never forwarded.
    pay_path_kill("hub_request_recorded", "00", "FAILED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_just_before_the_upstream_call() {
    pay_path_kill("hub_upstream_in_flight", "00", "FAILED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_answer_is_recorded() {
    // Charged and recorded; the terminal never got the answer and learns it from hub-b.
    pay_path_kill("hub_answer_recorded", "00", "SUCCEEDED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_upstream_holds_the_pay() {
    // Row 84: the upstream charges but holds its answer; hub-a dies with the pay in flight.
    let mut e = estate(None, "").await;
    let mut t = terminal(&e.lb.base, "T_A", "terminal_a", "");
    t.start(None).await;
    let id = t.pay(&code("84"), "12.34").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while e.up.counts().pay == 0 {
        assert!(
            Instant::now() < deadline,
            "the pay never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Whichever instance holds it: kill both in turn is not needed — the balancer sent the
    // first connection to hub-a.
    e.a.kill();
    let p = t.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(p["state"], "SUCCEEDED", "{p}");
    assert_agree(&e, &id, "SUCCEEDED").await;
    t.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_terminal_is_cancelled_once_and_an_approved_pay_never() {
    let hub_extra = "active_cancel_after = \"4s\"\nterminal_decision_time = \"3s\"";
    let e = estate(None, hub_extra).await;
    // A real terminal killed right after its pay answer (U, PROCESSING for ever), never restarted.
    let mut t = terminal(&e.lb.base, "T_A", "terminal_a", "");
    t.start(Some("pay_answered")).await;
    let id = t.pay(&code("83"), "12.34").await;
    t.wait_exit(Duration::from_secs(20)).await;
    // A pay the upstream charges late (row 84: no answer), its terminal silent too.
    let s = Signer::new("T_A", "terminal_a");
    let r = s
        .send(&e.lb.base, "pay", &pay_body("R-approved", &code("84")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    assert_eq!(hub_state(&e.db, &id).await.as_deref(), Some("RECEIVED"));

    wait_hub_state(&e.db, &id, "CANCELLED", Duration::from_secs(30)).await;
    assert_eq!(e.up.record(&id).unwrap().0, "CANCELLED");
    wait_hub_state(&e.db, "R-approved", "SUCCEEDED", Duration::from_secs(30)).await;
    // Some more worker passes on both instances change nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(e.up.counts().cancel, 1, "cancelled once, by one instance");
    assert_eq!(
        e.up.record("R-approved").unwrap().0,
        "SUCCESS",
        "an approved pay is never cancelled"
    );
    assert_eq!(
        e.db.count("SELECT count(*) FROM hub_events WHERE kind = 'active_cancel'")
            .await,
        1
    );
    let j = journal(&e.db, &id).await;
    assert!(j.contains("active_cancel | RECEIVED | CANCELLING"), "{j}");
    assert!(
        j.contains("last inquiry: paymentStatus PROCESSING"),
        "the decision names its inquiry: {j}"
    );
    let m = e.a.metrics().await + &e.b.metrics().await;
    assert!(
        m.contains("posd_hub_active_cancels_total{decision=\"cancel\"} 1"),
        "{m}"
    );
}

/// hub-a alone takes the active-cancel work and dies at `failpoint`; hub-b, started after,
/// finishes it once the lease has expired.
async fn background_kill(failpoint: &str, cancels_upstream: u64) {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let hub_extra = "active_cancel_after = \"2s\"\nterminal_decision_time = \"1s\"";
    let mut a = TestHub::new(
        &db,
        &up.base_url(),
        &format!("instance_id = \"hub-a\"\n{hub_extra}"),
        "",
    );
    let mut b = TestHub::new(
        &db,
        &up.base_url(),
        &format!("instance_id = \"hub-b\"\n{hub_extra}"),
        "",
    );
    a.start(Some(failpoint)).await;
    let s = Signer::new("T_A", "terminal_a");
    let r = s
        .send(&a.base, "pay", &pay_body("R-silent", &code("83")), 0)
        .await;
    assert_eq!(r.status(), "U", "{:?}", r.body);
    a.wait_exit(Duration::from_secs(30)).await;
    b.start(None).await;
    wait_hub_state(&db, "R-silent", "CANCELLED", Duration::from_secs(30)).await;
    assert_eq!(up.record("R-silent").unwrap().0, "CANCELLED");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        up.counts().cancel,
        cancels_upstream,
        "{}",
        journal(&db, "R-silent").await
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await,
        0
    );
    let j = journal(&db, "R-silent").await;
    assert!(j.contains("hub-b"), "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_holding_the_active_cancel_lease() {
    // Nothing was sent: hub-b decides and cancels once.
    background_kill("hub_active_cancel_leased", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_queued_cancel_was_sent() {
    // Sent, not settled: hub-b resends the identical cancel (idempotent upstream) and settles.
    background_kill("hub_queue_sent", 2).await;
}
