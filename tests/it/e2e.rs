//! End to end through the real `posd` binary and its embedded sandbox: every scenario row,
//! SIGKILL at each point where the money path commits or sends, and 50 sales at once — each
//! of them in both dialects the sandbox speaks (Alipay+ AMS and the mainland `alipay.trade.*`).

use std::time::Duration;

use serde_json::Value;

use super::daemon::TestDaemon;

/// The gateway dialect a test runs against: the same rows and crash points hold for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Alipay+ AMS.
    Ams,
    /// The mainland `alipay.trade.*` API.
    AlipayCn,
}

impl Dialect {
    /// A daemon on the embedded sandbox speaking this dialect, with `extra` config.
    fn daemon(self, extra: &str) -> TestDaemon {
        match self {
            Dialect::Ams => TestDaemon::new(extra),
            Dialect::AlipayCn => TestDaemon::new(&format!(
                "[gateway]\nkind = \"sandbox\"\ndialect = \"alipay_cn\"\n{extra}"
            )),
        }
    }

    /// The result code row 80 ends with.
    fn balance_code(self) -> &'static str {
        match self {
            Dialect::Ams => "USER_BALANCE_NOT_ENOUGH",
            Dialect::AlipayCn => "ACQ.BUYER_BALANCE_NOT_ENOUGH",
        }
    }
}

