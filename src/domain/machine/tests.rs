//! Exhaustive tests of the payment state machine: every state × every event.

use super::*;

fn refused(refusal: Refusal, code: &str) -> Answer {
    Answer::Failed {
        refusal,
        code: code.into(),
        message: "m".into(),
    }
}

fn failed(code: &str) -> Answer {
    refused(Refusal::Other, code)
}

fn window_passed() -> Answer {
    refused(Refusal::CancelWindowPassed, "CANCEL_WINDOW_EXCEED")
}

fn no_such_payment() -> Answer {
    refused(Refusal::NoSuchPayment, "ORDER_NOT_EXIST")
}

fn unknown() -> Answer {
    Answer::Unknown {
        why: "timeout".into(),
    }
}

/// One of every kind of event, including late and duplicate answers.
fn all_events() -> Vec<Event> {
    let answers = [
        Answer::Success,
        failed("X"),
        window_passed(),
        no_such_payment(),
        unknown(),
    ];
    let mut v = vec![
        Event::CodeBound,
        Event::CancelRefunded,
        Event::CancelWindowOver,
        Event::RefundWindowOver,
        Event::Abort,
        Event::RefundRequested,
        Event::Restarted,
        Event::QueuedCancelConfirmed,
        Event::QueuedRefundConfirmed {
            fully_refunded: true,
        },
        Event::QueuedRefundConfirmed {
            fully_refunded: false,
        },
        Event::QueueGaveUp { reason: "r".into() },
        Event::StatementShowsCharge {
            statement: "f:2".into(),
        },
        Event::StatementReversalQueued,
    ];
    for to in ALL_STATES {
        v.push(Event::Resolved {
            to,
            reason: "r".into(),
        });
    }
    for a in &answers {
        v.push(Event::PayAnswered(a.clone()));
        v.push(Event::CancelAnswered(a.clone()));
        v.push(Event::RefundAnswered {
            answer: a.clone(),
            fully_refunded: true,
        });
        v.push(Event::RefundAnswered {
            answer: a.clone(),
            fully_refunded: false,
        });
    }
    for i in [
        Inquiry::Paid,
        Inquiry::Declined {
            code: "D".into(),
            message: "m".into(),
        },
        Inquiry::Closed,
        Inquiry::Pending {
            status: "PROCESSING".into(),
        },
        Inquiry::NotFound,
        Inquiry::Failed {
            code: "PROCESS_FAIL".into(),
        },
        Inquiry::Unknown { why: "w".into() },
    ] {
        v.push(Event::Inquired(i.clone()));
        v.push(Event::LastInquiry(i));
    }
    for paid in [true, false] {
        for amount_matches in [true, false] {
            v.push(Event::Notified {
                paid,
                amount_matches,
            });
        }
    }
    v
}

fn target(d: &Decision) -> Option<State> {
    match d {
        Decision::Go { to, .. } => Some(*to),
        _ => None,
    }
}

#[test]
fn state_names_round_trip() {
    for s in ALL_STATES {
        assert_eq!(State::parse(s.as_str()), Some(s));
    }
    assert_eq!(State::parse("paying"), None);
}

#[test]
fn final_stays_final_except_refunds_and_the_queue() {
    let ctx = Context::default();
    for s in ALL_STATES.into_iter().filter(|s| s.is_final()) {
        for e in all_events() {
            let d = decide(s, &ctx, &e);
            if let Some(to) = target(&d) {
                let allowed = matches!(
                    (s, &e),
                    (
                        State::Succeeded | State::PartiallyRefunded,
                        Event::RefundRequested
                    ) | (
                        State::CancelQueued,
                        Event::QueuedCancelConfirmed
                            // The queued cancel reversed a charge: refunded.
                            | Event::CancelRefunded
                            | Event::QueuedRefundConfirmed { .. }
                            | Event::QueueGaveUp { .. }
                            // The queued cancel's last word: never charged.
                            | Event::LastInquiry(Inquiry::NotFound)
                    ) | (
                        State::Failed | State::Cancelled | State::CancelQueued,
                        Event::StatementShowsCharge { .. }
                    ) | (
                        State::NeedsAttention,
                        Event::StatementReversalQueued | Event::Resolved { .. }
                    )
                );
                assert!(allowed, "{s} moved to {to} on {e:?}");
            }
        }
    }
}

