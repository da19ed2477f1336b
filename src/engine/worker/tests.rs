//! Queue worker and refund tests against an in-memory scripted gateway: outcomes, backoff,
//! leases, dead letters, abandon, payload versions, the worker's wake-ups (paused tokio time),
//! and refunds through the engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::domain::code::{CodeRules, PaymentCode};
use crate::domain::money::{Amount, Currency};
use crate::engine::clock::{ManualClock, TokioClock};
use crate::engine::{Engine, EngineError, EngineSettings, SaleRequest};
use crate::gateway::{Answer, Reply};
use crate::store::payments::{Change, NewPayment, NewQueueItem, PaymentRecord};
use crate::store::queue::ItemStatus;

use crate::engine::fake::{
    failed, inquiry_unknown, no_such_payment, not_found, ok, ok_with_payment_id, paid, refunded,
    unknown, window_passed, Fake,
};

fn cancel_ok() -> Reply<Answer> {
    ok()
}

fn refund_ok() -> Reply<Answer> {
    refunded("GR1")
}

const T0: i64 = 1_800_000_000_000;

fn settings() -> QueueSettings {
    QueueSettings {
        backoff_initial: Duration::from_secs(30),
        backoff_max: Duration::from_secs(600),
        call_timeout: Duration::from_secs(3),
        inquiry_timeout: Duration::from_secs(3),
        batch: 8,
        concurrency: 4,
        terminal_id: "T0001".into(),
        timezone: Some(crate::config::Tz::named("Asia/Shanghai").unwrap()),
        merchant_name: "Demo Cafe".into(),
        store_name: "Demo Cafe Central".into(),
        inquiry_max: 10,
        payment_expiry_margin: Duration::from_secs(30),
    }
}

fn cny(minor: i64) -> Amount {
    Amount::from_minor(minor, Currency::from_code("CNY").unwrap()).unwrap()
}

/// A payment of 12.34 in CANCEL_QUEUED with its cancel item due at `due`; `payment_id` as
/// if an answer had carried it. Returns the item id.
fn queued_cancel(store: &Store, id: &str, payment_id: Option<&str>, due: i64) -> i64 {
    let (id, pid) = (id.to_string(), payment_id.map(str::to_string));
    store
        .call_blocking(move |c| {
            let new = NewPayment {
                order_ref: None,
                amount: cny(1234),
                state: State::Cancelling,
                code_masked: Some("2812**********3456".into()),
                terminal_time: "2026-11-21T10:15:30+08:00".into(),
                pay_expires_at: None,
            };
            payments::create(c, &new, T0, |_| id.clone())?;
            let ch = Change {
                to: Some(State::CancelQueued),
                cause: "cancel unanswered; queued".into(),
                payment_id: pid,
                enqueue: Some(NewQueueItem {
                    kind: ItemKind::Cancel,
                    refund_request_id: None,
                    payload_version: PAYLOAD_VERSION,
                    payload: Payload::Cancel {
                        payment_request_id: id.clone(),
                    }
                    .encode(),
                    next_attempt_at: due,
                }),
                ..Default::default()
            };
            payments::apply(c, &id, State::Cancelling, &ch, T0)?.unwrap();
            Ok(c.query_row(
                "SELECT id FROM reversal_queue WHERE payment_request_id = ?1",
                [&id],
                |r| r.get(0),
            )?)
        })
        .unwrap()
}

fn item(store: &Store, id: i64) -> QueueItem {
    store
        .call_blocking(move |c| Ok(q::get(c, id)?.unwrap()))
        .unwrap()
}

fn payment(store: &Store, id: &str) -> PaymentRecord {
    let id = id.to_string();
    store
        .call_blocking(move |c| Ok(payments::get(c, &id)?.unwrap()))
        .unwrap()
}

fn events_of(store: &Store, id: &str) -> Vec<payments::EventRecord> {
    let id = id.to_string();
    store
        .call_blocking(move |c| Ok(payments::events(c, &id)?))
        .unwrap()
}

fn replayer(store: &Store, fake: &Fake, clock: Arc<dyn Clock>) -> Replayer {
    Replayer::new(
        store.clone(),
        Arc::new(fake.clone()),
        clock,
        settings(),
        "test",
    )
}

#[tokio::test]
async fn a_confirmed_cancel_closes_the_item_and_cancels_the_payment_once() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel.push_back(cancel_ok());
    let clock = Arc::new(ManualClock::at(T0));
    let r = replayer(&store, &fake, clock.clone());
    let id = queued_cancel(&store, "P1", None, T0 + 30_000);
    // Not due yet: nothing is sent.
    assert!(r.drain().await.unwrap().is_empty());
    assert!(fake.calls("cancel").is_empty());
    clock.advance(30_000);
    let rep = r.drain().await.unwrap();
    assert_eq!(rep.len(), 1);
    assert_eq!(rep[0].outcome, ItemOutcome::Done);
    assert_eq!(rep[0].payment_state, Some(State::Cancelled));
    assert_eq!(
        fake.calls("cancel"),
        vec![(fake.calls("cancel")[0].0, "P1".into())]
    );
    let it = item(&store, id);
    assert_eq!((it.status, it.lease_owner), (ItemStatus::Done, None));
    let p = payment(&store, "P1");
    assert_eq!(p.state, State::Cancelled);
    let last = events_of(&store, "P1").pop().unwrap();
    assert_eq!(
        (last.from, last.to),
        (Some(State::CancelQueued), State::Cancelled)
    );
    // The CANCEL slip committed with the confirmation.
    let slips: Vec<String> = store
        .call_blocking(|c| {
            let mut st =
                c.prepare("SELECT kind FROM print_slips WHERE payment_request_id = 'P1'")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
        })
        .unwrap();
    assert_eq!(slips, vec!["CANCEL".to_string()]);
    // Draining again sends nothing and changes nothing.
    assert!(r.drain().await.unwrap().is_empty());
    assert_eq!(fake.calls("cancel").len(), 1);
    assert_eq!(events_of(&store, "P1").len(), 3);
}