/// One `#[tokio::test]` per dialect for a test body taking the dialect: `<name>::ams` and
/// `<name>::alipay_cn`.
macro_rules! in_both_dialects {
    ($(#[$doc:meta])* $name:ident => $body:expr) => {
        $(#[$doc])*
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ams() {
                let body = $body;
                body(Dialect::Ams).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn alipay_cn() {
                let body = $body;
                body(Dialect::AlipayCn).await
            }
        }
    };
}

/// A code ending in the two given digits.
fn code(last2: &str) -> String {
    format!("2812345678901234{last2}")
}

const ROWS: &[(&str, &str)] = &[
    ("00", "SUCCEEDED"),
    ("79", "SUCCEEDED"),
    ("80", "FAILED"),
    ("81", "FAILED"),
    ("82", "SUCCEEDED"),
    ("83", "CANCELLED"),
    ("84", "SUCCEEDED"),
    ("85", "CANCELLED"),
    ("86", "CANCEL_QUEUED"),
    ("87", "REFUNDED"),
    ("88", "SUCCEEDED"),
    ("89", "FAILED"),
];

/// The terminal's word and the gateway's own record must agree: never charged at the gateway
/// while the terminal says "not charged" without a confirmed or queued reversal.
fn assert_consistent(d: &TestDaemon, p: &Value) {
    let id = p["payment_request_id"].as_str().unwrap();
    let state = p["state"].as_str().unwrap();
    let amount_minor =
        (p["amount"].as_str().unwrap().parse::<f64>().unwrap() * 100.0).round() as i64;
    let gw = d.sandbox_record(id);
    let (gw_status, gw_refunded) = gw.clone().unwrap_or(("NONE".into(), 0));
    let charged = gw_status == "SUCCESS" && gw_refunded < amount_minor;
    match state {
        "SUCCEEDED" => assert!(charged, "{id}: SUCCEEDED but the gateway has {gw:?}"),
        "FAILED" => assert!(!charged, "{id}: FAILED but the gateway charged ({gw:?})"),
        "CANCELLED" => assert!(
            gw_status == "CANCELLED" || gw_status == "NONE" || gw_status == "NOT_ARRIVED",
            "{id}: CANCELLED but the gateway has {gw:?}"
        ),
        "REFUNDED" => assert_eq!(
            gw_refunded, amount_minor,
            "{id}: REFUNDED but the gateway refunded {gw_refunded}"
        ),
        "CANCEL_QUEUED" => assert_eq!(
            d.queued(id),
            1,
            "{id}: CANCEL_QUEUED without a queued reversal"
        ),
        other => panic!("{id}: unexpected final state {other}: {p}"),
    }
}

in_both_dialects!(every_sandbox_row_reaches_its_final_state => every_row);

async fn every_row(dialect: Dialect) {
    let mut d = dialect.daemon("[sandbox]\ncancel_outage = \"60s\"\n");
    d.start(None).await;
    let mut ids = Vec::new();
    for (last2, _) in ROWS {
        ids.push(d.pay(&code(last2), "12.34").await);
    }
    for ((last2, want), id) in ROWS.iter().zip(&ids) {
        let p = d.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(p["state"], *want, "row {last2}: {p}");
        assert_eq!(
            p["code_masked"],
            format!("2812**********34{last2}"),
            "only the masked code"
        );
        assert_consistent(&d, &p);
    }
    // Row specifics from the journal.
    let p80 = d.get(&ids[2]).await;
    assert_eq!(p80["result_code"], dialect.balance_code());
    let p88 = d.get(&ids[10]).await;
    let causes: Vec<&str> = p88["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cause"].as_str().unwrap())
        .collect();
    assert!(
        causes.iter().any(|c| c.contains("signature")),
        "88 found by inquiry after a bad signature: {causes:?}"
    );
    let p87 = d.get(&ids[9]).await;
    assert_eq!(p87["refunds"][0]["state"], "SUCCEEDED");
    assert_eq!(p87["refunded_amount"], "12.34");
    // Slips: SALE for each success, CANCEL for each confirmed cancel, REFUND for 87, each
    // written with its final state and printed by the file printer.
    let c = rusqlite::Connection::open(d.state().join("posd.sqlite3")).unwrap();
    let kinds: Vec<(String, i64)> = c
        .prepare("SELECT kind, count(*) FROM print_slips GROUP BY kind ORDER BY kind")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        kinds,
        vec![
            ("CANCEL".into(), 2),
            ("REFUND".into(), 1),
            ("SALE".into(), 5)
        ]
    );
    let receipts = d.dir.path().join("var/receipts");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let txt = std::fs::read_dir(&receipts)
            .map(|r| {
                r.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "txt")
                })
                .count()
            })
            .unwrap_or(0);
        if txt == 8 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{txt} slips printed of 8"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The clear code never reached the log or the database.
    let full = code("56");
    assert!(!d.log().contains(&full[..]), "clear code in the log");
    let db = std::fs::read(d.state().join("posd.sqlite3")).unwrap();
    let wal = std::fs::read(d.state().join("posd.sqlite3-wal")).unwrap_or_default();
    for c in ROWS.iter().map(|(l, _)| code(l)) {
        assert!(
            !contains(&db, c.as_bytes()) && !contains(&wal, c.as_bytes()),
            "clear code {c} stored"
        );
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let mut d = TestDaemon::new("");
    d.start(None).await;
    for (body, code_) in [
        (
            serde_json::json!({"amount": "12.345", "code": code("00")}),
            "invalid_amount",
        ),
        (
            serde_json::json!({"amount": "-1", "code": code("00")}),
            "invalid_amount",
        ),
        (serde_json::json!({"amount": "abc"}), "invalid_amount"),
        (
            serde_json::json!({"amount": "1.00", "currency": "XYZ"}),
            "invalid_currency",
        ),
        (
            serde_json::json!({"amount": "1.00", "code": "12345"}),
            "invalid_code",
        ),
        (
            serde_json::json!({"amount": "1.00", "code": "2812345678901234AB"}),
            "invalid_code",
        ),
        (
            serde_json::json!({"amount": "1.00", "surprise": 1}),
            "invalid_json",
        ),
    ] {
        let (status, b) = d.create(body.clone()).await;
        assert_eq!(status, 400, "{body} -> {b}");
        assert_eq!(b["error"]["code"], code_, "{body} -> {b}");
        assert!(!b["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/payments/NOPE", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/payments", d.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Nothing was written: the sequence was never taken.
    let c = rusqlite::Connection::open(d.state().join("posd.sqlite3")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM payments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    // A second attempt for an order with an open payment is a 409 naming the first one.
    let (s1, p1) = d
        .create(serde_json::json!({"amount": "1.00", "order_ref": "A-9", "code": code("84")}))
        .await;
    assert_eq!(s1, 202);
    let (s2, p2) = d
        .create(serde_json::json!({"amount": "1.00", "order_ref": "A-9", "code": code("00")}))
        .await;
    assert_eq!(s2, 409, "{p2}");
    assert!(p2["error"]["message"]
        .as_str()
        .unwrap()
        .contains(p1["payment_request_id"].as_str().unwrap()));
}

/// Kills the daemon with SIGKILL at `failpoint` during a sale with the given code, restarts
/// it, and checks the payment ends where the gateway's own record says it must.
async fn crash_and_resume(dialect: Dialect, failpoint: &str, last2: &str, want: &[&str]) {
    crash_and_resume_with(dialect, failpoint, last2, want, "").await
}

/// [`crash_and_resume`] with `[flow]` lines added to the short timings.
async fn crash_and_resume_with(
    dialect: Dialect,
    failpoint: &str,
    last2: &str,
    want: &[&str],
    flow: &str,
) {
    let keys: Vec<&str> = flow
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    let base: Vec<&str> = super::daemon::FAST_FLOW
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k} "))))
        .collect();
    let mut d = dialect.daemon(&format!(
        "{}\n{flow}\n[sandbox]\ncancel_outage = \"60s\"\n",
        base.join("\n")
    ));
    d.start(Some(failpoint)).await;
    // The request may die with the daemon (intent_committed fires before the answer).
    let id = {
        let client = reqwest::Client::new();
        let r = client
            .post(format!("{}/v1/payments", d.base))
            .json(&serde_json::json!({"amount": "12.34", "code": code(last2)}))
            .send()
            .await;
        match r {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["payment_request_id"].as_str().map(str::to_string)),
            Err(_) => None,
        }
    };
    let status = d.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "{failpoint}: the daemon should have been killed"
    );
    assert!(
        d.log().contains("failpoint reached"),
        "{failpoint} never fired:\n{}",
        d.log()
    );
    d.start(None).await;
    let id = match id {
        Some(id) => id,
        None => {
            let c = rusqlite::Connection::open(d.state().join("posd.sqlite3")).unwrap();
            c.query_row("SELECT payment_request_id FROM payments", [], |r| r.get(0))
                .unwrap()
        }
    };
    let p = d.wait_final(&id, Duration::from_secs(30)).await;
    assert!(
        want.contains(&p["state"].as_str().unwrap()),
        "{failpoint}: ended {p}\n{}",
        d.log()
    );
    assert_consistent(&d, &p);
    assert!(
        d.sandbox_payments() <= 1,
        "{failpoint}: more than one pay id reached the gateway"
    );
    let c = rusqlite::Connection::open(d.state().join("posd.sqlite3")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM payments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "{failpoint}: one attempt, one payment");
}

in_both_dialects!(
/// The pay never left: the gateway never heard of it. Only once the pay's expiry has passed
/// can "no such payment" mean "not charged"; the cancel is resent past it, then one last
/// inquiry finds nothing.
crash_after_intent_committed => |d| crash_and_resume_with(
    d,
    "intent_committed",
    "56",
    &["FAILED"],
    "payment_expiry = \"1s\"\npayment_expiry_margin = \"0s\"\ncancel_retry_window = \"4s\"",
)
);

in_both_dialects!(
/// 84: the charge succeeds but the answer never comes; the restart finds it by inquiry.
crash_while_pay_in_flight => |d| crash_and_resume(d, "pay_in_flight", "84", &["SUCCEEDED"])
);

in_both_dialects!(
crash_after_pay_answer_received => |d| crash_and_resume(d, "pay_answered", "56", &["SUCCEEDED"])
);

in_both_dialects!(
crash_at_inquiry_3 => |d| crash_and_resume(d, "inquiry_3", "83", &["CANCELLED"])
);

in_both_dialects!(
crash_after_cancel_committed => |d| crash_and_resume(d, "cancel_committed", "83", &["CANCELLED"])
);

in_both_dialects!(
/// 86: cancels go unanswered; after the restart the cancel is resent, then queued.
crash_while_cancel_in_flight => |d| crash_and_resume(d, "cancel_in_flight", "86", &["CANCEL_QUEUED"])
);

in_both_dialects!(
crash_after_queue_item_written => |d| crash_and_resume(d, "queue_written", "86", &["CANCEL_QUEUED"])
);

in_both_dialects!(fifty_sales_at_once_all_end_final_and_consistent => fifty_sales);

/// The fifty-sale runs take the machine's whole CPU: one dialect at a time, so each keeps the
/// timings the short flow settings assume.
static FIFTY_AT_ONCE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The short flow timings stretched fivefold: fifty sales at once on two shared cores must not
/// turn a slow answer into a timeout the scenario did not script (the outcome each row ends
/// with is the assertion; the timing is not).
const LOADED_FLOW: &str = r#"
[flow]
pay_timeout = "1500ms"
inquiry_interval = "100ms"
inquiry_timeout = "1000ms"
inquiry_max = 10
cancel_timeout = "1000ms"
cancel_retry_window = "2000ms"
cancel_retry_min = "100ms"
cancel_retry_max = "250ms"
queue_backoff_initial = "30s"
queue_backoff_max = "10m"
"#;

async fn fifty_sales(dialect: Dialect) {
    let _alone = FIFTY_AT_ONCE.lock().await;
    let mut d = dialect.daemon(&format!(
        "{LOADED_FLOW}[sandbox]\ncancel_outage = \"60s\"\n"
    ));
    d.start(None).await;
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let (last2, want) = ROWS[i % ROWS.len()];
        let base = d.base.clone();
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/v1/payments"))
                .json(&serde_json::json!({"amount": format!("{}.00", i + 1), "order_ref": format!("ORD-{i}"), "code": code(last2)}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body, want)
        }));
    }
    let mut started = Vec::new();
    for t in tasks {
        let (status, body, want) = t.await.unwrap();
        assert_eq!(status, 202, "{body}");
        started.push((
            body["payment_request_id"].as_str().unwrap().to_string(),
            want,
        ));
    }
    for (id, want) in &started {
        let p = d.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(p["state"], *want, "{p}");
        assert_consistent(&d, &p);
    }
    assert!(!d.log().contains("database is locked"), "{}", d.log());
}