#[test]
fn a_success_never_overrides_a_decision_to_cancel() {
    let ctx = Context::default();
    for s in [State::Cancelling, State::CancelQueued, State::Cancelled] {
        for e in [
            Event::PayAnswered(Answer::Success),
            Event::Inquired(Inquiry::Paid),
            Event::Notified {
                paid: true,
                amount_matches: true,
            },
        ] {
            let d = decide(s, &ctx, &e);
            assert_ne!(target(&d), Some(State::Succeeded), "{s} on {e:?}");
            assert!(matches!(d, Decision::Ignore { .. }), "{s} on {e:?}: {d:?}");
        }
    }
}

#[test]
fn only_open_sales_can_succeed() {
    let ctx = Context::default();
    for s in ALL_STATES {
        for e in all_events() {
            if target(&decide(s, &ctx, &e)) == Some(State::Succeeded) {
                // Besides the gateway's answer, only a human who checked the gateway.
                let resolved = s == State::NeedsAttention && matches!(e, Event::Resolved { .. });
                assert!(
                    s.accepts_payment_result() || resolved,
                    "{s} succeeded on {e:?}"
                );
            }
        }
    }
}

#[test]
fn every_state_event_pair_is_decided_without_panic_and_loops_have_an_effect() {
    let ctx = Context::default();
    for s in ALL_STATES {
        for e in all_events() {
            if let Decision::Go { to, effect, .. } = decide(s, &ctx, &e) {
                if to == s {
                    assert_ne!(effect, Effect::None, "{s} on {e:?} stays without an effect");
                }
                if to.is_final() && to != State::CancelQueued && to != s {
                    assert_eq!(effect, Effect::None, "{s} -> {to} on {e:?}");
                }
            }
        }
    }
}

#[test]
fn pay_answers() {
    let ctx = Context::default();
    let d = decide(State::Paying, &ctx, &Event::PayAnswered(Answer::Success));
    assert_eq!(target(&d), Some(State::Succeeded));
    let d = decide(
        State::Paying,
        &ctx,
        &Event::PayAnswered(failed("USER_BALANCE_NOT_ENOUGH")),
    );
    assert!(
        matches!(d, Decision::Go { to: State::Failed, ref result_code, .. } if result_code.as_deref() == Some("USER_BALANCE_NOT_ENOUGH"))
    );
    let d = decide(State::Paying, &ctx, &Event::PayAnswered(unknown()));
    assert!(matches!(
        d,
        Decision::Go {
            to: State::Inquiring,
            effect: Effect::Inquire,
            ..
        }
    ));
}

