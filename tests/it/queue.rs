//! The reversal queue, refunds and the back office through real processes and the
//! sandbox gateway: rows 86 and 87, SIGKILL at every point of a replay, two replayers on one
//! database, refunds and their refusals over HTTP, and the `posd queue` / `posd journal`
//! commands with the daemon running and stopped. Timings are short (see `QUEUE_FLOW`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use posd::domain::code::{CodeRules, PaymentCode};
use posd::engine::clock::SystemClock;
use posd::engine::worker::{QueueSettings, Replayer};
use posd::gateway::client::{AmsClient, ClientSettings, MerchantIdentity};
use posd::gateway::sandbox::{Sandbox, SandboxHandle, SandboxSettings};
use posd::gateway::{Outcome, PayOrder};
use posd::store::Store;
use serde_json::Value;

use super::daemon::TestDaemon;
use crate::support;

/// Short flow timings: a cancel is queued about half a second after the pay, the queue
/// retries every 100–400 ms, and a lease lasts 4 × (200 ms + 1 s).
pub(crate) const QUEUE_FLOW: &str = r#"
[flow]
pay_timeout = "300ms"
inquiry_interval = "20ms"
inquiry_timeout = "200ms"
inquiry_max = 10
cancel_timeout = "200ms"
cancel_retry_window = "300ms"
cancel_retry_min = "20ms"
cancel_retry_max = "50ms"
queue_backoff_initial = "100ms"
queue_backoff_max = "400ms"
"#;

/// The same, with a queue that waits 30 s: the daemon leaves its items alone while a test
/// drives them from the command line.
const SLOW_QUEUE_FLOW: &str = r#"
[flow]
pay_timeout = "300ms"
inquiry_interval = "20ms"
inquiry_timeout = "200ms"
inquiry_max = 10
cancel_timeout = "200ms"
cancel_retry_window = "300ms"
cancel_retry_min = "20ms"
cancel_retry_max = "50ms"
queue_backoff_initial = "30s"
queue_backoff_max = "10m"
"#;

fn code(last2: &str) -> String {
    format!("2812345678901234{last2}")
}