fn posd(d: &TestDaemon, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_posd"))
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_outcomes_with_its_exit_codes() {
    let mut d = TestDaemon::new("");
    // Daemon not running: exit 3 with a message that says what to do.
    let out = posd(&d, &["pay", "--amount", "1.00", "--code", &code("00")]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("posd run"));
    d.start(None).await;
    let out = posd(
        &d,
        &["pay", "--amount", "1.00", "--code", &code("00"), "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["state"], "SUCCEEDED");
    let id = p["payment_request_id"].as_str().unwrap().to_string();
    let out = posd(&d, &["pay", "--amount", "1.00", "--code", &code("80")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a final state other than SUCCEEDED"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
    // Bad input: usage error, nothing sent.
    let out = posd(&d, &["pay", "--amount", "1.234", "--code", &code("00")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("decimals"),
        "{out:?}"
    );
    let out = posd(&d, &["pay", "--code", &code("00")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --amount is a usage error"
    );
    // status and abort of a final payment.
    let out = posd(&d, &["status", &id]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCEEDED"));
    let out = posd(&d, &["abort", &id]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refund"),
        "{out:?}"
    );
    let out = posd(&d, &["status", "NOPE"]);
    assert_eq!(out.status.code(), Some(1));
    // config check: the good config passes; a broken one names the key.
    let out = posd(&d, &["config", "check"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let broken = d.dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&d.config)
            .unwrap()
            .replace("inquiry_max = 10", "inquiry_max = 3"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posd"))
        .args(["config", "check", "--config"])
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("flow.inquiry_max"),
        "{out:?}"
    );
}

#[test]
fn keys_generate_writes_a_private_key_only_its_owner_can_read_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("keys");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_posd"))
            .args(["keys", "generate", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let public =
        posd::gateway::sign::PublicKey::load(&out_dir.join("merchant_public.pem")).unwrap();
    assert_eq!(
        printed,
        public.to_base64(),
        "the printed one-line key is the public key"
    );
    let mode = std::fs::metadata(out_dir.join("merchant_private.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    posd::gateway::sign::PrivateKey::load(&out_dir.join("merchant_private.pem")).unwrap();
    let before = std::fs::read(out_dir.join("merchant_private.pem")).unwrap();
    let again = run();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    assert_eq!(
        std::fs::read(out_dir.join("merchant_private.pem")).unwrap(),
        before
    );
}