#[test]
fn inquiries_count_down_to_a_cancel() {
    let mut ctx = Context {
        inquiry_max: 10,
        ..Context::default()
    };
    for done in 0..9 {
        ctx.inquiries_done = done;
        for i in [
            Inquiry::Pending {
                status: "PROCESSING".into(),
            },
            Inquiry::Pending {
                status: "PENDING".into(),
            },
            Inquiry::NotFound,
            Inquiry::Unknown { why: "t".into() },
        ] {
            let d = decide(State::Inquiring, &ctx, &Event::Inquired(i));
            assert!(
                matches!(
                    d,
                    Decision::Go {
                        to: State::Inquiring,
                        effect: Effect::Inquire,
                        ..
                    }
                ),
                "{done}: {d:?}"
            );
        }
    }
    ctx.inquiries_done = 9;
    let d = decide(State::Inquiring, &ctx, &Event::Inquired(Inquiry::NotFound));
    assert!(matches!(
        d,
        Decision::Go {
            to: State::Cancelling,
            effect: Effect::Cancel,
            ..
        }
    ));
    ctx.inquiries_done = 0;
    let d = decide(
        State::Inquiring,
        &ctx,
        &Event::Inquired(Inquiry::Failed {
            code: "PROCESS_FAIL".into(),
        }),
    );
    assert_eq!(target(&d), Some(State::Cancelling));
    assert_eq!(
        target(&decide(
            State::Inquiring,
            &ctx,
            &Event::Inquired(Inquiry::Paid)
        )),
        Some(State::Succeeded)
    );
    assert_eq!(
        target(&decide(
            State::Inquiring,
            &ctx,
            &Event::Inquired(Inquiry::Closed)
        )),
        Some(State::Cancelled)
    );
    assert_eq!(
        target(&decide(
            State::Inquiring,
            &ctx,
            &Event::Inquired(Inquiry::Declined {
                code: "D".into(),
                message: String::new()
            })
        )),
        Some(State::Failed)
    );
}

#[test]
fn cancel_outcomes() {
    let ctx = Context::default();
    assert_eq!(
        target(&decide(
            State::Cancelling,
            &ctx,
            &Event::CancelAnswered(Answer::Success)
        )),
        Some(State::Cancelled)
    );
    // Too late to cancel: a refund, which needs the paymentId. Until an answer gives it, the
    // reversal stays owed as a cancel (resent, then queued), never a human's task.
    assert_eq!(
        decide(
            State::Cancelling,
            &ctx,
            &Event::CancelAnswered(window_passed())
        ),
        Decision::Ignore {
            why: "cancel window passed; the gateway has not given the paymentId the refund needs yet, so the cancel stays owed",
            effect: Effect::Cancel
        }
    );
    let d = decide(
        State::Cancelling,
        &Context {
            gateway_saw_payment: true,
            ..ctx
        },
        &Event::CancelAnswered(window_passed()),
    );
    assert!(matches!(
        d,
        Decision::Go {
            to: State::Refunding,
            effect: Effect::Refund,
            ..
        }
    ));
    // The gateway never saw the pay (no paymentId ever) and it can no longer arrive: one last
    // inquiry, then not charged (`no_such_payment_means_not_arrived_yet_until_the_expiry`).
    let gone = Event::CancelAnswered(no_such_payment());
    assert_eq!(
        decide(State::Cancelling, &ctx, &gone),
        Decision::Ignore {
            why: "the gateway has no record of the payment and the pay's expiry has passed; one last inquiry",
            effect: Effect::LastInquiry
        }
    );
    assert_eq!(
        target(&decide(
            State::Cancelling,
            &ctx,
            &Event::LastInquiry(Inquiry::NotFound)
        )),
        Some(State::Failed)
    );
    // It did see it and now denies it: a human must look.
    let seen = Context {
        gateway_saw_payment: true,
        ..ctx
    };
    assert_eq!(
        target(&decide(State::Cancelling, &seen, &gone)),
        Some(State::NeedsAttention)
    );
    let other = Event::CancelAnswered(failed("ORDER_STATUS_INVALID"));
    assert_eq!(
        target(&decide(State::Cancelling, &seen, &other)),
        Some(State::NeedsAttention)
    );
    assert_eq!(
        target(&decide(State::Cancelling, &ctx, &other)),
        Some(State::NeedsAttention)
    );
    assert_eq!(
        decide(State::Cancelling, &ctx, &Event::CancelAnswered(unknown())),
        Decision::Ignore {
            why: "cancel unanswered; resending the identical request",
            effect: Effect::Cancel
        }
    );
    let d = decide(State::Cancelling, &ctx, &Event::CancelWindowOver);
    assert!(matches!(
        d,
        Decision::Go {
            to: State::CancelQueued,
            effect: Effect::EnqueueCancel,
            ..
        }
    ));
}

