//! Reconciliation and resolving through the real binary: statement files built from the
//! sandbox's own record after a run of every sandbox row, all matched; then each kind of
//! discrepancy injected and reported as its kind; the critical one moved to NEEDS_ATTENTION,
//! `--apply` queueing exactly one refund and a second run none; a malformed file refused with
//! its line and nothing changed. Resolve: refused outside NEEDS_ATTENTION, refused when the
//! gateway contradicts it, journal row written when accepted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::daemon::TestDaemon;

pub(crate) const HEADER: &str = "customerId,referenceMerchantId,referenceStoreId,transactionId,originalTransactionId,transactionRequestId,referenceTransactionId,orderDescription,paymentMethodType,pspName,transactionType,paymentTime,productCode,transactionAmountValue,transactionCurrency";

/// Every sandbox row, by the code's last two digits.
const ROWS: &[&str] = &[
    "00", "79", "80", "81", "82", "83", "84", "85", "86", "87", "88", "89",
];

fn code(last2: &str) -> String {
    format!("2812345678901234{last2}")
}

/// One statement row as the gateway writes it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) store: String,
    pub(crate) transaction_id: String,
    pub(crate) original_id: String,
    pub(crate) request_id: String,
    pub(crate) kind: &'static str,
    pub(crate) time: String,
    pub(crate) minor: i64,
    pub(crate) currency: String,
}

impl Row {
    fn line(&self, decimal: bool) -> String {
        let amount = if decimal {
            format!("{}.{:02}", self.minor / 100, self.minor % 100)
        } else {
            self.minor.to_string()
        };
        format!(
            "C0001,M0001,{},{},{},{},,Demo Cafe Central purchase,CONNECT_WALLET,ALIPAY_CN,{},{},IN_STORE_PAYMENT,{amount},{}",
            self.store,
            self.transaction_id,
            self.original_id,
            self.request_id,
            self.kind,
            self.time,
            self.currency
        )
    }
}

/// One payment in the sandbox's own record.
struct SandboxPayment {
    prid: String,
    pid: String,
    minor: i64,
    cur: String,
    scenario: String,
    status: String,
    paid_at: Option<String>,
    cancelled_at: Option<String>,
    created_at: String,
}

/// The Transaction Items rows the sandbox's own record implies: a PAYMENT for every charge
/// (a success, or row 87's charge that its inquiries never admit), a CANCEL after it for a
/// charge later cancelled, a REFUND for every refund. A cancel of a never-charged payment
/// leaves no row.
fn sandbox_statement(d: &TestDaemon) -> Vec<Row> {
    sandbox_statement_at(&d.state().join("sandbox.sqlite3"))
}

