//! A mainland cancel that reversed a charge (`alipay.trade.cancel` answering `action=refund`)
//! through the engine, the real `CnClient` and the sandbox: from the payment's own task and
//! from the reversal queue alike, the payment ends REFUNDED with a confirmed full reversal
//! refund in the store, the reconciliation journal and the slip — never CANCELLED. And a
//! refund queued before a restart is queried by a fresh process from what the store holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::machine::{Inquiry, RefundKind, State};
use posd::domain::money::Amount;
use posd::domain::slip::SlipKind;
use posd::engine::clock::SystemClock;
use posd::engine::worker::{QueueSettings, Replayer};
use posd::engine::{Engine, EngineSettings, SaleRequest};
use posd::gateway::alipay_cn::{CnClient, CnSettings};
use posd::gateway::sandbox::{Sandbox, SandboxHandle, SandboxSettings};
use posd::gateway::{Answer, Gateway, PayOrder, RefundOrder, Reply};
use posd::store::payments::{self, RefundState};
use posd::store::{journal, print_journal, Store};

use crate::support;

const DEADLINE: Duration = Duration::from_millis(300);

async fn sandbox() -> (tempfile::TempDir, SandboxHandle) {
    let dir = tempfile::tempdir().unwrap();
    let settings = SandboxSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("sandbox.sqlite3"),
        support::gateway_key(),
        support::merchant_public(),
    );
    (dir, Sandbox::start(settings).await.unwrap())
}

fn client(sandbox: &SandboxHandle) -> CnClient {
    CnClient::new(CnSettings {
        base_url: format!("{}/gateway.do", sandbox.base_url()),
        app_id: "9021000000000001".into(),
        merchant_key: support::merchant_key(),
        alipay_key: support::gateway_public(),
        notify_url: None,
        app_auth_token: None,
        store_id: None,
        terminal_id: None,
        trade_timeout: "5m".into(),
        insecure_http: true,
        connect_timeout: Duration::from_secs(1),
        pay_timeout: DEADLINE,
        inquiry_timeout: DEADLINE,
        cancel_timeout: DEADLINE,
    })
    .unwrap()
}

/// The real client, except that its cancels go unanswered while `silent` is set, and its
/// refunds reach the gateway but their answers are lost while `lose_refunds` is set.
struct Flaky {
    inner: CnClient,
    silent: AtomicBool,
    lose_refunds: AtomicBool,
}

#[async_trait::async_trait]
impl Gateway for Flaky {
    async fn pay(&self, order: &PayOrder) -> Reply<Answer> {
        self.inner.pay(order).await
    }
    async fn inquiry_payment(&self, id: &str) -> Reply<Inquiry> {
        Gateway::inquiry_payment(&self.inner, id).await
    }
    async fn cancel(&self, id: &str) -> Reply<Answer> {
        if self.silent.load(Ordering::SeqCst) {
            return Reply::<Answer>::unknown("no answer (test)");
        }
        Gateway::cancel(&self.inner, id).await
    }
    async fn refund(&self, order: &RefundOrder) -> Reply<Answer> {
        let reply = Gateway::refund(&self.inner, order).await;
        if self.lose_refunds.load(Ordering::SeqCst) {
            return Reply::<Answer>::unknown("answer lost (test)");
        }
        reply
    }
    async fn inquiry_refund(&self, refund: &RefundOrder) -> Reply<Answer> {
        Gateway::inquiry_refund(&self.inner, refund).await
    }
}

fn config() -> posd::config::Config {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.toml")).expect("config.toml");
    posd::config::Config::parse(&text, &root.join("config.toml"), root)
        .expect("the example config parses")
}

/// Inquiries far apart (the abort lands first), cancels resent within a short window.
fn settings() -> EngineSettings {
    let mut s = EngineSettings::from_config(&config());
    s.pay_timeout = DEADLINE;
    s.inquiry_timeout = DEADLINE;
    s.cancel_timeout = DEADLINE;
    s.inquiry_interval = Duration::from_secs(30);
    s.cancel_retry_window = Duration::from_millis(200);
    s.cancel_retry_min = Duration::from_millis(10);
    s.cancel_retry_max = Duration::from_millis(20);
    s
}