#[tokio::test]
async fn unknown_answers_back_off_doubling_with_jitter_up_to_the_cap() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    let clock = Arc::new(ManualClock::at(T0));
    let r = replayer(&store, &fake, clock.clone());
    let id = queued_cancel(&store, "P1", None, T0);
    let mut delays = Vec::new();
    for attempt in 1..=7u32 {
        let rep = r.drain().await.unwrap();
        assert_eq!(rep.len(), 1, "attempt {attempt}");
        assert_eq!(rep[0].outcome, ItemOutcome::Retry);
        let it = item(&store, id);
        assert_eq!(it.attempts, attempt);
        assert_eq!(it.status, ItemStatus::Pending, "never dropped");
        assert_eq!(it.last_error.as_deref(), Some("timeout"));
        let delay = it.next_attempt_at - clock.now_ms();
        delays.push(delay);
        // Not due before its time.
        clock.advance(delay - 1);
        assert!(r.drain().await.unwrap().is_empty());
        clock.advance(1);
    }
    let expected = [60_000, 120_000, 240_000, 480_000, 600_000, 600_000, 600_000];
    for (d, e) in delays.iter().zip(expected) {
        assert!(
            *d <= e && *d >= e * 3 / 4,
            "delay {d} for nominal {e}: {delays:?}"
        );
    }
    // The payment did not move and every retry is in the item's journal.
    assert_eq!(payment(&store, "P1").state, State::CancelQueued);
    let ev = store.call_blocking(move |c| Ok(q::events(c, id)?)).unwrap();
    assert_eq!(ev.len(), 7);
    assert!(ev.iter().all(|e| e.what == "RETRY"));
}

#[tokio::test]
async fn a_cancel_past_its_window_becomes_a_refund_item_and_the_refund_ends_refunded() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel.push_back(window_passed());
    // The refund's answer carries the gateway's refundTime (the back office reconciles by it).
    let mut answered = refund_ok();
    answered.facts.time = Some("2026-11-21T10:15:31+08:00".into());
    fake.script().refund.push_back(answered);
    let clock = Arc::new(ManualClock::at(T0));
    let r = replayer(&store, &fake, clock.clone());
    // No stored paymentId: the replayer learns it by inquiry.
    let cancel = queued_cancel(&store, "P1", None, T0);
    let rep = r.drain().await.unwrap();
    let outcomes: Vec<_> = rep.iter().map(|x| x.outcome).collect();
    assert_eq!(outcomes, vec![ItemOutcome::Converted, ItemOutcome::Done]);
    assert_eq!(
        rep[0].payment_state,
        Some(State::CancelQueued),
        "stays queued until the refund"
    );
    assert_eq!(rep[1].payment_state, Some(State::Refunded));
    assert_eq!(item(&store, cancel).status, ItemStatus::Done);
    assert_eq!(fake.calls("inquiry").len(), 1);
    let refunds = fake.calls("refund");
    assert_eq!(refunds.len(), 1);
    let p = payment(&store, "P1");
    assert_eq!(
        (p.state, p.refunded.minor(), p.payment_id.as_deref()),
        (State::Refunded, 1234, Some("G1"))
    );
    let rs = store
        .call_blocking(|c| Ok(payments::refunds_of(c, "P1")?))
        .unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(
        (
            rs[0].kind.as_str(),
            rs[0].state.as_str(),
            rs[0].refund_id.as_deref(),
            &rs[0].refund_request_id
        ),
        ("REVERSAL", "SUCCEEDED", Some("GR1"), &refunds[0].1)
    );
    // The refund confirmed by the queue keeps the gateway's time in the journal; the payment's
    // own row keeps none (no paymentTime was given).
    let rid = rs[0].refund_request_id.clone();
    let row = store
        .call_blocking(move |c| Ok(crate::store::journal::refund(c, &rid)?))
        .unwrap()
        .expect("the refund's journal row");
    assert_eq!(
        row.gateway_time.as_deref(),
        Some("2026-11-21T10:15:31+08:00")
    );
    let pay_row = store
        .call_blocking(|c| Ok(crate::store::journal::payment(c, "P1")?))
        .unwrap()
        .expect("the payment's journal row");
    assert_eq!(pay_row.gateway_time, None);
    let items = store
        .call_blocking(|c| Ok(q::of_payment(c, "P1")?))
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i.status == ItemStatus::Done));
}