/// [`sandbox_statement`] of the sandbox database at `path` (the hub tests' upstream).
pub(crate) fn sandbox_statement_at(path: &Path) -> Vec<Row> {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut rows = Vec::new();
    let mut stmt = c
        .prepare(
            "SELECT payment_request_id, payment_id, amount_minor, currency, scenario, status, \
             paid_at, cancelled_at, created_at FROM payments ORDER BY created_ms",
        )
        .unwrap();
    let payments: Vec<SandboxPayment> = stmt
        .query_map([], |r| {
            Ok(SandboxPayment {
                prid: r.get(0)?,
                pid: r.get(1)?,
                minor: r.get(2)?,
                cur: r.get(3)?,
                scenario: r.get(4)?,
                status: r.get(5)?,
                paid_at: r.get(6)?,
                cancelled_at: r.get(7)?,
                created_at: r.get(8)?,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for SandboxPayment {
        prid,
        pid,
        minor,
        cur,
        scenario,
        status,
        paid_at,
        cancelled_at,
        created_at,
    } in payments
    {
        let charged = paid_at.is_some() || scenario == "87";
        if !charged {
            continue;
        }
        let base = Row {
            store: "S01".into(),
            transaction_id: pid.clone(),
            original_id: String::new(),
            request_id: prid.clone(),
            kind: "PAYMENT",
            time: paid_at.clone().unwrap_or(created_at.clone()),
            minor,
            currency: cur.clone(),
        };
        rows.push(base.clone());
        if status == "CANCELLED" {
            rows.push(Row {
                original_id: pid.clone(),
                kind: "CANCEL",
                time: cancelled_at.unwrap_or(created_at),
                ..base
            });
        }
    }
    let mut stmt = c
        .prepare(
            "SELECT r.refund_request_id, r.refund_id, r.payment_id, r.amount_minor, r.currency, \
             r.refund_time FROM refunds r ORDER BY r.refund_time",
        )
        .unwrap();
    let refunds: Vec<Row> = stmt
        .query_map([], |r| {
            Ok(Row {
                store: "S01".into(),
                request_id: r.get(0)?,
                transaction_id: r.get(1)?,
                original_id: r.get(2)?,
                minor: r.get(3)?,
                currency: r.get(4)?,
                time: r.get(5)?,
                kind: "REFUND",
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.extend(refunds);
    rows
}

pub(crate) fn statement_name() -> String {
    let utc8 = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    format!(
        "transactionItems_{}_000.csv",
        chrono::Utc::now().with_timezone(&utc8).format("%Y%m%d")
    )
}

pub(crate) fn write_statement(
    dir: &Path,
    name: &str,
    rows: &[Row],
    decimal: bool,
    end: bool,
) -> PathBuf {
    let sub = dir.join(format!("st-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join(name);
    let mut text = format!("{HEADER}\r\n");
    for r in rows {
        text.push_str(&r.line(decimal));
        text.push_str("\r\n");
    }
    if end {
        text.push_str("<END>\r\n");
    }
    std::fs::write(&path, text).unwrap();
    path
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn posd(d: &TestDaemon, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_posd"))
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn reconcile(d: &TestDaemon, file: &Path, apply: bool) -> (i32, Value, String) {
    let f = file.to_str().unwrap();
    let mut args = vec!["reconcile", f, "--format", "json"];
    if apply {
        args.push("--apply");
    }
    let r = posd(d, &args);
    let v = serde_json::from_str(r.stdout.trim()).unwrap_or(Value::Null);
    (r.code, v, r.stderr)
}

fn findings_of<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

fn db(d: &TestDaemon) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(d.state().join("posd.sqlite3")).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

/// Every queue item and refund ever written for a payment.
fn reversals_written(d: &TestDaemon, id: &str) -> (i64, i64) {
    let c = db(d);
    let q = c
        .query_row(
            "SELECT count(*) FROM reversal_queue WHERE payment_request_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    let r = c
        .query_row(
            "SELECT count(*) FROM refunds WHERE payment_request_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    (q, r)
}

async fn run_every_row(d: &TestDaemon) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for last2 in ROWS {
        ids.push((last2.to_string(), d.pay(&code(last2), "12.34").await));
    }
    for (last2, id) in &ids {
        let p = d.wait_final(id, Duration::from_secs(20)).await;
        assert!(p["is_final"] == true, "row {last2}: {p}");
    }
    ids
}

fn id_of<'a>(ids: &'a [(String, String)], last2: &str) -> &'a str {
    &ids.iter().find(|(l, _)| l == last2).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statement_of_every_sandbox_row_matches_and_each_discrepancy_is_its_kind() {
    let mut d = TestDaemon::new("[sandbox]\ncancel_outage = \"60s\"\n");
    d.start(None).await;
    let ids = run_every_row(&d).await;
    // A partial refund, so the statement has a REFUND row of a sale that stays paid.
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{}/v1/payments/{}/refunds",
            d.base,
            id_of(&ids, "00")
        ))
        .json(&serde_json::json!({"amount": "5.00", "reason": "one item returned"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let p = d
        .wait_final(id_of(&ids, "00"), Duration::from_secs(20))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut p = p;
    while p["state"] != "PARTIALLY_REFUNDED" {
        assert!(std::time::Instant::now() < deadline, "refund not done: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        p = d.get(id_of(&ids, "00")).await;
    }

    let rows = sandbox_statement(&d);
    assert!(rows.iter().any(|r| r.kind == "REFUND"), "{rows:?}");
    let name = statement_name();
    let dir = d.dir.path().to_path_buf();

    // 1. The sandbox's own record: everything matches, in either amount unit.
    for decimal in [true, false] {
        let f = write_statement(&dir, &name, &rows, decimal, true);
        let (code, rep, err) = reconcile(&d, &f, false);
        assert_eq!(code, 0, "{rep:#}\n{err}");
        assert_eq!(findings_of(&rep, "matched").len(), rows.len(), "{rep:#}");
        let unit = &rep["units"][0];
        assert_eq!(unit["currency"], "CNY");
        assert_eq!(
            unit["unit"],
            if decimal { "decimal" } else { "minor_units" },
            "{unit}"
        );
    }
    // The table says so too.
    let f = write_statement(&dir, &name, &rows, true, true);
    let t = posd(&d, &["reconcile", f.to_str().unwrap()]);
    assert_eq!(t.code, 0, "{}{}", t.stdout, t.stderr);
    assert!(t.stdout.contains("all matched"), "{}", t.stdout);

    // 2. A missing row: the 79 sale's PAYMENT is not in the file.
    let missing: Vec<Row> = rows
        .iter()
        .filter(|r| r.request_id != id_of(&ids, "79"))
        .cloned()
        .collect();
    let (code, rep, _) = reconcile(
        &d,
        &write_statement(&dir, &name, &missing, true, true),
        false,
    );
    assert_eq!(code, 1, "{rep:#}");
    let m = findings_of(&rep, "missing_from_statement");
    assert_eq!(m.len(), 1, "{rep:#}");
    assert_eq!(m[0]["payment_request_id"], id_of(&ids, "79"));

    // 3. An amount off by one minor unit (row 82).
    let mut off = rows.clone();
    off.iter_mut()
        .find(|r| r.request_id == id_of(&ids, "82") && r.kind == "PAYMENT")
        .unwrap()
        .minor += 1;
    let (code, rep, _) = reconcile(&d, &write_statement(&dir, &name, &off, true, true), false);
    assert_eq!(code, 1);
    let a = findings_of(&rep, "amount_differs");
    assert_eq!(a.len(), 1, "{rep:#}");
    assert_eq!(a[0]["payment_request_id"], id_of(&ids, "82"));
    assert_eq!(a[0]["statement_amount"], "12.35");
    assert_eq!(a[0]["posd_amount"], "12.34");

    // 4. A foreign row: a payment of this store that posd never made; a row of another store
    // is not this terminal's business.
    let mut foreign = rows.clone();
    let now = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .to_rfc3339();
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
        &d,
        &write_statement(&dir, &name, &foreign, true, true),
        false,
    );
    assert_eq!(code, 1);
    let u = findings_of(&rep, "unknown_to_posd");
    assert_eq!(u.len(), 1, "{rep:#}");
    assert_eq!(u[0]["payment_request_id"], "ECR-7-000123");
    assert_eq!(rep["out_of_scope"], 1);

    // 5. The critical one: the gateway shows a charge for the payment posd cancelled (83).
    let cancelled = id_of(&ids, "83");
    assert_eq!(d.get(cancelled).await["state"], "CANCELLED");
    let mut extra = rows.clone();
    extra.push(Row {
        store: "S01".into(),
        transaction_id: "2026GW-83-CHARGE".into(),
        original_id: String::new(),
        request_id: cancelled.to_string(),
        kind: "PAYMENT",
        time: now.clone(),
        minor: 1234,
        currency: "CNY".into(),
    });
    // First truncated: refused with its line, and nothing changes.
    let truncated = write_statement(&dir, &name, &extra, true, false);
    let (code, _, err) = reconcile(&d, &truncated, true);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line") && err.contains("truncated"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(d.get(cancelled).await["state"], "CANCELLED");
    assert_eq!(reversals_written(&d, cancelled), (0, 0));
    // A bad amount is refused the same way, naming its line.
    let bad = write_statement(&dir, &name, &extra, true, true);
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace(",12.34,CNY", ",12.3.4,CNY");
    std::fs::write(&bad, text).unwrap();
    let (code, _, err) = reconcile(&d, &bad, false);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 2:"), "{err}");

    // Whole: critical, and the payment needs attention with the statement as its reason.
    let whole = write_statement(&dir, &name, &extra, true, true);
    let (code, rep, err) = reconcile(&d, &whole, false);
    assert_eq!(code, 1, "{err}");
    let c = findings_of(&rep, "charged_not_at_posd");
    assert_eq!(c.len(), 1, "{rep:#}");
    assert_eq!(c[0]["critical"], true);
    assert_eq!(c[0]["payment_request_id"], cancelled);
    assert_eq!(c[0]["posd_state"], "NEEDS_ATTENTION");
    let p = d.get(cancelled).await;
    assert_eq!(p["state"], "NEEDS_ATTENTION", "{p}");
    let reason = p["attention_reason"].as_str().unwrap();
    assert!(reason.contains(&name), "{reason}");
    assert_eq!(
        reversals_written(&d, cancelled),
        (0, 0),
        "no refund without --apply"
    );
    // The same file again changes nothing: no second move, no new journal event.
    let events_before = p["events"].as_array().unwrap().len();
    let (code, again, _) = reconcile(&d, &whole, false);
    assert_eq!(code, 1);
    assert_eq!(findings_of(&again, "charged_not_at_posd").len(), 1);
    assert_eq!(
        d.get(cancelled).await["events"].as_array().unwrap().len(),
        events_before,
        "a second run wrote nothing"
    );
    // The rest of the file still matches.
    assert_eq!(findings_of(&rep, "matched").len(), rows.len());

    // --apply queues exactly one full refund through the queue; a second run queues none.
    let (code, rep, err) = reconcile(&d, &whole, true);
    assert_eq!(code, 1, "{err}");
    let c = findings_of(&rep, "charged_not_at_posd");
    assert!(
        c[0]["done"].as_str().unwrap_or("").contains("full refund"),
        "{rep:#}"
    );
    assert_eq!(reversals_written(&d, cancelled), (1, 1));
    let (kind, amount, state): (String, i64, String) = db(&d)
        .query_row(
            "SELECT r.kind, r.amount_minor, q.kind FROM refunds r \
             JOIN reversal_queue q ON q.refund_request_id = r.refund_request_id \
             WHERE r.payment_request_id = ?1",
            [cancelled],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), amount, state.as_str()),
        ("REVERSAL", 1234, "REFUND")
    );
    let (code, _, err) = reconcile(&d, &whole, true);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        reversals_written(&d, cancelled),
        (1, 1),
        "the second run queued nothing"
    );
    // The journal shows the move with the statement as cause.
    let p = d.get(cancelled).await;
    let events = p["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["to"] == "NEEDS_ATTENTION"
                && e["cause"].as_str().unwrap().contains("statement")),
        "{p}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_needs_attention_and_a_gateway_that_agrees() {
    let mut d = TestDaemon::new("[sandbox]\ncancel_outage = \"60s\"\n");
    d.start(None).await;
    let paid = d.pay(&code("56"), "12.34").await;
    let failed = d.pay(&code("80"), "8.00").await;
    assert_eq!(
        d.wait_final(&paid, Duration::from_secs(20)).await["state"],
        "SUCCEEDED"
    );
    assert_eq!(
        d.wait_final(&failed, Duration::from_secs(20)).await["state"],
        "FAILED"
    );

    // Usage errors: an outcome that is not one, no reason.
    let r = posd(&d, &["resolve", &paid, "--as", "PAYING", "--reason", "x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = posd(
        &d,
        &["resolve", &paid, "--as", "SUCCEEDED", "--reason", "  "],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    // Refused outside NEEDS_ATTENTION.
    let r = posd(
        &d,
        &["resolve", &paid, "--as", "SUCCEEDED", "--reason", "checked"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("only a payment in NEEDS_ATTENTION"),
        "{}",
        r.stderr
    );

    // Put both in NEEDS_ATTENTION the way the back office meets it: the statement shows the
    // failed one charged (it was not: the gateway will say so).
    let dir = d.dir.path().to_path_buf();
    let name = statement_name();
    let mut rows = sandbox_statement(&d);
    let now = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .to_rfc3339();
    rows.push(Row {
        store: "S01".into(),
        transaction_id: "GW-X".into(),
        original_id: String::new(),
        request_id: failed.clone(),
        kind: "PAYMENT",
        time: now,
        minor: 800,
        currency: "CNY".into(),
    });
    let (code, _, err) = reconcile(&d, &write_statement(&dir, &name, &rows, true, true), false);
    assert_eq!(code, 1, "{err}");
    assert_eq!(d.get(&failed).await["state"], "NEEDS_ATTENTION");

    // The gateway says it failed: SUCCEEDED or REFUNDED are refused, saying so.
    for outcome in ["SUCCEEDED", "REFUNDED", "CANCELLED"] {
        let r = posd(
            &d,
            &["resolve", &failed, "--as", outcome, "--reason", "portal"],
        );
        assert_eq!(r.code, 1, "{outcome}: {}", r.stdout);
        assert!(
            r.stderr.contains("the gateway says the payment failed"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("resolve it as FAILED"), "{}", r.stderr);
        assert_eq!(d.get(&failed).await["state"], "NEEDS_ATTENTION");
    }
    // What the gateway says is accepted, with the reason in the journal.
    let r = posd(
        &d,
        &[
            "resolve",
            &failed,
            "--as",
            "FAILED",
            "--reason",
            "portal shows no charge; statement row was a test",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(p["state"], "FAILED");
    let last = p["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["from"], "NEEDS_ATTENTION");
    assert_eq!(last["to"], "FAILED");
    let cause = last["cause"].as_str().unwrap();
    assert!(cause.contains("portal shows no charge"), "{cause}");
    assert!(
        cause.contains("the gateway says the payment failed"),
        "{cause}"
    );
    // Once resolved it is final again: a second resolve is refused.
    let r = posd(
        &d,
        &["resolve", &failed, "--as", "FAILED", "--reason", "again"],
    );
    assert_eq!(r.code, 1);

    // Over the API: the same checks and answers.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/payments/{paid}/resolve", d.base))
        .json(&serde_json::json!({"as": "SUCCEEDED", "reason": "checked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .post(format!("{}/v1/payments/{paid}/resolve", d.base))
        .json(&serde_json::json!({"as": "NOPE", "reason": "checked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_days_statement_goes_through_the_api_and_a_stopped_daemon_is_reconciled_directly() {
    let mut d = TestDaemon::new("");
    d.start(None).await;
    let id = d.pay(&code("56"), "12.34").await;
    assert_eq!(
        d.wait_final(&id, Duration::from_secs(20)).await["state"],
        "SUCCEEDED"
    );
    let mut rows = sandbox_statement(&d);
    assert_eq!(rows.len(), 1);
    // A merchant's whole day: thousands of rows of its other stores (far beyond the API's
    // 16 KiB body limit for other routes).
    let other = Row {
        store: "S02".into(),
        ..rows[0].clone()
    };
    for i in 0..3000 {
        rows.push(Row {
            request_id: format!("S02-ORDER-{i:06}"),
            ..other.clone()
        });
    }
    let f = write_statement(d.dir.path(), &statement_name(), &rows, true, true);
    assert!(std::fs::metadata(&f).unwrap().len() > 300_000);
    let (code, rep, err) = reconcile(&d, &f, false);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("directly"), "went through the daemon: {err}");
    assert_eq!(rep["out_of_scope"], 3000);
    assert_eq!(findings_of(&rep, "matched").len(), 1);

    // With the daemon stopped the command works on the database itself, with the same answer.
    d.kill();
    let (code, rep2, err) = reconcile(&d, &f, false);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("directly"), "{err}");
    assert_eq!(rep2["findings"], rep["findings"]);
}