/// A CNY 12.34 sale on a code of row 84: the pay goes unanswered but the trade is charged.
async fn charged_sale_aborted(engine: &Engine) -> String {
    let code = PaymentCode::parse("281234567890123484", &CodeRules::default()).unwrap();
    let rec = engine
        .start_sale(SaleRequest {
            amount: Amount::parse("12.34", support::cny()).unwrap(),
            order_ref: Some("A-84".into()),
            code: Some(code),
        })
        .await
        .unwrap();
    let id = rec.payment_request_id.clone();
    // The cashier gives up while the pay is unanswered: the terminal owes a cancel.
    let aborted = engine.abort(&id).await.unwrap();
    assert_eq!(aborted.state, State::Cancelling);
    id
}

/// What the store, the journal and the slip say about a payment reversed by its cancel.
fn assert_recorded_as_refund(store: &Store, id: &str) {
    let id = id.to_string();
    store
        .call_blocking(move |c| {
            let p = payments::get(c, &id)?.unwrap();
            assert_eq!(p.state, State::Refunded);
            assert_eq!(p.refunded.minor(), 1234, "the whole amount is refunded");
            assert!(p.payment_id.is_some(), "the trade_no is kept");
            let refunds = payments::refunds_of(c, &id)?;
            assert_eq!(refunds.len(), 1, "{refunds:?}");
            let r = &refunds[0];
            assert_eq!(r.kind, RefundKind::Reversal);
            assert_eq!(r.state, RefundState::Succeeded);
            assert_eq!(r.amount.minor(), 1234);
            assert_eq!(
                p.active_refund_id.as_deref(),
                Some(r.refund_request_id.as_str())
            );
            let events = payments::events(c, &id)?;
            let last = events.last().unwrap();
            assert_eq!(last.to, State::Refunded);
            assert!(
                events.iter().all(|e| e.to != State::Cancelled),
                "{events:?}"
            );
            // The reconciliation journal: the sale REFUNDED, and its reversal refund.
            let rows = journal::for_statement(c, 0, i64::MAX, std::slice::from_ref(&id), &[])?;
            let sale = rows
                .iter()
                .find(|x| x.row.record_type == "PAYMENT")
                .unwrap();
            assert_eq!(sale.row.state, "REFUNDED");
            assert_eq!(sale.open_reversal, None, "nothing left owed");
            let refund = journal::refund(c, &r.refund_request_id)?.unwrap();
            assert_eq!(
                (
                    refund.kind.as_str(),
                    refund.state.as_str(),
                    refund.amount.minor()
                ),
                ("REVERSAL", "SUCCEEDED", 1234)
            );
            // The slip is a refund slip naming the refund.
            let slip = print_journal::latest_for_payment(c, &id)?.unwrap();
            assert_eq!(slip.data.kind, SlipKind::Refund);
            assert_eq!(slip.data.amount.minor(), 1234);
            assert_eq!(
                slip.data.refund_request_id.as_deref(),
                Some(r.refund_request_id.as_str())
            );
            Ok(())
        })
        .unwrap();
}