#[tokio::test]
async fn without_a_payment_id_the_window_passed_cancel_stays_queued() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel.push_back(window_passed());
    fake.script().inquiry.push_back(inquiry_unknown());
    let clock = Arc::new(ManualClock::at(T0));
    let r = replayer(&store, &fake, clock.clone());
    let id = queued_cancel(&store, "P1", None, T0);
    let rep = r.drain().await.unwrap();
    assert_eq!(rep[0].outcome, ItemOutcome::Retry);
    assert!(item(&store, id).last_error.unwrap().contains("paymentId"));
    assert_eq!(payment(&store, "P1").state, State::CancelQueued);
}

#[tokio::test]
async fn a_refusal_is_a_dead_letter_and_the_payment_needs_attention_with_the_reason() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script()
        .cancel
        .push_back(failed("ORDER_STATUS_INVALID"));
    let r = replayer(&store, &fake, Arc::new(ManualClock::at(T0)));
    let id = queued_cancel(&store, "P1", Some("G1"), T0);
    let rep = r.drain().await.unwrap();
    assert_eq!(rep[0].outcome, ItemOutcome::Dead);
    let it = item(&store, id);
    assert_eq!(it.status, ItemStatus::Dead);
    assert!(it.resolution.unwrap().contains("ORDER_STATUS_INVALID"));
    let p = payment(&store, "P1");
    assert_eq!(p.state, State::NeedsAttention);
    assert_eq!(p.result_code.as_deref(), Some("ORDER_STATUS_INVALID"));
    assert!(p
        .attention_reason
        .unwrap()
        .contains("refused by the gateway"));
    // A dead letter is never sent again.
    assert!(r.replay_all().await.unwrap().is_empty());
    assert_eq!(fake.calls("cancel").len(), 1);
}

#[tokio::test]
async fn a_queued_cancel_that_finds_no_payment_waits_for_the_expiry_then_asks_once_more() {
    // The gateway has no record of the payment: while its pay may still arrive that means
    // "not arrived yet" (not a dead letter); after the expiry and the margin, one last inquiry
    // that finds nothing either means never charged.
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel_default = Some(no_such_payment());
    let clock = Arc::new(ManualClock::at(T0));
    let r = replayer(&store, &fake, clock.clone());
    let id = queued_cancel(&store, "P1", None, T0);
    let expires = T0 + 180_000;
    store
        .call_blocking(move |c| {
            c.execute(
                "UPDATE payments SET pay_expires_at = ?1 WHERE payment_request_id = 'P1'",
                [expires],
            )?;
            Ok(())
        })
        .unwrap();
    let rep = r.drain().await.unwrap();
    assert_eq!(rep[0].outcome, ItemOutcome::Retry, "{:?}", rep[0]);
    assert_eq!(item(&store, id).status, ItemStatus::Pending);
    assert_eq!(payment(&store, "P1").state, State::CancelQueued);
    assert!(
        fake.calls("inquiry").is_empty(),
        "no inquiry before the expiry"
    );
    // Within the margin (30 s) after the expiry: still not arrived yet.
    clock.advance(180_000 + 29_000);
    let rep = r.replay_all().await.unwrap();
    assert_eq!(rep[0].outcome, ItemOutcome::Retry);
    assert!(fake.calls("inquiry").is_empty());
    // Past it: the last inquiry finds the payment after all — the cancel stays owed.
    clock.advance(2_000);
    fake.script().inquiry.push_back(paid());
    let rep = r.replay_all().await.unwrap();
    assert_eq!(rep[0].outcome, ItemOutcome::Retry);
    assert_eq!(fake.calls("inquiry").len(), 1);
    assert_eq!(payment(&store, "P1").state, State::CancelQueued);
    // Next time it finds nothing: never charged.
    clock.advance(60_000);
    fake.script().inquiry.push_back(not_found());
    let rep = r.replay_all().await.unwrap();
    assert_eq!(rep[0].outcome, ItemOutcome::Done);
    assert_eq!(rep[0].payment_state, Some(State::Failed));
    assert_eq!(item(&store, id).status, ItemStatus::Done);
    let p = payment(&store, "P1");
    assert_eq!(p.state, State::Failed);
    assert_eq!(p.result_code.as_deref(), Some("ORDER_NOT_EXIST"));
    assert!(p.attention_reason.is_none());
    let last = events_of(&store, "P1").pop().unwrap();
    assert!(last.cause.contains("never charged"), "{last:?}");
    assert_eq!(fake.calls("cancel").len(), 4);
}