#[test]
fn refund_outcomes_depend_on_the_kind() {
    let rev = Context {
        refund_kind: RefundKind::Reversal,
        ..Context::default()
    };
    let req = Context {
        refund_kind: RefundKind::Requested,
        refund_return_to: State::PartiallyRefunded,
        ..Context::default()
    };
    let ok = |full| Event::RefundAnswered {
        answer: Answer::Success,
        fully_refunded: full,
    };
    assert_eq!(
        target(&decide(State::Refunding, &rev, &ok(true))),
        Some(State::Refunded)
    );
    assert_eq!(
        target(&decide(State::Refunding, &req, &ok(false))),
        Some(State::PartiallyRefunded)
    );
    let no = Event::RefundAnswered {
        answer: failed("REFUND_WINDOW_EXCEED"),
        fully_refunded: true,
    };
    assert_eq!(
        target(&decide(State::Refunding, &rev, &no)),
        Some(State::NeedsAttention)
    );
    assert_eq!(
        target(&decide(State::Refunding, &req, &no)),
        Some(State::PartiallyRefunded)
    );
    assert!(matches!(
        decide(State::Refunding, &rev, &Event::RefundWindowOver),
        Decision::Go {
            to: State::CancelQueued,
            effect: Effect::EnqueueRefund,
            ..
        }
    ));
    assert!(matches!(
        decide(State::Refunding, &req, &Event::RefundWindowOver),
        Decision::Go {
            to: State::Refunding,
            effect: Effect::EnqueueRefund,
            ..
        }
    ));
    for s in ALL_STATES {
        let d = decide(s, &req, &Event::RefundRequested);
        let ok = matches!(s, State::Succeeded | State::PartiallyRefunded);
        assert_eq!(
            matches!(
                d,
                Decision::Go {
                    to: State::Refunding,
                    ..
                }
            ),
            ok,
            "{s}"
        );
        assert_eq!(matches!(d, Decision::Refuse { .. }), !ok, "{s}");
    }
}

#[test]
fn notifications_apply_only_to_open_sales_and_check_the_amount() {
    let ctx = Context::default();
    for s in ALL_STATES {
        let d = decide(
            s,
            &ctx,
            &Event::Notified {
                paid: true,
                amount_matches: true,
            },
        );
        if s.accepts_payment_result() {
            assert_eq!(target(&d), Some(State::Succeeded));
            let d = decide(
                s,
                &ctx,
                &Event::Notified {
                    paid: true,
                    amount_matches: false,
                },
            );
            assert_eq!(target(&d), Some(State::NeedsAttention));
            let d = decide(
                s,
                &ctx,
                &Event::Notified {
                    paid: false,
                    amount_matches: true,
                },
            );
            assert_eq!(target(&d), Some(State::Failed));
        } else {
            assert!(matches!(d, Decision::Ignore { .. }), "{s}");
        }
    }
}

#[test]
fn abort_is_a_cancel_and_refused_when_final() {
    let ctx = Context::default();
    for s in ALL_STATES {
        let d = decide(s, &ctx, &Event::Abort);
        match s {
            State::Paying | State::Inquiring => {
                assert!(matches!(
                    d,
                    Decision::Go {
                        to: State::Cancelling,
                        effect: Effect::Cancel,
                        ..
                    }
                ))
            }
            State::AwaitingCode => assert_eq!(target(&d), Some(State::Cancelled)),
            State::Cancelling | State::CancelQueued => {
                assert!(matches!(d, Decision::Ignore { .. }))
            }
            _ => assert!(matches!(d, Decision::Refuse { .. }), "{s}: {d:?}"),
        }
    }
}

