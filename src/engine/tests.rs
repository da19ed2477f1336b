//! Engine tests against an in-memory scripted gateway with paused tokio time: the flow's
//! timings (3 s inquiries, 5–10 s cancel resends for 60 s) are checked in virtual time.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::domain::code::CodeRules;
use crate::domain::money::Currency;
use crate::store::payments::NewPayment;

use super::fake::{
    failed, inquiry_unknown, not_found, ok, ok_with_payment_id, paid, processing, refunded,
    unknown, window_passed, Fake,
};

fn settings() -> EngineSettings {
    EngineSettings {
        terminal_id: "T0001".into(),
        timezone: Some(crate::config::Tz::named("Asia/Shanghai").unwrap()),
        description: "test".into(),
        merchant_name: "Demo Cafe".into(),
        store_name: "Demo Cafe Central".into(),
        pay_timeout: Duration::from_secs(5),
        inquiry_interval: Duration::from_secs(3),
        inquiry_timeout: Duration::from_secs(3),
        inquiry_max: 10,
        cancel_timeout: Duration::from_secs(3),
        cancel_retry_window: Duration::from_secs(60),
        cancel_retry_min: Duration::from_secs(5),
        cancel_retry_max: Duration::from_secs(10),
        queue_backoff_initial: Duration::from_secs(30),
        payment_expiry: Duration::from_secs(180),
        payment_expiry_margin: Duration::from_secs(30),
    }
}

fn engine(fake: &Fake) -> Engine {
    Engine::new(
        Store::open_in_memory().unwrap(),
        Arc::new(fake.clone()),
        settings(),
    )
}

fn sale(code: Option<&str>, order: Option<&str>) -> SaleRequest {
    SaleRequest {
        amount: Amount::parse("12.34", Currency::from_code("CNY").unwrap()).unwrap(),
        order_ref: order.map(str::to_string),
        code: code.map(|c| PaymentCode::parse(c, &CodeRules::default()).unwrap()),
    }
}

const CODE: &str = "281234567890123456";

async fn final_state(e: &Engine, id: &str) -> PaymentView {
    e.wait_final(id, Duration::from_secs(3600)).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn pay_success_is_one_call() {
    let fake = Fake::default();
    fake.0
        .lock()
        .unwrap()
        .pay
        .push_back(ok_with_payment_id("G9"));
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), Some("A-1"))).await.unwrap();
    assert_eq!(rec.state, State::Paying);
    assert_eq!(rec.code_masked.as_deref(), Some("2812**********3456"));
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    assert_eq!(v.payment.payment_id.as_deref(), Some("G9"));
    assert_eq!(fake.calls("pay").len(), 1);
    assert!(fake.calls("inquiry").is_empty());
    let states: Vec<_> = v.events.iter().map(|e| e.to).collect();
    assert_eq!(states, vec![State::Paying, State::Succeeded]);
}

#[tokio::test(start_paused = true)]
async fn declined_pay_is_failed_with_its_code() {
    let fake = Fake::default();
    fake.0
        .lock()
        .unwrap()
        .pay
        .push_back(failed("USER_BALANCE_NOT_ENOUGH"));
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Failed);
    assert_eq!(
        v.payment.result_code.as_deref(),
        Some("USER_BALANCE_NOT_ENOUGH")
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_pay_inquires_every_interval_then_cancels() {
    let fake = Fake::default();
    fake.0.lock().unwrap().cancel.push_back(ok());
    let e = engine(&fake);
    let start = Instant::now();
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Cancelled);
    let inq = fake.calls("inquiry");
    assert_eq!(inq.len(), 10, "inquiry_max inquiries");
    for (i, (t, id)) in inq.iter().enumerate() {
        assert_eq!(id, &rec.payment_request_id);
        assert_eq!(
            t.duration_since(start),
            Duration::from_secs(3 * (i as u64 + 1)),
            "inquiry {i}"
        );
    }
    let cancels = fake.calls("cancel");
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        cancels[0].0, inq[9].0,
        "cancel right after the last inquiry"
    );
    let last = &v.events[v.events.len() - 2];
    assert!(last.cause.contains("after 10 inquiries"), "{last:?}");
}