#[tokio::test]
async fn a_replayer_whose_lease_was_retaken_writes_nothing() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel_default = Some(cancel_ok());
    let clock = Arc::new(ManualClock::at(T0));
    let a = replayer(&store, &fake, clock.clone());
    let b = replayer(&store, &fake, clock.clone());
    let id = queued_cancel(&store, "P1", None, T0);
    // A leases the item and then stalls (killed or frozen) before settling.
    let (owner_a, leased, _) = a.lease_by_id(id).await.unwrap();
    assert!(matches!(
        b.replay_item(id).await,
        Err(ReplayError::Busy { .. })
    ));
    assert!(
        b.drain().await.unwrap().is_empty(),
        "a live lease is not retaken"
    );
    // The stale lease expires and B retakes and settles it.
    clock.advance(ms(settings().lease()) + 1);
    let rep = b.drain().await.unwrap();
    assert_eq!(rep[0].outcome, ItemOutcome::Done);
    let events_after_b = events_of(&store, "P1").len();
    // A wakes up with its answer: nothing is applied twice.
    let late = a
        .settle(
            &owner_a,
            vec![(
                leased,
                Verdict::Confirmed {
                    facts: crate::gateway::Facts {
                        result_code: Some("SUCCESS".into()),
                        ..Default::default()
                    },
                },
            )],
        )
        .await
        .unwrap();
    assert_eq!(late[0].outcome, ItemOutcome::LeaseLost);
    assert_eq!(events_of(&store, "P1").len(), events_after_b);
    assert_eq!(payment(&store, "P1").state, State::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn two_replayers_at_once_send_each_item_exactly_once() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    {
        let mut s = fake.script();
        s.cancel_default = Some(cancel_ok());
        s.delay = Duration::from_millis(50);
    }
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let now = clock.now_ms();
    for i in 0..40 {
        queued_cancel(&store, &format!("P{i}"), None, now);
    }
    let a = replayer(&store, &fake, clock.clone());
    let b = replayer(&store, &fake, clock.clone());
    let (ra, rb) = tokio::join!(a.drain(), b.drain());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.len() + rb.len(), 40);
    assert!(!ra.is_empty() && !rb.is_empty(), "both replayers worked");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (_, id) in fake.calls("cancel") {
        *per_id.entry(id).or_default() += 1;
    }
    assert_eq!(per_id.len(), 40);
    assert!(per_id.values().all(|n| *n == 1), "{per_id:?}");
    for i in 0..40 {
        assert_eq!(payment(&store, &format!("P{i}")).state, State::Cancelled);
    }
}

#[tokio::test]
async fn abandon_needs_a_reason_and_records_it_in_the_journal() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    let clock = Arc::new(ManualClock::at(T0));
    let r = replayer(&store, &fake, clock.clone());
    let id = queued_cancel(&store, "P1", None, T0 + 30_000);
    for bad in ["", "   ", "line\nbreak"] {
        assert!(
            matches!(r.abandon(id, bad).await, Err(ReplayError::Invalid(_))),
            "{bad:?}"
        );
    }
    assert_eq!(
        item(&store, id).status,
        ItemStatus::Pending,
        "refusals change nothing"
    );
    assert!(matches!(
        r.abandon(999, "x").await,
        Err(ReplayError::NotFound(999))
    ));
    let rep = r
        .abandon(id, "refunded in the merchant portal, ticket 42")
        .await
        .unwrap();
    assert_eq!(rep.outcome, ItemOutcome::Abandoned);
    let it = item(&store, id);
    assert_eq!(it.status, ItemStatus::Abandoned);
    let p = payment(&store, "P1");
    assert_eq!(p.state, State::NeedsAttention);
    let last = events_of(&store, "P1").pop().unwrap();
    assert!(last.cause.contains("ticket 42"), "{last:?}");
    let ev = store.call_blocking(move |c| Ok(q::events(c, id)?)).unwrap();
    assert_eq!(ev[0].what, "ABANDONED");
    assert!(matches!(
        r.abandon(id, "again").await,
        Err(ReplayError::Closed { .. })
    ));
    assert!(fake.calls("cancel").is_empty(), "abandon sends nothing");
}

#[tokio::test]
async fn items_of_an_older_version_drain_and_newer_ones_are_held_not_dropped() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel_default = Some(cancel_ok());
    let clock = Arc::new(ManualClock::at(T0));
    let r = replayer(&store, &fake, clock.clone());
    let old = queued_cancel(&store, "OLD", None, T0);
    let new = queued_cancel(&store, "NEW", None, T0);
    let bad = queued_cancel(&store, "BAD", None, T0);
    store
        .call_blocking(move |c| {
            // Exactly the text version 1 wrote.
            c.execute(
                "UPDATE reversal_queue SET payload_version = 1, payload = '{\"kind\":\"CANCEL\",\"payment_request_id\":\"OLD\"}' WHERE id = ?1",
                [old],
            )?;
            c.execute(
                "UPDATE reversal_queue SET payload_version = 99, payload = '{\"future\":true}' WHERE id = ?1",
                [new],
            )?;
            c.execute("UPDATE reversal_queue SET payload = 'not json' WHERE id = ?1", [bad])?;
            Ok(())
        })
        .unwrap();
    let rep = r.drain().await.unwrap();
    let by_id: HashMap<i64, ItemOutcome> = rep.iter().map(|x| (x.id, x.outcome)).collect();
    assert_eq!(by_id[&old], ItemOutcome::Done);
    assert_eq!(by_id[&new], ItemOutcome::Held);
    assert_eq!(by_id[&bad], ItemOutcome::Dead);
    let held = item(&store, new);
    assert_eq!(held.status, ItemStatus::Pending);
    assert!(held.last_error.unwrap().contains("upgrade posd"));
    assert_eq!(
        held.next_attempt_at,
        T0 + 600_000,
        "held at the backoff cap"
    );
    assert_eq!(payment(&store, "NEW").state, State::CancelQueued);
    assert_eq!(payment(&store, "BAD").state, State::NeedsAttention);
    assert_eq!(
        fake.calls("cancel").len(),
        1,
        "only the readable item was sent"
    );
}