#[test]
fn restart_resumes_every_open_state() {
    let ctx = Context::default();
    for s in ALL_STATES {
        let d = decide(s, &ctx, &Event::Restarted);
        let effect = match &d {
            Decision::Go { effect, .. } | Decision::Ignore { effect, .. } => *effect,
            Decision::Refuse { .. } => panic!("restart refused for {s}"),
        };
        match s {
            State::AwaitingCode => assert_eq!(target(&d), Some(State::Cancelled)),
            State::Paying => assert_eq!(
                (target(&d), effect),
                (Some(State::Inquiring), Effect::Inquire)
            ),
            State::Inquiring => assert_eq!(effect, Effect::Inquire),
            State::Cancelling => assert_eq!(effect, Effect::Cancel),
            State::Refunding => assert_eq!(effect, Effect::Refund),
            _ => assert_eq!(effect, Effect::None, "{s}"),
        }
    }
}

#[test]
fn the_back_office_moves_only_what_needs_a_human() {
    let ctx = Context::default();
    let shows = Event::StatementShowsCharge {
        statement: "transactionItems_20261121_000.csv line 3".into(),
    };
    for s in [State::Failed, State::Cancelled, State::CancelQueued] {
        let d = decide(s, &ctx, &shows);
        assert_eq!(target(&d), Some(State::NeedsAttention), "{s}");
        let Decision::Go { cause, .. } = d else {
            unreachable!()
        };
        assert!(cause.contains("line 3"), "{cause}");
    }
    // Already flagged, or a sale posd holds as paid: nothing to write.
    for s in [State::NeedsAttention, State::Succeeded, State::Refunded] {
        assert!(
            matches!(decide(s, &ctx, &shows), Decision::Ignore { .. }),
            "{s}"
        );
    }
    assert_eq!(
        target(&decide(
            State::NeedsAttention,
            &ctx,
            &Event::StatementReversalQueued
        )),
        Some(State::CancelQueued)
    );
    assert!(matches!(
        decide(State::Failed, &ctx, &Event::StatementReversalQueued),
        Decision::Refuse { .. }
    ));
    for to in ALL_STATES {
        let e = Event::Resolved {
            to,
            reason: "checked the portal".into(),
        };
        let ok = matches!(
            to,
            State::Succeeded | State::Failed | State::Cancelled | State::Refunded
        );
        assert_eq!(
            target(&decide(State::NeedsAttention, &ctx, &e)),
            ok.then_some(to),
            "{to}"
        );
        for s in ALL_STATES
            .into_iter()
            .filter(|s| *s != State::NeedsAttention)
        {
            assert!(
                matches!(decide(s, &ctx, &e), Decision::Refuse { .. }),
                "{s} -> {to}"
            );
        }
    }
}

/// Contexts around a pay that stops being processable at `DEAD` (its expiry plus the margin).
const DEAD: i64 = 1_000_000;

fn at(now_ms: i64, pay_dead_at: Option<i64>, saw: bool) -> Context {
    Context {
        now_ms,
        pay_dead_at,
        gateway_saw_payment: saw,
        ..Context::default()
    }
}