#[tokio::test]
async fn a_cancel_the_gateway_answers_by_refunding_a_charge_ends_refunded_from_the_task() {
    let (_dir, sandbox) = sandbox().await;
    let store = Store::open_in_memory().unwrap();
    let engine = Engine::new(store.clone(), Arc::new(client(&sandbox)), settings());
    let id = charged_sale_aborted(&engine).await;
    let v = engine
        .wait_final(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(v.payment.state, State::Refunded, "{:?}", v.events);
    assert_recorded_as_refund(&store, &id);
    assert_eq!(sandbox.counts().cancel, 1, "one cancel, answered");
    assert_eq!(
        sandbox.counts().refund,
        0,
        "the cancel itself gave the money back"
    );
    engine.shutdown(Duration::from_secs(2)).await;
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_queued_cancel_the_gateway_answers_by_refunding_a_charge_ends_refunded() {
    let (_dir, sandbox) = sandbox().await;
    let store = Store::open_in_memory().unwrap();
    let gateway = Arc::new(Flaky {
        inner: client(&sandbox),
        silent: AtomicBool::new(true),
        lose_refunds: AtomicBool::new(false),
    });
    let engine = Engine::new(store.clone(), gateway.clone(), settings());
    let id = charged_sale_aborted(&engine).await;
    // Unanswered for the whole retry window: the cancel goes to the queue.
    let v = engine
        .wait_final(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(v.payment.state, State::CancelQueued, "{:?}", v.events);
    gateway.silent.store(false, Ordering::SeqCst);
    let queue = QueueSettings {
        backoff_initial: Duration::ZERO,
        call_timeout: DEADLINE,
        inquiry_timeout: DEADLINE,
        ..QueueSettings::from_config(&config())
    };
    let replayer = Replayer::new(
        store.clone(),
        gateway.clone(),
        Arc::new(SystemClock),
        queue,
        "test",
    );
    let mut reports = Vec::new();
    for _ in 0..50 {
        reports = replayer.replay_all().await.unwrap();
        if !reports.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].outcome.as_str(), "done", "{reports:?}");
    assert_eq!(reports[0].payment_state, Some(State::Refunded));
    assert_recorded_as_refund(&store, &id);
    assert_eq!(
        sandbox.counts().refund,
        0,
        "the cancel itself gave the money back"
    );
    engine.shutdown(Duration::from_secs(2)).await;
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_refund_queued_before_a_restart_is_queried_by_a_fresh_client_from_the_store() {
    let (_sandbox_dir, sandbox) = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("posd.sqlite3");
    let gateway = Arc::new(Flaky {
        inner: client(&sandbox),
        silent: AtomicBool::new(false),
        lose_refunds: AtomicBool::new(true),
    });
    let engine = Engine::new(Store::open(&db).unwrap(), gateway.clone(), settings());
    let sale = engine
        .start_sale(SaleRequest {
            amount: Amount::parse("12.34", support::cny()).unwrap(),
            order_ref: Some("A-00".into()),
            code: Some(PaymentCode::parse("281234567890123400", &CodeRules::default()).unwrap()),
        })
        .await
        .unwrap();
    let id = sale.payment_request_id.clone();
    let paid = engine
        .wait_final(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(paid.payment.state, State::Succeeded);
    // The refund reaches the gateway, but no answer comes back for the whole retry window:
    // it is queued, the payment stays REFUNDING.
    let refunding = engine.refund(&id, None, None).await.unwrap();
    assert_eq!(refunding.state, State::Refunding);
    let rid = refunding.active_refund_id.clone().unwrap();
    let queued = |store: &Store| {
        let rid = rid.clone();
        store
            .call_blocking(move |c| Ok(payments::get_refund(c, &rid)?.unwrap().state))
            .unwrap()
    };
    for _ in 0..200 {
        if queued(engine.store()) == RefundState::Queued {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queued(engine.store()), RefundState::Queued);
    assert!(
        sandbox.counts().refund >= 1,
        "the refund reached the gateway"
    );
    engine.shutdown(Duration::from_secs(2)).await;
    drop(engine);
    // A new process: a new store handle on the same file, a new client that never sent it.
    let store = Store::open(&db).unwrap();
    let engine = Engine::new(store.clone(), Arc::new(client(&sandbox)), settings());
    let r = engine.inquire_refund(&rid).await.unwrap();
    assert_eq!(r.answer, Answer::Success, "{r:?}");
    assert_eq!(r.facts.amount.map(|a| a.minor()), Some(1234));
    assert_eq!(sandbox.counts().inquiry_refund, 1);
    // A refund the store does not hold is refused by name, and nothing is sent.
    assert!(matches!(
        engine.inquire_refund("R_NOBODY").await,
        Err(posd::engine::EngineError::NotFound(_))
    ));
    assert_eq!(sandbox.counts().inquiry_refund, 1);
    engine.shutdown(Duration::from_secs(2)).await;
    sandbox.shutdown().await;
}