#[tokio::test]
async fn replay_of_one_item_sends_it_even_before_it_is_due() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel.push_back(cancel_ok());
    let r = replayer(&store, &fake, Arc::new(ManualClock::at(T0)));
    let id = queued_cancel(&store, "P1", None, T0 + 3_600_000);
    let rep = r.replay_item(id).await.unwrap();
    assert_eq!(
        (rep.outcome, rep.payment_state),
        (ItemOutcome::Done, Some(State::Cancelled))
    );
    assert!(matches!(
        r.replay_item(id).await,
        Err(ReplayError::Closed { status: "DONE", .. })
    ));
}

/// Engine settings for engine-level tests.
fn engine_settings() -> EngineSettings {
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

#[tokio::test(start_paused = true)]
async fn the_worker_replays_when_due_and_at_once_when_the_gateway_answers_again() {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    fake.script().cancel.extend([unknown(), cancel_ok()]);
    let engine = Engine::new(store.clone(), Arc::new(fake.clone()), engine_settings());
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let start = Instant::now();
    queued_cancel(&store, "P1", None, clock.now_ms() + 30_000);
    engine.start_queue_worker_with(settings(), clock.clone());
    let mut ticks = engine.subscribe();
    // First replay when due: unanswered, rescheduled 45–60 s later.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let cancels = fake.calls("cancel");
    assert_eq!(cancels.len(), 1);
    let first = cancels[0].0.duration_since(start);
    assert!(
        first >= Duration::from_secs(30) && first < Duration::from_secs(31),
        "{first:?}"
    );
    assert_eq!(payment(&store, "P1").state, State::CancelQueued);
    // The gateway answers some other request: the queue is replayed at once.
    let _ = engine.gateway().inquiry_payment("OTHER").await;
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), async {
        while payment(&store, "P1").state != State::Cancelled {
            ticks.changed().await.unwrap();
        }
    })
    .await
    .expect("replayed at once, not after the backoff");
    let cancels = fake.calls("cancel");
    assert_eq!(cancels.len(), 2);
    assert!(cancels[1].0.duration_since(back) < Duration::from_millis(100));
    assert!(engine.shutdown(Duration::from_secs(5)).await);
}

/// A sale of 12.34 through an engine on `fake`, driven by its payment task until it is
/// CANCEL_QUEUED (asserted): the engine, the payment's id and its view then.
async fn queued_by_its_task(fake: &Fake) -> (Engine, String, crate::engine::PaymentView) {
    let engine = Engine::new(
        Store::open_in_memory().unwrap(),
        Arc::new(fake.clone()),
        engine_settings(),
    );
    let sale = engine
        .start_sale(SaleRequest {
            amount: cny(1234),
            order_ref: None,
            code: Some(PaymentCode::parse("281234567890123456", &CodeRules::default()).unwrap()),
        })
        .await
        .unwrap();
    let id = sale.payment_request_id.clone();
    let v = engine
        .wait_final(&id, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(v.payment.state, State::CancelQueued);
    (engine, id, v)
}

#[tokio::test(start_paused = true)]
async fn the_worker_delivers_a_cancel_the_payment_task_queued_exactly_once() {
    let fake = Fake::default();
    {
        let mut s = fake.script();
        // Pay unanswered, inquiries PROCESSING, cancels unanswered for the window.
        s.cancel_default = Some(unknown());
    }
    let (engine, id, _) = queued_by_its_task(&fake).await;
    // Then the gateway confirms the queued cancel. (The gateway answered inquiries after
    // the worker's start-up state of "down", so the worker replays at once when it starts.)
    fake.script().cancel_default = Some(cancel_ok());
    let sent_by_task = fake.calls("cancel").len();
    engine.start_queue_worker_with(settings(), Arc::new(TokioClock::new()));
    let mut ticks = engine.subscribe();
    while engine.view(&id).await.unwrap().payment.state != State::Cancelled {
        ticks.changed().await.unwrap();
    }
    assert_eq!(
        fake.calls("cancel").len(),
        sent_by_task + 1,
        "one queued send"
    );
    let last = engine.view(&id).await.unwrap().events.pop().unwrap();
    assert_eq!(
        (last.from, last.to),
        (Some(State::CancelQueued), State::Cancelled)
    );
    assert!(engine.shutdown(Duration::from_secs(5)).await);
}

/// The cancel window closed and no inquiry gives the paymentId the refund needs for the whole
/// cancel retry window: the payment is CANCEL_QUEUED with its cancel in the queue (the cashier
/// may tell the customer "not charged"), not left to a human. The queue's replay learns the id
/// and the full amount is refunded.
#[tokio::test(start_paused = true)]
async fn a_closed_cancel_window_whose_payment_id_never_comes_is_queued_and_the_queue_refunds() {
    let fake = Fake::default();
    {
        let mut s = fake.script();
        s.cancel_default = Some(window_passed());
        s.inquiry.extend((0..200).map(|_| inquiry_unknown()));
        s.refund_default = Some(refund_ok());
    }
    let (engine, id, v) = queued_by_its_task(&fake).await;
    assert_eq!(v.payment.payment_id, None);
    assert!(v.events.iter().all(|e| e.to != State::NeedsAttention));
    let resent = fake.calls("cancel").len();
    assert!(resent >= 2, "the cancel was resent, {resent} sent");
    let queued = engine
        .store()
        .read({
            let id = id.clone();
            move |c| Ok(q::of_payment(c, &id)?)
        })
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].kind, queued[0].status),
        (ItemKind::Cancel, ItemStatus::Pending)
    );
    // The gateway answers inquiries again: the queue learns the id and refunds.
    fake.script().inquiry.clear();
    engine.start_queue_worker_with(settings(), Arc::new(TokioClock::new()));
    let mut ticks = engine.subscribe();
    tokio::time::timeout(Duration::from_secs(3600), async {
        while engine.view(&id).await.unwrap().payment.state != State::Refunded {
            ticks.changed().await.unwrap();
        }
    })
    .await
    .expect("the queue refunds the charge");
    let p = engine.view(&id).await.unwrap().payment;
    assert_eq!(p.payment_id.as_deref(), Some("G1"));
    assert_eq!(p.refunded, p.amount);
    assert_eq!(fake.calls("refund").len(), 1);
    assert!(engine.shutdown(Duration::from_secs(5)).await);
}

