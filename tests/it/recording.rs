//! An answer the database cannot record: a write lock held by another connection past the
//! busy timeout. The payment's task keeps the answer, retries the commit, shows the cashier
//! "cannot record", raises the health flag, and finishes by itself once the lock is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::machine::State;
use posd::domain::money::Amount;
use posd::engine::{Engine, EngineSettings, SaleRequest};
use posd::gateway::{Answer, Facts, Gateway, Inquiry, PayOrder, RefundOrder, Reply};
use posd::store::Store;

use crate::support;

/// Charges every pay after `delay`; everything else goes unanswered.
struct SlowYes {
    delay: Duration,
}

#[async_trait::async_trait]
impl Gateway for SlowYes {
    async fn pay(&self, _: &PayOrder) -> Reply<Answer> {
        tokio::time::sleep(self.delay).await;
        Reply {
            answer: Answer::Success,
            facts: Facts {
                payment_id: Some("G1".into()),
                result_code: Some("SUCCESS".into()),
                ..Facts::default()
            },
        }
    }
    async fn inquiry_payment(&self, _: &str) -> Reply<Inquiry> {
        Reply::<Inquiry>::unknown("test")
    }
    async fn cancel(&self, _: &str) -> Reply<Answer> {
        Reply::<Answer>::unknown("test")
    }
    async fn refund(&self, _: &RefundOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown("test")
    }
    async fn inquiry_refund(&self, _: &RefundOrder) -> Reply<Answer> {
        Reply::<Answer>::unknown("test")
    }
}

fn settings() -> EngineSettings {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.toml")).expect("config.toml");
    let cfg = posd::config::Config::parse(&text, &root.join("config.toml"), root)
        .expect("the example config parses");
    let mut s = EngineSettings::from_config(&cfg);
    s.pay_timeout = Duration::from_secs(2);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_busy_timeout_delays_the_record_and_the_payment_finishes_by_itself(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posd.sqlite3");
    let store = Store::open(&path).unwrap();
    // A short busy timeout so the lock outlasts it many times over.
    store
        .call_blocking(|c| {
            c.busy_timeout(Duration::from_millis(50))?;
            Ok(())
        })
        .unwrap();
    let engine = Engine::new(
        store,
        Arc::new(SlowYes {
            delay: Duration::from_millis(300),
        }),
        settings(),
    );
    let rec = engine
        .start_sale(SaleRequest {
            amount: Amount::parse("12.34", support::cny()).unwrap(),
            order_ref: None,
            code: Some(PaymentCode::parse(support::CODE, &CodeRules::default()).unwrap()),
        })
        .await
        .unwrap();
    let id = rec.payment_request_id.clone();
    // Another process takes the write lock before the answer comes, and keeps it 2 s.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let locker = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        c.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    // While locked: the answer (paid) waits; the cashier sees "cannot record", not a state.
    let started = Instant::now();
    let v = loop {
        let v = engine.view(&id).await.unwrap();
        if v.recording.is_some() {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "no cannot-record condition"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(v.payment.state, State::Paying);
    assert!(v.recording.unwrap().error.contains("locked"));
    let json = posd::api::wire::PaymentJson::new(&engine.view(&id).await.unwrap(), &[]);
    assert!(json
        .cannot_record
        .as_deref()
        .is_some_and(|t| t.contains("do not hand over goods")));
    let fault = engine.recording_fault().expect("the health flag is up");
    assert_eq!(fault.payments, vec![id.clone()]);
    locker.join().unwrap();
    // The lock is gone: the payment finishes by itself.
    let v = loop {
        let v = engine
            .wait_final(&id, Duration::from_secs(10))
            .await
            .unwrap();
        if v.payment.state.is_final() || started.elapsed() > Duration::from_secs(15) {
            break v;
        }
    };
    assert_eq!(v.payment.state, State::Succeeded);
    assert!(v.recording.is_none());
    assert!(engine.recording_fault().is_none());
    assert!(engine.shutdown(Duration::from_secs(5)).await);
}
