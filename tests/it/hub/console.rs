//! The hub's estate console in a real browser: `tests/browser/hub_console.mjs` drives
//! Debian's headless Chromium through playwright-core against a real `posd hub run` on
//! PostgreSQL with a terminal `posd run` behind it (log in, the terminal's sale appears with
//! its order ref `<script>` shown as text, the terminals page with a disabled one, a
//! statement upload moved to NEEDS_ATTENTION and applied into the hub's queue, that refund
//! abandoned with a reason shown as text, the journal download, posts without cookie or CSRF
//! token refused). Under `CI=true` a missing browser, Node or `npm ci` fails the test.
//! Beside it, `posd hub queue` on the hub's record: abandon refused without a reason, then
//! recorded with it (item stopped, refund failed, payment to NEEDS_ATTENTION), and neither
//! abandon nor replay accepted again.

use std::time::Duration;

use super::super::reconcile_console::{browser_dir, chromium, missing};
use super::harness::{register, terminal, TestHub, Upstream};
use super::pg::TestDb;

const TOKEN: &str = "hub-console-test-token-91c2";

async fn console_hub(db: &TestDb, up: &Upstream) -> TestHub {
    register(db, "T_A", "terminal_a").await;
    register(db, "T_B", "terminal_b").await;
    posd::hub::registry::set_enabled(&db.pool().await, "T_B", false)
        .await
        .unwrap();
    let hub = TestHub::new(db, &up.base_url(), "", "");
    let config = std::fs::read_to_string(&hub.config).unwrap();
    let config = config.replacen("[api]\n", &format!("[api]\ntoken = \"{TOKEN}\"\n"), 1);
    std::fs::write(&hub.config, config).unwrap();
    hub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_console_works_in_a_real_browser() {
    if let Some(what) = missing() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "the browser test needs {what}; .ci/run installs it");
        eprintln!("skipping the hub console browser test: it needs {what}");
        return;
    }
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(3)).await;
    let mut hub = console_hub(&db, &up).await;
    hub.start(None).await;
    let mut t = terminal(&hub.base, "T_A", "terminal_a", "");
    t.start(None).await;
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("node")
            .arg(browser_dir().join("hub_console.mjs"))
            .env("HUB_BASE", &hub.api)
            .env("TERMINAL_BASE", &t.base)
            .env("POSD_TOKEN", TOKEN)
            .env("POSD_CHROMIUM", chromium().unwrap())
            .current_dir(browser_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finished within 4 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hub console browser test failed:\n{stdout}\n{stderr}\n--- hub log ---\n{}",
        hub.log()
    );
    for step in [
        "ok - the order ref shows as text",
        "ok - a form post without the CSRF token is refused",
        "ok - a form post without the cookie is refused",
        "ok - a disabled terminal is listed as disabled",
        "ok - apply queues the full refund in the hub queue",
        "ok - a queue item is abandoned with a reason",
        "ok - the reason was not rendered as markup",
    ] {
        assert!(stdout.contains(step), "missing {step:?}:\n{stdout}");
    }
    t.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoning_a_hub_queue_item_needs_a_reason_and_hands_the_payment_to_a_human() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(3)).await;
    let mut hub = console_hub(&db, &up).await;
    hub.start(None).await;
    let mut t = terminal(&hub.base, "T_A", "terminal_a", "");
    t.start(None).await;
    // A declined sale, then a statement that shows it charged: `--apply` (hub stopped, so
    // nothing sends it) leaves its full refund pending in the hub's queue.
    let id = t.pay(&super::harness::code("80"), "12.34").await;
    t.wait_final(&id, Duration::from_secs(30)).await;
    super::harness::wait_hub_state(&db, &id, "FAILED", Duration::from_secs(20)).await;
    t.kill();
    hub.kill();
    let now = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .to_rfc3339();
    let row = super::super::reconcile::Row {
        store: "S01".into(),
        transaction_id: "GW-80-CHARGE".into(),
        original_id: String::new(),
        request_id: id.clone(),
        kind: "PAYMENT",
        time: now,
        minor: 1234,
        currency: "CNY".into(),
    };
    let file = super::super::reconcile::write_statement(
        hub.dir.path(),
        &super::super::reconcile::statement_name(),
        &[row],
        true,
        true,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posd"))
        .args(["hub", "reconcile", "--apply"])
        .arg(&file)
        .arg("--config")
        .arg(&hub.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let item = db
        .count(&format!(
            "SELECT coalesce(max(id), 0) FROM hub_queue WHERE payment_request_id = '{id}' \
             AND kind = 'refund' AND status = 'PENDING'"
        ))
        .await;
    assert!(item > 0, "no pending refund for {id}");
    let posd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_posd"))
            .args(["hub", "queue"])
            .args(args)
            .arg("--config")
            .arg(&hub.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = posd(&["list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");
    let item_s = item.to_string();
    // No reason: refused, nothing changes.
    let (code, _, err) = posd(&["abandon", &item_s, "--reason", "  "]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("say why"), "{err}");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hub_queue WHERE id = {item} AND status = 'PENDING'"
        ))
        .await,
        1
    );
    // With a reason: the item stops, the payment needs attention with the reason.
    let (code, out, err) = posd(&[
        "abandon",
        &item_s,
        "--reason",
        "reversed by hand in the portal",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hub_queue WHERE id = {item} AND status = 'ABANDONED'"
        ))
        .await,
        1
    );
    let pool = db.pool().await;
    let c = pool.get().await.unwrap();
    let r = c
        .query_one(
            "SELECT state, attention_reason FROM hub_payments WHERE payment_request_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (state, reason): (String, String) = (r.get(0), r.get(1));
    assert_eq!(state, "NEEDS_ATTENTION");
    assert!(
        reason.contains("reversed by hand in the portal"),
        "{reason}"
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hub_refunds WHERE payment_request_id = '{id}' \
             AND state = 'FAILED' AND result_code = 'ABANDONED'"
        ))
        .await,
        1,
        "the abandoned refund is failed, not left open"
    );
    // A second abandon is refused: it is no longer pending.
    let (code, _, err) = posd(&["abandon", &item_s, "--reason", "again"]);
    assert_eq!(code, 1);
    assert!(err.contains("ABANDONED"), "{err}");
    // Replaying it is refused too.
    let (code, _, err) = posd(&["replay", &item_s]);
    assert_eq!(code, 1);
    assert!(err.contains("not pending"), "{err}");
}