// ---- refunds through the engine ----

async fn paid_sale(engine: &Engine, fake: &Fake) -> String {
    fake.script().pay.push_back(ok_with_payment_id("G9"));
    let rec = engine
        .start_sale(SaleRequest {
            amount: cny(1234),
            order_ref: None,
            code: Some(PaymentCode::parse("281234567890123456", &CodeRules::default()).unwrap()),
        })
        .await
        .unwrap();
    let v = engine
        .wait_final(&rec.payment_request_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(v.payment.state, State::Succeeded);
    rec.payment_request_id
}

async fn settled(engine: &Engine, id: &str) -> PaymentRecord {
    loop {
        let v = engine
            .wait_final(id, Duration::from_secs(3600))
            .await
            .unwrap();
        if v.payment.state != State::Refunding {
            return v.payment;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn partial_refunds_add_up_to_a_full_refund() {
    let fake = Fake::default();
    fake.script().refund_default = Some(refund_ok());
    let engine = Engine::new(
        Store::open_in_memory().unwrap(),
        Arc::new(fake.clone()),
        engine_settings(),
    );
    let id = paid_sale(&engine, &fake).await;
    let r = engine
        .refund(&id, Some(cny(234)), Some("damaged cup".into()))
        .await
        .unwrap();
    assert_eq!(r.state, State::Refunding);
    let p = settled(&engine, &id).await;
    assert_eq!(
        (p.state, p.refunded.minor()),
        (State::PartiallyRefunded, 234)
    );
    // The rest, by default the whole refundable amount.
    engine.refund(&id, None, None).await.unwrap();
    let p = settled(&engine, &id).await;
    assert_eq!((p.state, p.refunded.minor()), (State::Refunded, 1234));
    let calls = fake.calls("refund");
    assert_eq!(calls.len(), 2);
    assert_ne!(
        calls[0].1, calls[1].1,
        "each refund has its own refundRequestId"
    );
    let refunds = engine
        .store()
        .call_blocking({
            let id = id.clone();
            move |c| Ok(payments::refunds_of(c, &id)?)
        })
        .unwrap();
    assert_eq!(
        refunds.iter().map(|r| r.amount.minor()).collect::<Vec<_>>(),
        vec![234, 1000]
    );
    assert_eq!(refunds[0].reason.as_deref(), Some("damaged cup"));
    // Fully refunded: nothing left.
    let e = engine.refund(&id, None, None).await.unwrap_err();
    assert!(matches!(e, EngineError::Conflict(_)), "{e}");
}

#[tokio::test(start_paused = true)]
async fn refusals_change_nothing() {
    let fake = Fake::default();
    fake.script().refund_default = Some(refund_ok());
    let store = Store::open_in_memory().unwrap();
    let engine = Engine::new(store.clone(), Arc::new(fake.clone()), engine_settings());
    let id = paid_sale(&engine, &fake).await;
    let snapshot = |store: &Store| {
        let id = id.clone();
        store
            .call_blocking(move |c| {
                Ok((
                    payments::get(c, &id)?.unwrap(),
                    payments::events(c, &id)?.len(),
                    payments::refunds_of(c, &id)?.len(),
                    c.query_row("SELECT value FROM terminal_sequence", [], |r| {
                        r.get::<_, i64>(0)
                    })?,
                ))
            })
            .unwrap()
    };
    let before = snapshot(&store);
    // Over-refund.
    let e = engine.refund(&id, Some(cny(1235)), None).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Conflict(m) if m.contains("at most 12.34")),
        "{e}"
    );
    // Zero, wrong currency, a reason that is too long.
    assert!(matches!(
        engine.refund(&id, Some(cny(0)), None).await,
        Err(EngineError::Invalid(_))
    ));
    let usd = Amount::from_minor(100, Currency::from_code("USD").unwrap()).unwrap();
    assert!(matches!(
        engine.refund(&id, Some(usd), None).await,
        Err(EngineError::Invalid(_))
    ));
    assert!(matches!(
        engine.refund(&id, None, Some("x".repeat(300))).await,
        Err(EngineError::Invalid(_))
    ));
    assert!(matches!(
        engine.refund("NOPE", None, None).await,
        Err(EngineError::NotFound(_))
    ));
    assert_eq!(snapshot(&store), before);
    assert!(fake.calls("refund").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_payment_cannot_be_refunded() {
    let fake = Fake::default();
    let store = Store::open_in_memory().unwrap();
    let engine = Engine::new(store.clone(), Arc::new(fake.clone()), engine_settings());
    queued_cancel(&store, "P1", Some("G1"), T0);
    let e = engine.refund("P1", None, None).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Conflict(m) if m.contains("CANCEL_QUEUED")),
        "{e}"
    );
    assert_eq!(payment(&store, "P1").state, State::CancelQueued);
    assert!(fake.calls("refund").is_empty());
}

#[tokio::test(start_paused = true)]
async fn concurrent_refunds_never_over_refund() {
    let fake = Fake::default();
    {
        let mut s = fake.script();
        s.refund_default = Some(refund_ok());
        s.delay = Duration::from_millis(200);
    }
    let engine = Engine::new(
        Store::open_in_memory().unwrap(),
        Arc::new(fake.clone()),
        engine_settings(),
    );
    let id = paid_sale(&engine, &fake).await;
    // Ten refunds of 5.00 at once on 12.34: one at a time is in progress; never more than
    // the captured amount in all.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (e, id) = (engine.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            e.refund(&id, Some(cny(500)), None).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(EngineError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 1, "one refund in progress at a time");
    let p = settled(&engine, &id).await;
    assert_eq!(p.refunded.minor(), 500);
    // Sequentially: 5.00 more fits, a third 5.00 would exceed 12.34.
    engine.refund(&id, Some(cny(500)), None).await.unwrap();
    settled(&engine, &id).await;
    let e = engine.refund(&id, Some(cny(500)), None).await.unwrap_err();
    assert!(
        matches!(&e, EngineError::Conflict(m) if m.contains("at most 2.34")),
        "{e}"
    );
    let p = settled(&engine, &id).await;
    assert_eq!(
        (p.state, p.refunded.minor()),
        (State::PartiallyRefunded, 1000)
    );
    assert_eq!(fake.calls("refund").len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_refund_is_queued_and_the_queue_delivers_it() {
    let fake = Fake::default();
    let engine = Engine::new(
        Store::open_in_memory().unwrap(),
        Arc::new(fake.clone()),
        engine_settings(),
    );
    let id = paid_sale(&engine, &fake).await;
    engine.start_queue_worker_with(settings(), Arc::new(TokioClock::new()));
    engine.refund(&id, Some(cny(400)), None).await.unwrap();
    // The refund task resends for the window, then queues; the payment stays REFUNDING.
    let rid = loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (rs, items) = engine
            .store()
            .call_blocking({
                let id = id.clone();
                move |c| Ok((payments::refunds_of(c, &id)?, q::of_payment(c, &id)?))
            })
            .unwrap();
        if rs[0].state == crate::store::refunds::RefundState::Queued {
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].kind, ItemKind::Refund);
            break rs[0].refund_request_id.clone();
        }
    };
    assert_eq!(
        engine.view(&id).await.unwrap().payment.state,
        State::Refunding
    );
    let sent_by_task = fake.calls("refund").len();
    assert!(sent_by_task >= 6, "{sent_by_task}");
    // The gateway comes back, and its confirmation gives the refund's time.
    let mut answered = refund_ok();
    answered.facts.time = Some("2026-11-21T10:20:00+08:00".into());
    fake.script().refund_default = Some(answered);
    let p = settled(&engine, &id).await;
    assert_eq!(
        (p.state, p.refunded.minor()),
        (State::PartiallyRefunded, 400)
    );
    let row = engine
        .store()
        .call_blocking({
            let rid = rid.clone();
            move |c| Ok(crate::store::journal::refund(c, &rid)?)
        })
        .unwrap()
        .expect("the refund's journal row");
    assert_eq!(
        row.gateway_time.as_deref(),
        Some("2026-11-21T10:20:00+08:00"),
        "the queue's confirmation records the gateway's refund time"
    );
    let calls = fake.calls("refund");
    assert!(
        calls.iter().all(|c| c.1 == rid),
        "the identical refundRequestId every time"
    );
    assert!(engine.shutdown(Duration::from_secs(5)).await);
}

/// For the overlap tests: `items` due cancels (P0, P1, ...), a gateway that confirms each
/// after 500 ms, and a replayer leasing batches of two with `concurrency` sends at once.
fn overlap_setup(items: usize, concurrency: usize) -> (Store, Fake, Replayer) {
    let store = Store::open_in_memory().unwrap();
    let fake = Fake::default();
    {
        let mut s = fake.script();
        s.cancel_default = Some(cancel_ok());
        s.delay = Duration::from_millis(500);
    }
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let now = clock.now_ms();
    for i in 0..items {
        queued_cancel(&store, &format!("P{i}"), None, now);
    }
    let settings = QueueSettings {
        batch: 2,
        concurrency,
        ..settings()
    };
    let r = Replayer::new(
        store.clone(),
        Arc::new(fake.clone()),
        clock,
        settings,
        "test",
    );
    (store, fake, r)
}

/// When each cancel reached the gateway, counted per instant, in order.
fn sends_per_instant(fake: &Fake) -> Vec<usize> {
    let mut at: Vec<(Instant, usize)> = Vec::new();
    for (t, _) in fake.calls("cancel") {
        match at.iter_mut().find(|(u, _)| *u == t) {
            Some((_, n)) => *n += 1,
            None => at.push((t, 1)),
        }
    }
    at.sort_by_key(|(t, _)| *t);
    at.into_iter().map(|(_, n)| n).collect()
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_sends_while_the_one_before_is_still_in_flight() {
    let (store, fake, r) = overlap_setup(4, 4);
    let rep = r.drain().await.unwrap();
    // Two leases of two, all four sent at once: the second lease did not wait for the
    // first batch's answers or its settle.
    assert_eq!(sends_per_instant(&fake), vec![4]);
    assert_eq!(rep.len(), 4);
    assert!(
        rep.iter().all(|x| x.outcome == ItemOutcome::Done),
        "{rep:?}"
    );
    // Reports come batch by batch, in queue order.
    let ids: Vec<_> = rep.iter().map(|x| x.payment_request_id.clone()).collect();
    assert_eq!(ids, ["P0", "P1", "P2", "P3"]);
    for i in 0..4 {
        assert_eq!(payment(&store, &format!("P{i}")).state, State::Cancelled);
    }
}

#[tokio::test(start_paused = true)]
async fn overlapping_batches_never_send_more_than_the_concurrency_at_once() {
    let (_store, fake, r) = overlap_setup(7, 3);
    let rep = r.drain().await.unwrap();
    let waves = sends_per_instant(&fake);
    assert!(waves.iter().all(|n| *n <= 3), "{waves:?}");
    assert_eq!(
        waves.iter().sum::<usize>(),
        7,
        "each item sent once: {waves:?}"
    );
    assert_eq!(rep.len(), 7);
    assert!(
        rep.iter().all(|x| x.outcome == ItemOutcome::Done),
        "{rep:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_settle_that_cannot_write_stops_the_drain_after_the_batches_it_holds() {
    let (store, fake, r) = overlap_setup(8, 4);
    // Once the first two leases are out, the database refuses every write to the queue:
    // their settles record nothing (item by item, each refused), and no third lease is
    // taken.
    let drain = r.drain();
    tokio::pin!(drain);
    let broke = async {
        while fake.calls("cancel").len() < 4 {
            tokio::task::yield_now().await;
        }
        store
            .call(|c| {
                c.execute_batch(
                    "CREATE TEMP TRIGGER no_settle BEFORE UPDATE ON reversal_queue \
                     BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
    };
    let (result, ()) = tokio::join!(&mut drain, broke);
    assert!(
        result.unwrap().is_empty(),
        "nothing settled, nothing reported"
    );
    assert_eq!(
        fake.calls("cancel").len(),
        4,
        "no lease after a failed settle"
    );
    for i in 0..8 {
        let state = payment(&store, &format!("P{i}")).state;
        assert_eq!(state, State::CancelQueued, "P{i}: nothing settled");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_cannot_write_stops_the_drain_and_the_batch_it_holds_still_settles() {
    let (store, fake, r) = overlap_setup(6, 4);
    // The database refuses a second lease while the first batch holds its items: the first
    // batch is sent and settled, no other item is sent or left leased, and the drain says why.
    store
        .call(|c| {
            c.execute_batch(
                "CREATE TEMP TRIGGER no_second_lease BEFORE UPDATE OF lease_owner ON reversal_queue \
                 WHEN NEW.lease_owner IS NOT NULL AND EXISTS (SELECT 1 FROM reversal_queue \
                   WHERE lease_owner IS NOT NULL AND lease_owner != NEW.lease_owner) \
                 BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;",
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let err = r.drain().await.unwrap_err();
    assert!(err.to_string().contains("disk trouble"), "{err:#}");
    assert_eq!(
        fake.calls("cancel").len(),
        2,
        "only the batch leased before the refusal is sent"
    );
    for i in 0..6 {
        let want = if i < 2 {
            State::Cancelled
        } else {
            State::CancelQueued
        };
        assert_eq!(payment(&store, &format!("P{i}")).state, want, "P{i}");
    }
    let leased: i64 = store
        .call(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM reversal_queue WHERE lease_owner IS NOT NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(leased, 0, "the refused lease left nothing behind");
}
