//! `posd hub reconcile` on real PostgreSQL: an estate run of every sandbox row through a
//! terminal and the hub, then statements built from the sandbox's own record: all matched
//! (either amount unit); a missing row, an amount off by one minor unit, a foreign row and a
//! row of another store each reported as its kind; a truncated file refused with its line
//! and nothing changed; an extra PAYMENT for a payment the hub holds as cancelled flagged
//! critical and moved to NEEDS_ATTENTION in the hub's record with the statement as reason;
//! `--apply` queues exactly one full refund in the hub's own queue, also from two runs at once, and a second run none.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::super::reconcile::{sandbox_statement_at, statement_name, write_statement, Row};
use super::harness::{code, hub_state, register, terminal, wait_hub_state, TestHub, Upstream};
use super::pg::TestDb;

const ROWS: &[&str] = &[
    "00", "79", "80", "81", "82", "83", "84", "85", "86", "87", "88", "89",
];

fn reconcile(config: &Path, file: &Path, extra: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posd"))
        .args(["hub", "reconcile", "--format", "json"])
        .arg(file)
        .args(extra)
        .arg("--config")
        .arg(config)
        .env_remove("POSD_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn findings_of<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("not a report: {report}"))
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

/// Refund rows and queue items the hub ever wrote for a payment.
async fn reversals(db: &TestDb, id: &str) -> (i64, i64) {
    let pool = db.pool().await;
    let c = pool.get().await.unwrap();
    let q: i64 = c
        .query_one(
            "SELECT count(*) FROM hub_queue WHERE payment_request_id = $1 AND kind = 'refund'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let r: i64 = c
        .query_one(
            "SELECT count(*) FROM hub_refunds WHERE payment_request_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    (q, r)
}

async fn events(db: &TestDb, id: &str) -> i64 {
    let pool = db.pool().await;
    let c = pool.get().await.unwrap();
    c.query_one(
        "SELECT count(*) FROM hub_events WHERE payment_request_id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until nothing in the hub's record is open and its queue is empty.
async fn settled(db: &TestDb, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let open = db
            .count(
                "SELECT count(*) FROM hub_payments WHERE state IN ('RECEIVED','CANCELLING','REFUNDING')",
            )
            .await;
        let pending = db
            .count("SELECT count(*) FROM hub_queue WHERE status = 'PENDING'")
            .await;
        if open == 0 && pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hub did not settle: {open} open, {pending} queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estates_statement_matches_and_each_discrepancy_is_its_kind_in_the_hubs_record() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(3)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hub = TestHub::new(&db, &up.base_url(), "", "");
    hub.start(None).await;
    let mut t = terminal(&hub.base, "T_A", "terminal_a", "");
    t.start(None).await;
    let mut ids = Vec::new();
    for last2 in ROWS {
        ids.push((last2.to_string(), t.pay(&code(last2), "12.34").await));
    }
    for (last2, id) in &ids {
        let p = t.wait_final(id, Duration::from_secs(30)).await;
        assert!(p["is_final"] == true, "row {last2}: {p}");
    }
    let id_of = |last2: &str| ids.iter().find(|(l, _)| l == last2).unwrap().1.clone();
    // A partial refund through the hub, so the statement has a REFUND row.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/payments/{}/refunds", t.base, id_of("00")))
        .json(&serde_json::json!({"amount": "5.00", "reason": "one item returned"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_hub_state(
        &db,
        &id_of("00"),
        "PARTIALLY_REFUNDED",
        Duration::from_secs(20),
    )
    .await;
    settled(&db, Duration::from_secs(60)).await;
    t.kill();
    // Stopped: a refund the reconciliation queues stays in the queue for the checks below.
    hub.kill();

    let rows = sandbox_statement_at(&up.dir.path().join("sandbox.sqlite3"));
    assert!(rows.iter().any(|r| r.kind == "REFUND"), "{rows:?}");
    let name = statement_name();
    let dir = hub.dir.path().to_path_buf();
    let cfg = hub.config.clone();

    // 1. The sandbox's own record: everything matches, in either amount unit.
    for decimal in [true, false] {
        let f = write_statement(&dir, &name, &rows, decimal, true);
        let (code, rep, err) = reconcile(&cfg, &f, &[]);
        assert_eq!(code, 0, "{rep:#}\n{err}");
        assert_eq!(findings_of(&rep, "matched").len(), rows.len(), "{rep:#}");
        assert_eq!(
            rep["units"][0]["unit"],
            if decimal { "decimal" } else { "minor_units" }
        );
    }
    // Scoped to a merchant the hub does not serve: a usage error, nothing read.
    let f = write_statement(&dir, &name, &rows, true, true);
    let (code, _, err) = reconcile(&cfg, &f, &["--merchant", "M9999"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no registered terminal of merchant M9999"),
        "{err}"
    );

    // 2. A missing row: the 79 sale's PAYMENT is not in the file.
    let missing: Vec<Row> = rows
        .iter()
        .filter(|r| r.request_id != id_of("79"))
        .cloned()
        .collect();
    let (code, rep, _) = reconcile(
        &cfg,
        &write_statement(&dir, &name, &missing, true, true),
        &[],
    );
    assert_eq!(code, 1, "{rep:#}");
    let m = findings_of(&rep, "missing_from_statement");
    assert_eq!(m.len(), 1, "{rep:#}");
    assert_eq!(m[0]["payment_request_id"], id_of("79"));

    // 3. An amount off by one minor unit (row 82).
    let mut off = rows.clone();
    off.iter_mut()
        .find(|r| r.request_id == id_of("82") && r.kind == "PAYMENT")
        .unwrap()
        .minor += 1;
    let (code, rep, _) = reconcile(&cfg, &write_statement(&dir, &name, &off, true, true), &[]);
    assert_eq!(code, 1);
    let a = findings_of(&rep, "amount_differs");
    assert_eq!(a.len(), 1, "{rep:#}");
    assert_eq!(a[0]["payment_request_id"], id_of("82"));
    assert_eq!(a[0]["statement_amount"], "12.35");
    assert_eq!(a[0]["posd_amount"], "12.34");

    // 4. A foreign row of the estate's store; a row of a store the hub does not serve is
    // skipped.
    let now = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .to_rfc3339();
    let mut foreign = rows.clone();
    foreign.push(Row {
        store: "S01".into(),
        transaction_id: "2026GW-FOREIGN".into(),
        original_id: String::new(),
        request_id: "ECR-7-000123".into(),
        kind: "PAYMENT",
        time: now.clone(),
        minor: 990,
        currency: "CNY".into(),
    });
    foreign.push(Row {
        store: "S99".into(),
        request_id: "OTHER-STORE-1".into(),
        ..foreign.last().unwrap().clone()
    });
    let (code, rep, _) = reconcile(
        &cfg,
        &write_statement(&dir, &name, &foreign, true, true),
        &[],
    );
    assert_eq!(code, 1);
    let u = findings_of(&rep, "unknown_to_posd");
    assert_eq!(u.len(), 1, "{rep:#}");
    assert_eq!(u[0]["payment_request_id"], "ECR-7-000123");
    assert_eq!(rep["out_of_scope"], 1);

    // 5. The critical one: the gateway shows a charge for the payment the hub cancelled (83).
    let cancelled = id_of("83");
    assert_eq!(
        hub_state(&db, &cancelled).await.as_deref(),
        Some("CANCELLED")
    );
    let mut extra = rows.clone();
    extra.push(Row {
        store: "S01".into(),
        transaction_id: "2026GW-83-CHARGE".into(),
        original_id: String::new(),
        request_id: cancelled.clone(),
        kind: "PAYMENT",
        time: now.clone(),
        minor: 1234,
        currency: "CNY".into(),
    });
    // Truncated first: refused with its line, and nothing changes.
    let before = events(&db, &cancelled).await;
    let truncated = write_statement(&dir, &name, &extra, true, false);
    let (code, _, err) = reconcile(&cfg, &truncated, &["--apply"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line") && err.contains("truncated"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        hub_state(&db, &cancelled).await.as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(reversals(&db, &cancelled).await, (0, 0));
    assert_eq!(events(&db, &cancelled).await, before);

    // Whole, without --apply: critical, and NEEDS_ATTENTION with the statement as reason.
    let whole = write_statement(&dir, &name, &extra, true, true);
    let (code, rep, err) = reconcile(&cfg, &whole, &[]);
    assert_eq!(code, 1, "{err}");
    let c = findings_of(&rep, "charged_not_at_posd");
    assert_eq!(c.len(), 1, "{rep:#}");
    assert_eq!(c[0]["critical"], true);
    assert_eq!(c[0]["payment_request_id"], cancelled.as_str());
    assert_eq!(c[0]["posd_state"], "NEEDS_ATTENTION");
    assert_eq!(findings_of(&rep, "matched").len(), rows.len(), "{rep:#}");
    assert_eq!(
        hub_state(&db, &cancelled).await.as_deref(),
        Some("NEEDS_ATTENTION")
    );
    let pool = db.pool().await;
    let reason: String = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT attention_reason FROM hub_payments WHERE payment_request_id = $1",
            &[&cancelled],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason.contains(&name) && reason.contains("line"),
        "{reason}"
    );
    assert_eq!(
        reversals(&db, &cancelled).await,
        (0, 0),
        "no refund without --apply"
    );
    // The same file again changes nothing.
    let flagged = events(&db, &cancelled).await;
    assert_eq!(flagged, before + 1, "one journal event for the move");
    let (code, again, _) = reconcile(&cfg, &whole, &[]);
    assert_eq!(code, 1);
    assert_eq!(findings_of(&again, "charged_not_at_posd").len(), 1);
    assert_eq!(
        events(&db, &cancelled).await,
        flagged,
        "a second run wrote nothing"
    );

    // --apply queues exactly one full refund in the hub's queue, also when two run at the
    // same moment (two instances' operators); a second run queues none.
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| reconcile(&cfg, &whole, &["--apply"]));
        let b = s.spawn(|| reconcile(&cfg, &whole, &["--apply"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(first.0, 1, "{}", first.2);
    assert_eq!(second.0, 1, "{}", second.2);
    // What a run did about the charge; `None` when it no longer found one (it read the
    // record after the other run's refund was committed).
    let done = |rep: &Value| {
        findings_of(rep, "charged_not_at_posd")
            .first()
            .map(|f| f["done"].as_str().unwrap_or("").to_string())
    };
    let (queued, other) = if done(&first.1).is_some_and(|d| d.contains("full refund")) {
        (done(&first.1), done(&second.1))
    } else {
        (done(&second.1), done(&first.1))
    };
    let queued = queued.unwrap_or_default();
    assert!(queued.contains("full refund"), "{queued}");
    assert!(
        other
            .as_ref()
            .is_none_or(|o| o.contains("no refund queued")),
        "the other run queued too: {other:?}"
    );
    assert_eq!(reversals(&db, &cancelled).await, (1, 1));
    let row = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT r.amount_minor, r.origin, q.status, q.origin, p.state FROM hub_refunds r \
             JOIN hub_queue q ON q.refund_request_id = r.refund_request_id \
             JOIN hub_payments p ON p.payment_request_id = r.payment_request_id \
             WHERE r.payment_request_id = $1",
            &[&cancelled],
        )
        .await
        .unwrap();
    let got: (i64, String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        got,
        (
            1234,
            "hub".into(),
            "PENDING".into(),
            "hub".into(),
            "REFUNDING".into()
        )
    );
    let (code, _, err) = reconcile(&cfg, &whole, &["--apply"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        reversals(&db, &cancelled).await,
        (1, 1),
        "the second run queued nothing"
    );
    // The table says what to do.
    let out = Command::new(env!("CARGO_BIN_EXE_posd"))
        .args(["hub", "reconcile"])
        .arg(&whole)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&cancelled), "{table}");
}