#[test]
fn no_such_payment_means_not_arrived_yet_until_the_expiry() {
    let before = [at(0, Some(DEAD), false), at(DEAD - 1, Some(DEAD), false)];
    let after = [
        at(DEAD, Some(DEAD), false),
        at(DEAD + 60_000, Some(DEAD), false),
        // No pay with an expiry was ever sent (a sale from before the expiry was recorded).
        at(5, None, false),
    ];
    for s in [State::Cancelling, State::CancelQueued] {
        let gone = Event::CancelAnswered(no_such_payment());
        for ctx in &before {
            assert!(ctx.pay_may_still_arrive());
            // The cancel stays owed: resent by the payment's task, retried by the queue.
            assert!(
                matches!(
                    decide(s, ctx, &gone),
                    Decision::Ignore {
                        effect: Effect::Cancel,
                        ..
                    }
                ),
                "{s} {ctx:?}"
            );
            // Even a "no such payment" from the last inquiry changes nothing while the pay may
            // still arrive.
            assert!(matches!(
                decide(s, ctx, &Event::LastInquiry(Inquiry::NotFound)),
                Decision::Ignore {
                    effect: Effect::Cancel,
                    ..
                }
            ));
        }
        for ctx in &after {
            assert!(!ctx.pay_may_still_arrive());
            assert!(matches!(
                decide(s, ctx, &gone),
                Decision::Ignore {
                    effect: Effect::LastInquiry,
                    ..
                }
            ));
            assert!(matches!(
                decide(s, ctx, &Event::LastInquiry(Inquiry::NotFound)),
                Decision::Go {
                    to: State::Failed,
                    effect: Effect::None,
                    ..
                }
            ));
        }
    }
    // The gateway once gave a paymentId and now denies the payment: a human looks.
    assert_eq!(
        target(&decide(
            State::Cancelling,
            &at(DEAD + 1, Some(DEAD), true),
            &Event::CancelAnswered(no_such_payment())
        )),
        Some(State::NeedsAttention)
    );
    assert!(matches!(
        decide(
            State::Cancelling,
            &at(DEAD + 1, Some(DEAD), true),
            &Event::LastInquiry(Inquiry::NotFound)
        ),
        Decision::Ignore {
            effect: Effect::Cancel,
            ..
        }
    ));
}

#[test]
fn the_last_inquiry_concludes_never_charged_only_on_no_such_payment() {
    let ctx = at(DEAD, Some(DEAD), false);
    for i in [
        Inquiry::Paid,
        Inquiry::Declined {
            code: "D".into(),
            message: "m".into(),
        },
        Inquiry::Closed,
        Inquiry::Pending {
            status: "PROCESSING".into(),
        },
        Inquiry::Failed {
            code: "PROCESS_FAIL".into(),
        },
        Inquiry::Unknown { why: "w".into() },
    ] {
        for s in [State::Cancelling, State::CancelQueued] {
            assert!(
                matches!(
                    decide(s, &ctx, &Event::LastInquiry(i.clone())),
                    Decision::Ignore {
                        effect: Effect::Cancel,
                        ..
                    }
                ),
                "{s} {i:?}: the cancel stays owed"
            );
        }
    }
    // Outside a reversal the last inquiry means nothing.
    for s in ALL_STATES
        .into_iter()
        .filter(|s| !matches!(s, State::Cancelling | State::CancelQueued))
    {
        assert_eq!(
            target(&decide(s, &ctx, &Event::LastInquiry(Inquiry::NotFound))),
            None,
            "{s}"
        );
    }
}

#[test]
fn never_failed_while_the_pay_may_still_arrive() {
    // Whatever happens to a payment that is being reversed, it is never declared "not charged"
    // (FAILED) while a pay the gateway has not seen may still reach it.
    for ctx in [at(0, Some(DEAD), false), at(DEAD - 1, Some(DEAD), false)] {
        for s in [State::Cancelling, State::CancelQueued] {
            for e in all_events() {
                assert_ne!(
                    target(&decide(s, &ctx, &e)),
                    Some(State::Failed),
                    "{s} on {e:?}"
                );
            }
        }
    }
}

#[test]
fn a_cancel_that_refunded_a_charge_ends_refunded_from_the_task_and_the_queue_alike() {
    let ctx = Context::default();
    for s in [State::Cancelling, State::CancelQueued] {
        assert_eq!(
            decide(s, &ctx, &Event::CancelRefunded),
            Decision::Go {
                to: State::Refunded,
                cause:
                    "cancel confirmed: the gateway had charged the payment and refunded it in full"
                        .into(),
                result_code: None,
                effect: Effect::None,
            },
            "{s}"
        );
    }
    // Anywhere else it is a late or duplicate answer: nothing moves.
    for s in ALL_STATES
        .into_iter()
        .filter(|s| !matches!(s, State::Cancelling | State::CancelQueued))
    {
        assert!(
            matches!(
                decide(s, &ctx, &Event::CancelRefunded),
                Decision::Ignore { .. }
            ),
            "{s}"
        );
    }
}