#[tokio::test(start_paused = true)]
async fn inquiry_success_ends_the_sale() {
    let fake = Fake::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.inquiry
            .extend([processing(), not_found(), inquiry_unknown(), paid()]);
    }
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    assert_eq!(v.payment.payment_id.as_deref(), Some("G1"));
    assert_eq!(fake.calls("inquiry").len(), 4);
    assert!(fake.calls("cancel").is_empty());
    assert_eq!(v.payment.inquiries, 4);
}

#[tokio::test(start_paused = true)]
async fn unanswered_cancel_is_resent_identically_for_the_window_then_queued() {
    let fake = Fake::default();
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::CancelQueued);
    let cancels = fake.calls("cancel");
    assert!(
        cancels.len() >= 6 && cancels.len() <= 13,
        "{} cancels",
        cancels.len()
    );
    let first = cancels[0].0;
    for w in cancels.windows(2) {
        let gap = w[1].0.duration_since(w[0].0);
        assert!(
            gap >= Duration::from_secs(5) && gap <= Duration::from_secs(10),
            "gap {gap:?}"
        );
        assert_eq!(w[1].1, w[0].1, "the identical request");
    }
    assert!(cancels.last().unwrap().0.duration_since(first) <= Duration::from_secs(60));
    let id = rec.payment_request_id.clone();
    let (n, payload): (i64, String) = e
        .store()
        .call(move |c| {
            Ok(c.query_row(
                "SELECT count(*), max(payload) FROM reversal_queue WHERE payment_request_id = ?1 AND kind = 'CANCEL' AND status = 'PENDING'",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(n, 1, "the owed cancel is in the queue");
    assert!(payload.contains(&rec.payment_request_id));
}

#[tokio::test(start_paused = true)]
async fn cancel_window_exceeded_becomes_a_full_refund() {
    let fake = Fake::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.cancel.push_back(window_passed());
        s.refund.extend([unknown(), refunded("RF1")]);
    }
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Refunded);
    assert_eq!(v.payment.refunded, v.payment.amount);
    let refunds = fake.calls("refund");
    assert_eq!(refunds.len(), 2);
    assert_eq!(
        refunds[0].1, refunds[1].1,
        "same refundRequestId on the resend"
    );
    assert!(refunds[0].1.starts_with('R'));
}

/// The cashier aborts before any answer carried the gateway's paymentId; the cancel comes back
/// "too late to cancel". The refund owed needs that id: the inquiries made on the refusal go
/// unanswered, so the cancel stays owed and is resent; on the next refusal an inquiry gives the
/// id and the full amount is refunded. Never a human's task.
#[tokio::test(start_paused = true)]
async fn a_closed_cancel_window_before_any_payment_id_learns_it_and_refunds() {
    let fake = Fake::default();
    {
        let mut s = fake.script();
        s.cancel.extend([window_passed(), window_passed()]);
        s.inquiry.extend([
            inquiry_unknown(),
            inquiry_unknown(),
            inquiry_unknown(),
            processing(),
        ]);
        s.refund.push_back(refunded("RF1"));
    }
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let id = rec.payment_request_id.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        fake.calls("inquiry").is_empty(),
        "aborted before any inquiry"
    );
    assert_eq!(e.abort(&id).await.unwrap().state, State::Cancelling);
    let v = final_state(&e, &id).await;
    assert_eq!(v.payment.state, State::Refunded);
    assert_eq!(v.payment.payment_id.as_deref(), Some("G1"));
    assert_eq!(v.payment.refunded, v.payment.amount);
    let cancels = fake.calls("cancel");
    assert_eq!(cancels.len(), 2);
    assert_eq!(cancels[0].1, cancels[1].1, "the identical cancel");
    let gap = cancels[1].0.duration_since(cancels[0].0);
    assert!(
        gap >= Duration::from_secs(5) && gap <= Duration::from_secs(10),
        "resent at the cancel pace: {gap:?}"
    );
    assert_eq!(
        fake.calls("inquiry").len(),
        4,
        "three on the first refusal, one on the second"
    );
    assert_eq!(fake.calls("refund").len(), 1);
    let states: Vec<_> = v.events.iter().map(|e| e.to).collect();
    assert_eq!(
        states,
        vec![
            State::Paying,
            State::Inquiring,
            State::Cancelling,
            State::Refunding,
            State::Refunded
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_refused_for_another_reason_needs_attention() {
    let fake = Fake::default();
    fake.0
        .lock()
        .unwrap()
        .cancel
        .push_back(failed("ORDER_STATUS_INVALID"));
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::NeedsAttention);
    assert!(v
        .payment
        .attention_reason
        .unwrap()
        .contains("ORDER_STATUS_INVALID"));
}

#[tokio::test(start_paused = true)]
async fn abort_while_inquiring_cancels_and_a_late_success_never_becomes_a_sale() {
    let fake = Fake::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.inquiry.extend([processing()]);
        s.cancel.push_back(ok());
    }
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), Some("A-7"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let after = e.abort(&rec.payment_request_id).await.unwrap();
    assert_eq!(after.state, State::Cancelling);
    // A success notification arriving now must not turn the sale into SUCCEEDED.
    let n = e
        .apply_event(
            &rec.payment_request_id,
            Event::Notified {
                paid: true,
                amount_matches: true,
            },
        )
        .await
        .unwrap();
    // The driver may already have had the cancel confirmed; either way, never a sale.
    assert!(
        matches!(n.state, State::Cancelling | State::Cancelled),
        "{:?}",
        n.state
    );
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Cancelled);
    assert_eq!(fake.calls("inquiry").len(), 1, "no inquiry after the abort");
    // Aborting a final payment is refused and changes nothing.
    let err = e.abort(&rec.payment_request_id).await.unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err}");
    // The order is free again after a confirmed cancel.
    e.start_sale(sale(None, Some("A-7"))).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_second_payment_for_an_open_order_is_refused() {
    let fake = Fake::default();
    fake.0.lock().unwrap().pay_delay = Duration::from_secs(2);
    fake.0.lock().unwrap().pay.push_back(ok());
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), Some("A-2"))).await.unwrap();
    let err = e
        .start_sale(sale(Some(CODE), Some("A-2")))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)));
    assert!(err.to_string().contains(&rec.payment_request_id), "{err}");
    final_state(&e, &rec.payment_request_id).await;
    let err = e
        .start_sale(sale(Some(CODE), Some("A-2")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already paid"), "{err}");
    assert_eq!(fake.calls("pay").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_scan_binds_to_the_waiting_sale() {
    let fake = Fake::default();
    fake.0.lock().unwrap().pay.push_back(ok());
    let e = engine(&fake);
    let err = e
        .bind_code(PaymentCode::parse(CODE, &CodeRules::default()).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no sale is waiting"), "{err}");
    let rec = e.start_sale(sale(None, Some("A-3"))).await.unwrap();
    assert_eq!(rec.state, State::AwaitingCode);
    assert!(fake.calls("pay").is_empty());
    let bound = e
        .bind_code(PaymentCode::parse(CODE, &CodeRules::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(bound.payment_request_id, rec.payment_request_id);
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    assert_eq!(v.payment.code_masked.as_deref(), Some("2812**********3456"));
}

#[tokio::test(start_paused = true)]
async fn a_scan_pays_the_sale_really_waiting_when_the_engine_remembers_another() {
    let fake = Fake::default();
    fake.0.lock().unwrap().pay.push_back(ok());
    let e = engine(&fake);
    let first = e.start_sale(sale(None, Some("A-4"))).await.unwrap();
    e.abort(&first.payment_request_id).await.unwrap();
    // Another sale waits, written past this engine: the engine still remembers the first.
    let other = e
        .store()
        .call(|c| {
            let new = NewPayment {
                order_ref: Some("A-5".into()),
                amount: Amount::parse("5.00", Currency::from_code("CNY").unwrap()).unwrap(),
                state: State::AwaitingCode,
                code_masked: None,
                terminal_time: "2026-11-21T10:00:00+08:00".into(),
                pay_expires_at: None,
            };
            Ok(crate::store::payments::create(c, &new, 0, |seq| {
                format!("7{seq:035}")
            })?)
        })
        .await
        .unwrap();
    let bound = e
        .bind_code(PaymentCode::parse(CODE, &CodeRules::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(bound.payment_request_id, other.payment_request_id);
    let v = final_state(&e, &other.payment_request_id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    // The pay was signed again, for the sale bound, with its amount.
    let paid: Vec<String> = fake.calls("pay").into_iter().map(|c| c.1).collect();
    assert_eq!(paid, std::slice::from_ref(&other.payment_request_id));
    assert_eq!(v.payment.amount.minor(), 500);
}

#[tokio::test(start_paused = true)]
async fn recovery_inquires_a_payment_left_paying_and_never_resends_the_pay() {
    let fake = Fake::default();
    fake.0.lock().unwrap().inquiry.push_back(paid());
    let store = Store::open_in_memory().unwrap();
    // A payment committed as PAYING by a process that died before (or after) sending it.
    let rec = store
        .call(|c| {
            Ok(payments::create(
                c,
                &NewPayment {
                    order_ref: None,
                    amount: Amount::parse("1", Currency::from_code("CNY").unwrap()).unwrap(),
                    state: State::Paying,
                    code_masked: Some("2812**********3456".into()),
                    terminal_time: "2026-11-21T10:00:00+08:00".into(),
                    pay_expires_at: None,
                },
                1,
                |s| format!("P{s}"),
            )?)
        })
        .await
        .unwrap();
    let e = Engine::new(store, Arc::new(fake.clone()), settings());
    assert_eq!(e.recover().await.unwrap(), 1);
    let v = final_state(&e, &rec.payment_request_id).await;
    assert_eq!(v.payment.state, State::Succeeded);
    assert!(fake.calls("pay").is_empty(), "pay never resent");
    assert_eq!(fake.calls("inquiry").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn request_ids_are_unique_and_bounded() {
    let fake = Fake::default();
    let e = engine(&fake);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..50 {
        let r = e.start_sale(sale(None, None)).await.unwrap();
        assert!(r.payment_request_id.len() <= 64);
        let p = crate::domain::request_id::parse_payment_request_id(&r.payment_request_id)
            .expect("a 36-digit paymentRequestId");
        assert_eq!((p.terminal.as_str(), p.amount_minor), ("000001", 1234));
        assert!(ids.insert(r.payment_request_id.clone()));
        e.abort(&r.payment_request_id).await.unwrap();
    }
}

/// The terminal sequence a 36-digit payment request id carries.
fn sequence_of(rec: &PaymentRecord) -> u64 {
    crate::domain::request_id::parse_payment_request_id(&rec.payment_request_id)
        .expect("a 36-digit paymentRequestId")
        .sequence
}

#[tokio::test(start_paused = true)]
async fn sales_use_numbers_taken_ahead_and_a_restart_never_reuses_one() {
    let fake = Fake::default();
    for _ in 0..4 {
        fake.0.lock().unwrap().pay.push_back(ok());
    }
    let store = Store::open_in_memory().unwrap();
    let e = Engine::new(store.clone(), Arc::new(fake.clone()), settings());
    // The first sale takes its number in its own transaction, and eight more ahead (2..=9);
    // the next ones use those, so their ids exist before their transactions begin.
    let a = e.start_sale(sale(Some(CODE), Some("A-1"))).await.unwrap();
    let b = e.start_sale(sale(Some(CODE), Some("B-1"))).await.unwrap();
    assert_eq!((sequence_of(&a), sequence_of(&b)), (1, 2));
    // A refused sale gives its number back.
    let refused = e.start_sale(sale(Some(CODE), Some("B-1"))).await;
    assert!(
        matches!(refused, Err(EngineError::Conflict(_))),
        "{refused:?}"
    );
    let c = e.start_sale(sale(Some(CODE), Some("C-1"))).await.unwrap();
    assert_eq!(sequence_of(&c), 3);
    // Each pay was signed for the id its payment was committed with.
    for r in [&a, &b, &c] {
        assert_eq!(
            final_state(&e, &r.payment_request_id).await.payment.state,
            State::Succeeded
        );
    }
    let paid: Vec<String> = fake.calls("pay").into_iter().map(|c| c.1).collect();
    assert_eq!(
        paid,
        [&a, &b, &c].map(|r| r.payment_request_id.clone()).to_vec()
    );
    // A restart loses the spare numbers 4..=9: the next sale starts after them, never
    // reusing one.
    let e2 = Engine::new(store.clone(), Arc::new(fake.clone()), settings());
    let d = e2.start_sale(sale(Some(CODE), Some("D-1"))).await.unwrap();
    assert_eq!(sequence_of(&d), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_whose_id_is_known_before_its_intent_is_sent_only_after_the_intent_commits() {
    let fake = Fake::default();
    for _ in 0..2 {
        fake.0.lock().unwrap().pay.push_back(ok());
    }
    let e = engine(&fake);
    // The first sale takes numbers ahead, so the next one's id (and its pay) exist at once.
    let a = e.start_sale(sale(Some(CODE), Some("W-1"))).await.unwrap();
    final_state(&e, &a.payment_request_id).await;
    // Another write holds the writer, so the next intent cannot commit.
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let store = e.store().clone();
    let hold = tokio::spawn(async move {
        store
            .call(move |_| {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
            .await
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    let second = tokio::spawn({
        let e = e.clone();
        async move { e.start_sale(sale(Some(CODE), Some("W-2"))).await }
    });
    while e.store().queued() < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Its pay is prepared; it must not leave before the intent is on disk.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        fake.calls("pay").len(),
        1,
        "a pay left before its intent was committed"
    );
    assert!(!second.is_finished());
    release_tx.send(()).unwrap();
    hold.await.unwrap().unwrap();
    let b = second.await.unwrap().unwrap();
    assert_eq!(
        final_state(&e, &b.payment_request_id).await.payment.state,
        State::Succeeded
    );
    let paid: Vec<String> = fake.calls("pay").into_iter().map(|c| c.1).collect();
    assert_eq!(paid, [a.payment_request_id, b.payment_request_id]);
}

// ---- a pay held in transit (the gateway's `paymentExpiryTime` is the only protection) ----

/// An engine and the held-pay gateway on one tokio-driven wall clock.
fn held_engine(hold: Duration) -> (Engine, Fake, Arc<dyn clock::Clock>) {
    let clock: Arc<dyn clock::Clock> = Arc::new(clock::TokioClock::new());
    let fake = Fake::default();
    fake.script().held = Some(super::fake::Held::new(hold, clock.clone()));
    let e = Engine::with_clock(
        Store::open_in_memory().unwrap(),
        Arc::new(fake.clone()),
        settings(),
        clock.clone(),
    );
    (e, fake, clock)
}

fn queue_settings() -> worker::QueueSettings {
    worker::QueueSettings {
        backoff_initial: Duration::from_secs(30),
        backoff_max: Duration::from_secs(600),
        call_timeout: Duration::from_secs(3),
        inquiry_timeout: Duration::from_secs(3),
        batch: 8,
        concurrency: 2,
        terminal_id: "T0001".into(),
        timezone: Some(crate::config::Tz::named("Asia/Shanghai").unwrap()),
        merchant_name: "Demo Cafe".into(),
        store_name: "Demo Cafe Central".into(),
        inquiry_max: 10,
        payment_expiry_margin: Duration::from_secs(30),
    }
}

async fn state_of(e: &Engine, id: &str) -> State {
    e.view(id).await.unwrap().payment.state
}

#[tokio::test(start_paused = true)]
async fn a_pay_held_past_the_inquiries_is_cancelled_when_it_arrives_never_failed() {
    // The pay reaches the gateway 40 s after it left: every inquiry (6 s … 36 s) and the first
    // cancel find no record. It is charged on arrival, so "not charged" would be a lie.
    let (e, fake, clock) = held_engine(Duration::from_secs(40));
    let sent_at = clock.now_ms();
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let id = rec.payment_request_id.clone();
    // The expiry went out with the pay and was committed with its intent.
    let stored = e.view(&id).await.unwrap().payment.pay_expires_at.unwrap();
    assert!(
        stored >= sent_at + 180_000 && stored < sent_at + 181_000,
        "{}",
        stored - sent_at
    );
    tokio::time::sleep(Duration::from_secs(39)).await;
    assert_eq!(state_of(&e, &id).await, State::Cancelling);
    let v = final_state(&e, &id).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let charged = fake.script().held.as_mut().unwrap().is_charged();
    assert!(
        !(v.payment.state == State::Failed && charged),
        "FAILED (\"not charged\") while the gateway charged the customer"
    );
    assert_eq!(v.payment.state, State::Cancelled);
    assert!(fake.script().held.as_ref().unwrap().cancelled);
    assert!(!charged);
    assert!(fake.calls("cancel").len() >= 2, "the cancel was resent");
}

#[tokio::test(start_paused = true)]
async fn a_pay_held_past_its_expiry_is_queued_then_found_never_charged() {
    // Held 10 min: it reaches the gateway long after its 3 min expiry and is not processed.
    // Until the expiry (+30 s margin) has passed the cancel stays owed: queued, retried; only
    // then, after one last inquiry, is the sale FAILED.
    let (e, fake, clock) = held_engine(Duration::from_secs(600));
    e.start_queue_worker_with(queue_settings(), clock.clone());
    let start = Instant::now();
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let id = rec.payment_request_id.clone();
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(state_of(&e, &id).await, State::CancelQueued);
    let queued: i64 = e
        .store()
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM reversal_queue WHERE status = 'PENDING'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(queued, 1, "the owed cancel is in the queue");
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        state_of(&e, &id).await,
        State::CancelQueued,
        "not before the expiry and its margin (210 s)"
    );
    // CANCEL_QUEUED is final for the cashier; the queue carries on by itself.
    for _ in 0..60 {
        if state_of(&e, &id).await != State::CancelQueued {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let v = e.view(&id).await.unwrap();
    assert_eq!(v.payment.state, State::Failed);
    let failed_at = v.events.last().unwrap().at;
    assert!(
        failed_at >= rec.pay_expires_at.unwrap() + 30_000,
        "FAILED {} ms before the expiry + margin",
        rec.pay_expires_at.unwrap() + 30_000 - failed_at
    );
    assert!(Instant::now().duration_since(start) >= Duration::from_secs(210));
    // The last word was an inquiry, after the last cancel.
    let last_inquiry = fake.calls("inquiry").last().unwrap().0;
    assert!(last_inquiry >= fake.calls("cancel").last().unwrap().0);
    // The pay arrives at 600 s, after its expiry: not processed, never charged.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let mut s = fake.script();
    let h = s.held.as_mut().unwrap();
    assert!(!h.is_charged());
    assert!(h.refused_late);
}

// ---- an answer that cannot be recorded ----

#[tokio::test(start_paused = true)]
async fn an_answer_that_cannot_be_recorded_is_kept_retried_and_recorded_once_the_fault_clears() {
    let fake = Fake::default();
    fake.script().pay_delay = Duration::from_secs(1);
    fake.script().inquiry.push_back(paid());
    let e = engine(&fake);
    let rec = e.start_sale(sale(Some(CODE), None)).await.unwrap();
    let id = rec.payment_request_id.clone();
    // The database starts refusing every write to payments (an injected I/O error).
    e.store()
        .call(|c| {
            c.execute_batch(
                "CREATE TEMP TRIGGER refuse BEFORE UPDATE ON payments \
                 BEGIN SELECT RAISE(ABORT, 'injected: disk I/O error'); END;",
            )?;
            Ok(())
        })
        .await
        .unwrap();
    // A long-poll in progress learns at once that the answer cannot be recorded.
    let waiting = {
        let e = e.clone();
        let id = id.clone();
        tokio::spawn(async move { e.wait_final(&id, Duration::from_secs(60)).await })
    };
    let v = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long-poll returns when recording is blocked")
        .unwrap()
        .unwrap();
    assert_eq!(v.payment.state, State::Paying);
    let blocked = v.recording.expect("the view carries the condition");
    assert!(blocked.advice().contains("do not hand over goods"));
    assert!(blocked.error.contains("injected"), "{}", blocked.error);
    let fault = e.recording_fault().expect("the health flag is up");
    assert_eq!(fault.payments, vec![id.clone()]);
    // The pay's answer (unknown) is kept and never acted on while unrecorded: no inquiry.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        fake.calls("inquiry").is_empty(),
        "acted on an unrecorded answer"
    );
    let v = e.view(&id).await.unwrap();
    assert_eq!(v.payment.state, State::Paying);
    assert!(v.recording.unwrap().attempts > 5, "the commit is retried");
    // The fault clears: the payment carries on by itself, without a restart.
    e.store()
        .call(|c| {
            c.execute_batch("DROP TRIGGER temp.refuse")?;
            Ok(())
        })
        .await
        .unwrap();
    // (A long-poll that began while blocked returns when the condition clears: poll again.)
    let v = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let v = final_state(&e, &id).await;
            if v.payment.state.is_final() {
                break v;
            }
        }
    })
    .await
    .expect("the payment finishes on its own");
    assert_eq!(v.payment.state, State::Succeeded);
    assert!(v.recording.is_none());
    assert!(e.recording_fault().is_none());
    assert_eq!(fake.calls("pay").len(), 1, "the pay was not resent");
    let states: Vec<_> = v.events.iter().map(|e| e.to).collect();
    assert_eq!(
        states,
        vec![State::Paying, State::Inquiring, State::Succeeded]
    );
}