pub(crate) fn db(d: &TestDaemon) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(d.state().join("posd.sqlite3")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Polls the payment until it is in `state` (panics after `within`).
pub(crate) async fn wait_state(d: &TestDaemon, id: &str, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = d.get(id).await;
        if p["state"] == state {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {state}: {p}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The payment's transitions as (from, to) pairs.
pub(crate) fn transitions(p: &Value) -> Vec<(String, String)> {
    p["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("-").to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Runs the `posd` binary with the daemon's config; returns (exit code, stdout, stderr).
fn posd(d: &TestDaemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posd"))
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .env_remove("POSD_FAILPOINT")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_86_ends_cancelled_once_the_outage_passes() {
    let mut d = TestDaemon::new(&format!(
        "{QUEUE_FLOW}\n[sandbox]\ncancel_outage = \"1s\"\n"
    ));
    d.start(None).await;
    let id = d.pay(&code("86"), "12.34").await;
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
    let health: Value = reqwest::get(format!("{}/healthz", d.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["queue"]["pending"], 0, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_87_ends_refunded() {
    let mut d = TestDaemon::new(QUEUE_FLOW);
    d.start(None).await;
    let id = d.pay(&code("87"), "12.34").await;
    let p = wait_state(&d, &id, "REFUNDED", Duration::from_secs(30)).await;
    assert_eq!(p["refunded_amount"], "12.34");
    assert_eq!(p["refunds"][0]["kind"], "REVERSAL");
    assert_eq!(p["refunds"][0]["state"], "SUCCEEDED");
    assert_eq!(d.sandbox_record(&id).unwrap().1, 1234);
}

/// Kills the daemon at `failpoint` while the queue replays row 86's cancel, restarts it, and
/// checks the item is delivered once and the payment moves once.
async fn replay_crash(failpoint: &str, outage: &str, settled_before_the_kill: bool) {
    replay_crash_in("", failpoint, outage, settled_before_the_kill).await
}

/// [`replay_crash`] with `gateway` (a `[gateway]` section, e.g. the sandbox's other dialect)
/// in the daemon's config.
pub(crate) async fn replay_crash_in(
    gateway: &str,
    failpoint: &str,
    outage: &str,
    settled_before_the_kill: bool,
) {
    let mut d = TestDaemon::new(&format!(
        "{gateway}{QUEUE_FLOW}\n[sandbox]\ncancel_outage = \"{outage}\"\n"
    ));
    d.start(Some(failpoint)).await;
    let id = d.pay(&code("86"), "12.34").await;
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "{failpoint}: killed");
    assert!(
        d.log().contains("failpoint reached"),
        "{failpoint} never fired:\n{}",
        d.log()
    );
    let (state, items): (String, i64) = db(&d)
        .query_row(
            "SELECT p.state, (SELECT count(*) FROM reversal_queue q WHERE q.payment_request_id = p.payment_request_id AND q.status = 'PENDING') \
             FROM payments p WHERE p.payment_request_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let expect = if settled_before_the_kill {
        ("CANCELLED", 0)
    } else {
        ("CANCEL_QUEUED", 1)
    };
    assert_eq!(
        (state.as_str(), items),
        expect,
        "{failpoint}: the item survived the kill, settled or not"
    );
    let dead_owner: Option<String> = db(&d)
        .query_row(
            "SELECT lease_owner FROM reversal_queue WHERE payment_request_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    d.start(None).await;
    let p = wait_state(&d, &id, "CANCELLED", Duration::from_secs(40)).await;
    let t = transitions(&p);
    assert_eq!(
        t.iter().filter(|(_, to)| to == "CANCELLED").count(),
        1,
        "{failpoint}: applied once: {t:?}"
    );
    let (status, done_by): (String, String) = db(&d)
        .query_row(
            "SELECT q.status, e.actor FROM reversal_queue q JOIN queue_events e ON e.item_id = q.id \
             WHERE q.payment_request_id = ?1 AND e.what = 'DONE'",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "DONE");
    if let Some(dead) = dead_owner {
        // The stale lease expired and the restarted daemon retook the item.
        assert_ne!(
            done_by.split('#').next(),
            dead.split('#').next(),
            "{failpoint}: settled by the new process"
        );
    }
    assert_eq!(d.sandbox_record(&id).unwrap().0, "CANCELLED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_lease_is_taken() {
    replay_crash("replay_leased", "3s", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_replayed_cancel_is_in_flight() {
    // During the outage the queued cancel is held open by the gateway: killed mid-send.
    replay_crash("replay_sent", "3s", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_answer_before_it_is_recorded() {
    replay_crash("replay_answered", "3s", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_the_settle_commits() {
    replay_crash("replay_settled", "3s", true).await;
}

/// Kills the daemon right after it leased a second batch while the first was still in flight
/// (batches of one, three queued cancels), restarts it, and checks that every item is
/// delivered once and every payment moves once: both stale leases expire and are retaken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_two_overlapping_batches_leased() {
    let mut d = TestDaemon::new(&format!(
        "{QUEUE_FLOW}queue_batch = 1\nqueue_concurrency = 4\n\n[sandbox]\ncancel_outage = \"3s\"\n"
    ));
    d.start(Some("replay_leased_beside")).await;
    let (a, b, c) = tokio::join!(
        d.pay("281234567890120186", "12.31"),
        d.pay("281234567890120286", "12.32"),
        d.pay("281234567890120386", "12.33"),
    );
    let ids = [a, b, c];
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "killed");
    assert!(
        d.log().contains("failpoint reached"),
        "replay_leased_beside never fired:\n{}",
        d.log()
    );
    // At the kill, two items were leased, each under its own lease of the dying process.
    let leased: Vec<String> = db(&d)
        .prepare(
            "SELECT lease_owner FROM reversal_queue \
             WHERE status = 'PENDING' AND lease_owner IS NOT NULL ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(leased.len(), 2, "two leases out at the kill: {leased:?}");
    assert_ne!(leased[0], leased[1], "each batch its own lease");
    assert_eq!(
        leased[0].split('#').next(),
        leased[1].split('#').next(),
        "both held by the killed process: {leased:?}"
    );
    let dead = leased[0].split('#').next().unwrap().to_string();
    d.start(None).await;
    for id in &ids {
        let p = wait_state(&d, id, "CANCELLED", Duration::from_secs(40)).await;
        let t = transitions(&p);
        assert_eq!(
            t.iter().filter(|(_, to)| to == "CANCELLED").count(),
            1,
            "{id}: applied once: {t:?}"
        );
        assert_eq!(d.sandbox_record(id).unwrap().0, "CANCELLED", "{id}");
    }
    let done: Vec<(String, String)> = db(&d)
        .prepare(
            "SELECT q.payment_request_id, e.actor FROM reversal_queue q \
             JOIN queue_events e ON e.item_id = q.id WHERE e.what = 'DONE' ORDER BY q.id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(done.len(), 3, "one DONE per item: {done:?}");
    for (id, _) in &done {
        assert!(ids.contains(id), "{id}");
    }
    // All three, the two the killed process held among them, were settled by the restarted one.
    let retaken = done
        .iter()
        .filter(|(_, actor)| actor.split('#').next() != Some(dead.as_str()))
        .count();
    assert_eq!(
        retaken, 3,
        "settled by the new process: {done:?} (dead: {dead})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_over_http_full_partial_concurrent_and_refused() {
    let mut d = TestDaemon::new(QUEUE_FLOW);
    d.start(None).await;
    let http = reqwest::Client::new();
    let refund = |id: &str, body: Value| {
        let req = http
            .post(format!("{}/v1/payments/{id}/refunds", d.base))
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let id = d.pay(&code("00"), "12.34").await;
    wait_state(&d, &id, "SUCCEEDED", Duration::from_secs(20)).await;
    let before = d.get(&id).await;
    // Refused: over-refund, bad amount, unknown payment; nothing changes.
    let (s, b) = refund(&id, serde_json::json!({"amount": "12.35"})).await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 12.34"),
        "{b}"
    );
    let (s, b) = refund(&id, serde_json::json!({"amount": "abc"})).await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = refund(&id, serde_json::json!({"amount": "1.00", "extra": 1})).await;
    assert_eq!(s, 400);
    let (s, _) = refund("NOPE", serde_json::json!({})).await;
    assert_eq!(s, 404);
    assert_eq!(d.get(&id).await, before, "refusals change nothing");
    // A partial refund.
    let (s, b) = refund(
        &id,
        serde_json::json!({"amount": "2.34", "reason": "cold coffee"}),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["state"], "REFUNDING");
    let p = wait_state(&d, &id, "PARTIALLY_REFUNDED", Duration::from_secs(20)).await;
    assert_eq!(p["refunded_amount"], "2.34");
    // Five of 4.00 at once on the 10.00 left: at most two fit, and a refund in progress
    // blocks the next, so one or two are accepted and the rest refused; never more.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (base, id) = (d.base.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/payments/{id}/refunds"))
                .json(&serde_json::json!({"amount": "4.00"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let accepted = codes.iter().filter(|c| **c == 202).count();
    assert!(
        (1..=2).contains(&accepted) && codes.iter().all(|c| *c == 202 || *c == 409),
        "{codes:?}"
    );
    let want = format!("{}.34", 2 + 4 * accepted);
    let deadline = Instant::now() + Duration::from_secs(20);
    let p = loop {
        let p = d.get(&id).await;
        if p["state"] == "PARTIALLY_REFUNDED" && p["refunded_amount"] == want.as_str() {
            break p;
        }
        assert!(Instant::now() < deadline, "{p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(p["refunds"].as_array().unwrap().len(), 1 + accepted);
    // The rest through the CLI.
    let (code_, out, err) = posd(&d, &["refund", &id, "--json"]);
    assert_eq!(code_, 0, "{out}\n{err}");
    let p: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (p["state"].as_str(), p["refunded_amount"].as_str()),
        (Some("REFUNDED"), Some("12.34"))
    );
    assert_eq!(
        d.sandbox_record(&id).unwrap().1,
        1234,
        "the gateway refunded exactly the sale"
    );
    // Nothing left: refused, exit 1.
    let (code_, _, err) = posd(&d, &["refund", &id]);
    assert_eq!(code_, 1, "{err}");
    assert!(err.contains("payment is REFUNDED"), "{err}");
    // A cancelled sale cannot be refunded.
    let c = d.pay(&code("83"), "3.00").await;
    wait_state(&d, &c, "CANCELLED", Duration::from_secs(20)).await;
    let before = d.get(&c).await;
    let (s, b) = refund(&c, serde_json::json!({})).await;
    assert_eq!(s, 409, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CANCELLED"),
        "{b}"
    );
    assert_eq!(d.get(&c).await, before);
    // The journal has a row per payment and per refund.
    let (code_, csv, err) = posd(&d, &["journal"]);
    assert_eq!(code_, 0, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("record_type,payment_request_id,payment_id"));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("PAYMENT,")).count(),
        2,
        "{csv}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("REFUND,")).count(),
        p["refunds"].as_array().unwrap().len(),
        "{csv}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_office_with_the_daemon_running_and_stopped() {
    let mut d = TestDaemon::new(&format!(
        "{SLOW_QUEUE_FLOW}\n[sandbox]\ncancel_outage = \"1s\"\n"
    ));
    d.start(None).await;
    let a = d.pay(&code("86"), "12.34").await;
    let b = d.pay(&code("86"), "5.00").await;
    wait_state(&d, &a, "CANCEL_QUEUED", Duration::from_secs(20)).await;
    wait_state(&d, &b, "CANCEL_QUEUED", Duration::from_secs(20)).await;
    // Through the API.
    let health: Value = reqwest::get(format!("{}/healthz", d.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["queue"]["pending"], 2, "{health}");
    assert!(
        health["queue"]["oldest_age_seconds"].is_number(),
        "{health}"
    );
    let (c, out, err) = posd(&d, &["queue", "list", "--json"]);
    assert_eq!(c, 0, "{err}");
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let item_of = |id: &str| -> i64 {
        items
            .iter()
            .find(|i| i["payment_request_id"] == id)
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let (ia, ib) = (item_of(&a), item_of(&b));
    let (c, out, _) = posd(&d, &["queue", "list"]);
    assert_eq!(c, 0);
    assert!(out.contains("2 pending") && out.contains("CANCEL"), "{out}");
    // Abandon needs a reason (clap: usage error), then records it.
    let (c, _, _) = posd(&d, &["queue", "abandon", &ib.to_string()]);
    assert_eq!(c, 2);
    let (c, _, err) = posd(&d, &["queue", "abandon", &ib.to_string(), "--reason", " "]);
    assert_eq!(c, 2, "{err}");
    let (c, out, err) = posd(
        &d,
        &[
            "queue",
            "abandon",
            &ib.to_string(),
            "--reason",
            "reversed at the bank, ticket 7",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    let pb = d.get(&b).await;
    assert_eq!(pb["state"], "NEEDS_ATTENTION");
    assert!(
        pb["attention_reason"]
            .as_str()
            .unwrap()
            .contains("ticket 7"),
        "{pb}"
    );
    // Stop the daemon; the back office carries on, directly on the database.
    d.kill();
    let (c, out, err) = posd(&d, &["queue", "list", "--json"]);
    assert_eq!(c, 0, "{err}");
    assert!(err.contains("directly"), "{err}");
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list["depth"]["pending"], 1, "{list}");
    // Replay the item until the gateway's outage is over (each try is held 200 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (c, out, err) = posd(&d, &["queue", "replay", &ia.to_string(), "--json"]);
        if c == 0 {
            let r: Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(r["items"][0]["outcome"], "done", "{r}");
            assert_eq!(r["items"][0]["payment_state"], "CANCELLED", "{r}");
            break;
        }
        assert_eq!(c, 1, "{out}{err}");
        assert!(Instant::now() < deadline, "never delivered: {out}{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (state, cancelled): (String, i64) = db(&d)
        .query_row(
            "SELECT state, (SELECT count(*) FROM payment_events WHERE payment_request_id = ?1 AND to_state = 'CANCELLED') \
             FROM payments WHERE payment_request_id = ?1",
            [&a],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), cancelled), ("CANCELLED", 1));
    // A closed item is refused; an unknown one too.
    let (c, _, err) = posd(&d, &["queue", "replay", &ia.to_string()]);
    assert_eq!(c, 1);
    assert!(err.contains("already DONE"), "{err}");
    let (c, _, _) = posd(&d, &["queue", "replay", "99999"]);
    assert_eq!(c, 1);
    // The journal from the database, as JSON; a bad date is a usage error.
    let (c, out, err) = posd(
        &d,
        &["journal", "--format", "json", "--since", "2000-01-01"],
    );
    assert_eq!(c, 0, "{err}");
    let j: Value = serde_json::from_str(out.trim()).unwrap();
    let states: HashMap<String, String> = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["payment_request_id"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states[&a], "CANCELLED");
    assert_eq!(states[&b], "NEEDS_ATTENTION");
    let (c, _, err) = posd(&d, &["journal", "--since", "last tuesday"]);
    assert_eq!(c, 2, "{err}");
}

// ---- two replayers on one database, against the sandbox, counting its requests ----

fn client_settings(sandbox: &SandboxHandle) -> ClientSettings {
    ClientSettings {
        base_url: sandbox.base_url(),
        client_id: "SANDBOX_POSD_TEST".into(),
        key_version: "1".into(),
        merchant_key: support::merchant_key(),
        gateway_key: support::gateway_public(),
        notify_url: None,
        agent_token: None,
        insecure_http: true,
        connect_timeout: Duration::from_secs(1),
        pay_timeout: Duration::from_secs(5),
        inquiry_timeout: Duration::from_secs(5),
        cancel_timeout: Duration::from_secs(5),
        merchant: MerchantIdentity {
            merchant_id: "M1".into(),
            merchant_name: "Test Merchant".into(),
            merchant_mcc: "5812".into(),
            store_id: "S1".into(),
            store_name: "Test Store".into(),
            store_mcc: "5812".into(),
            terminal_id: "T1".into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replayers_on_one_database_send_each_item_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = SandboxSettings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        dir.path().join("sandbox.sqlite3"),
        support::gateway_key(),
        support::merchant_public(),
    );
    settings.cancel_outage = Duration::from_millis(1);
    let sandbox = Sandbox::start(settings).await.unwrap();
    let client = Arc::new(AmsClient::new(client_settings(&sandbox)).unwrap());
    // 30 sales the gateway holds as PROCESSING (row 83), each with a queued cancel here.
    let db_path = dir.path().join("posd.sqlite3");
    const N: usize = 30;
    for i in 0..N {
        let id = format!("Q{i:04}");
        let order = PayOrder {
            code: PaymentCode::parse(&code("83"), &CodeRules::default()).unwrap(),
            ..support::pay_order(&id)
        };
        assert!(matches!(client.pay(&order).await, Outcome::Unknown { .. }));
        support::queue_cancel(&db_path, &id, 0);
    }
    let before = sandbox.counts();
    let queue = |role: &str| {
        Replayer::new(
            Store::open(&db_path).unwrap(),
            client.clone(),
            Arc::new(SystemClock),
            QueueSettings {
                backoff_initial: Duration::from_secs(30),
                backoff_max: Duration::from_secs(600),
                call_timeout: Duration::from_secs(5),
                inquiry_timeout: Duration::from_secs(5),
                batch: 4,
                concurrency: 2,
                terminal_id: "T1".into(),
                timezone: None,
                merchant_name: "Test Merchant".into(),
                store_name: "Test Store".into(),
                inquiry_max: 10,
                payment_expiry_margin: Duration::from_secs(30),
            },
            role,
        )
    };
    // Two processes' worth: separate connections to one file.
    let (a, b) = (queue("daemon"), queue("cli"));
    let (ra, rb) = tokio::join!(a.drain(), b.drain());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let done = ra
        .iter()
        .chain(&rb)
        .filter(|r| r.outcome.as_str() == "done")
        .count();
    assert_eq!(done, N, "{ra:?} {rb:?}");
    assert!(
        !ra.is_empty() && !rb.is_empty(),
        "both replayers took items"
    );
    let after = sandbox.counts();
    assert_eq!(
        after.cancel - before.cancel,
        N as u64,
        "exactly one cancel per item"
    );
    let store = Store::open(&db_path).unwrap();
    let (cancelled, pending): (i64, i64) = store
        .call_blocking(|c| {
            Ok(c.query_row(
                "SELECT (SELECT count(*) FROM payments WHERE state = 'CANCELLED'), \
                 (SELECT count(*) FROM reversal_queue WHERE status = 'PENDING')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .unwrap();
    assert_eq!((cancelled, pending), (N as i64, 0));
    sandbox.shutdown().await;
}
