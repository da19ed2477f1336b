//! The payment state machine as a pure function: a state and an event in, the next state,
//! the journal cause and the next effect out. No I/O and no clock; the engine performs the
//! effects and commits each transition with compare-and-set (rule 5).

use std::fmt;

/// Every state a payment can be in (docs/design.md "States", the outside contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// A sale was started without a code; the next scan binds to it.
    AwaitingCode,
    /// The pay intent is committed; the pay request is being sent or awaited.
    Paying,
    /// The pay answer was unknown; inquiring every `inquiry_interval`.
    Inquiring,
    /// A cancel is owed and being sent, resent with the identical request.
    Cancelling,
    /// A refund is owed and being sent (a reversal past the cancel window, or the back office's).
    Refunding,
    /// Paid.
    Succeeded,
    /// The gateway said no; the customer was not charged.
    Failed,
    /// Reversed and confirmed by the gateway.
    Cancelled,
    /// The customer must be treated as not charged; the reversal is in the queue.
    CancelQueued,
    /// Fully refunded.
    Refunded,
    /// Part of the amount refunded.
    PartiallyRefunded,
    /// A human must act; the reason is stored.
    NeedsAttention,
}

/// All states, for exhaustive tests and parsing.
pub const ALL_STATES: [State; 12] = [
    State::AwaitingCode,
    State::Paying,
    State::Inquiring,
    State::Cancelling,
    State::Refunding,
    State::Succeeded,
    State::Failed,
    State::Cancelled,
    State::CancelQueued,
    State::Refunded,
    State::PartiallyRefunded,
    State::NeedsAttention,
];

impl State {
    /// The wire and database name, e.g. `CANCEL_QUEUED`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::AwaitingCode => "AWAITING_CODE",
            State::Paying => "PAYING",
            State::Inquiring => "INQUIRING",
            State::Cancelling => "CANCELLING",
            State::Refunding => "REFUNDING",
            State::Succeeded => "SUCCEEDED",
            State::Failed => "FAILED",
            State::Cancelled => "CANCELLED",
            State::CancelQueued => "CANCEL_QUEUED",
            State::Refunded => "REFUNDED",
            State::PartiallyRefunded => "PARTIALLY_REFUNDED",
            State::NeedsAttention => "NEEDS_ATTENTION",
        }
    }

    /// Parses the name written by [`State::as_str`].
    pub fn parse(s: &str) -> Option<State> {
        ALL_STATES.iter().copied().find(|st| st.as_str() == s)
    }

    /// Final for the sale: the cashier can be told. (`CANCEL_QUEUED` is final for the cashier;
    /// the queue may still move it.)
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            State::AwaitingCode
                | State::Paying
                | State::Inquiring
                | State::Cancelling
                | State::Refunding
        )
    }

    /// States in which a pay answer, an inquiry or a notification may still settle the sale:
    /// not final and not being cancelled (docs/design.md, flow step 5).
    pub fn accepts_payment_result(self) -> bool {
        matches!(self, State::Paying | State::Inquiring)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a gateway's definitive "no" means to the machine. Each dialect's adapter maps its own
/// result codes to these; the code itself travels beside them for the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway has no record of the payment (it may not have arrived yet).
    NoSuchPayment,
    /// Too late to cancel: the payment must be refunded instead.
    CancelWindowPassed,
    /// Any other refusal: a human reads the code and message.
    Other,
}

/// A gateway answer to pay, cancel or refund, reduced to what the machine branches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Verified success.
    Success,
    /// A definitive refusal: what it means, and the gateway's code and message as given.
    Failed {
        refusal: Refusal,
        code: String,
        message: String,
    },
    /// No certain answer.
    Unknown { why: String },
}

impl Answer {
    /// Whether the gateway gave a certain answer (the network works).
    pub fn is_certain(&self) -> bool {
        !matches!(self, Answer::Unknown { .. })
    }
}

/// An inquiry answer, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inquiry {
    /// `paymentStatus = SUCCESS`.
    Paid,
    /// `paymentStatus = FAIL`, with `paymentResultCode`.
    Declined { code: String, message: String },
    /// `paymentStatus = CANCELLED`.
    Closed,
    /// `PROCESSING`, `PENDING`, or an unknown status: keep going.
    Pending { status: String },
    /// The gateway has no record of the payment: the pay may not have arrived yet; keep going.
    NotFound,
    /// Any other refusal of the inquiry call: go to cancel.
    Failed { code: String },
    /// No certain answer: keep going.
    Unknown { why: String },
}

impl Inquiry {
    /// Whether the gateway gave a certain answer (the network works).
    pub fn is_certain(&self) -> bool {
        !matches!(self, Inquiry::Unknown { .. })
    }
}

/// Which refund a `Refunding` payment is carrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundKind {
    /// Full refund owed because the cancel window had passed: the sale is being reversed.
    Reversal,
    /// A refund the back office or cashier asked for on a paid sale.
    Requested,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A scan was bound to a sale waiting for a code.
    CodeBound,
    /// The pay call ended.
    PayAnswered(Answer),
    /// One inquiry ended.
    Inquired(Inquiry),
    /// One cancel call ended (sent by the payment's task, or replayed by the queue).
    CancelAnswered(Answer),
    /// The last inquiry before concluding that a payment the gateway does not know was never
    /// charged, made once the pay's expiry (plus the margin) has passed.
    LastInquiry(Inquiry),
    /// One cancel call (the payment's task's, or the queue's) was confirmed by the gateway
    /// reversing a charge: the payment had been charged and the cancel refunded it in full.
    CancelRefunded,
    /// The cancel retry window is over with no certain answer.
    CancelWindowOver,
    /// One refund call ended; `fully_refunded` says whether the captured amount is now all
    /// refunded if this refund succeeded.
    RefundAnswered {
        answer: Answer,
        fully_refunded: bool,
    },
    /// The refund retry window is over with no certain answer.
    RefundWindowOver,
    /// A verified notification: paid (`true`) or failed; `amount_matches` compares amount and
    /// currency with the request exactly.
    Notified { paid: bool, amount_matches: bool },
    /// The cashier aborted the sale.
    Abort,
    /// The back office asked for a refund.
    RefundRequested,
    /// The daemon started and found the payment not final.
    Restarted,
    /// The queue delivered the cancel and the gateway confirmed it.
    QueuedCancelConfirmed,
    /// The queue delivered the refund and the gateway confirmed it.
    QueuedRefundConfirmed { fully_refunded: bool },
    /// The queue delivered the cancel and the gateway answered `CANCEL_WINDOW_EXCEED`: the
    /// full amount is owed as a refund, queued in the same transaction.
    QueuedCancelWindowPassed,
    /// The queue got a definitive F it cannot act on (dead letter), or a human abandoned it.
    QueueGaveUp { reason: String },
    /// The gateway's statement shows a charge that posd holds as not charged (reconciliation);
    /// `statement` names the file and line.
    StatementShowsCharge { statement: String },
    /// The back office queues the full reversal of a charge the statement showed.
    StatementReversalQueued,
    /// An operator settled a payment that needs attention after checking the gateway.
    Resolved { to: State, reason: String },
}

/// What the engine must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing now (final, or waiting for the queue or a scan).
    None,
    /// Send the pay request.
    SendPay,
    /// Inquire after `inquiry_interval`.
    Inquire,
    /// Send (or resend the identical) cancel.
    Cancel,
    /// Send (or resend the identical) refund.
    Refund,
    /// Put the owed cancel in the durable queue (in the same transaction as the state change).
    EnqueueCancel,
    /// Put the owed refund in the durable queue (likewise).
    EnqueueRefund,
    /// Inquire once, now, and report it as [`Event::LastInquiry`].
    LastInquiry,
}

/// Facts the machine needs besides the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Inquiries answered so far in this budget, not counting the one in the event.
    pub inquiries_done: u32,
    /// The inquiry budget (`inquiry_max`).
    pub inquiry_max: u32,
    /// Which refund a `Refunding` payment carries.
    pub refund_kind: RefundKind,
    /// Where a `Requested` refund that the gateway declines returns to.
    pub refund_return_to: State,
    /// Whether any gateway answer ever showed it knew this payment (it gave a `paymentId`).
    pub gateway_saw_payment: bool,
    /// Now, epoch ms (time is an input: the machine never reads a clock).
    pub now_ms: i64,
    /// From when the pay can no longer reach the gateway and be processed: its expiry plus the
    /// clock-skew margin, epoch ms. `None` when no pay with an expiry was ever sent.
    pub pay_dead_at: Option<i64>,
}

impl Context {
    /// Whether a pay the gateway has no record of may still arrive and be charged. Until it
    /// cannot, "no such payment" means "not arrived yet", never "not charged".
    pub fn pay_may_still_arrive(&self) -> bool {
        self.pay_dead_at.is_some_and(|dead| self.now_ms < dead)
    }
}

impl Default for Context {
    fn default() -> Self {
        Context {
            inquiries_done: 0,
            inquiry_max: 10,
            refund_kind: RefundKind::Reversal,
            refund_return_to: State::Succeeded,
            gateway_saw_payment: false,
            now_ms: 0,
            pay_dead_at: None,
        }
    }
}

/// The machine's answer to an event. A `result_code` is the one the machine itself decided on
/// (a refusal's code, `AMOUNT_MISMATCH`); when it gives none, the transition records the code
/// the answer carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Move to `to` (may equal the current state only when `effect` continues a loop: then
    /// nothing is written), record `cause` and `result_code`, then perform `effect`.
    Go {
        to: State,
        cause: String,
        result_code: Option<String>,
        effect: Effect,
    },
    /// The event changes nothing (a late or duplicate answer); `why` is logged.
    Ignore { why: &'static str, effect: Effect },
    /// The request behind the event is refused (e.g. abort of a final payment).
    Refuse { why: String },
}

fn go(to: State, cause: impl Into<String>, code: Option<&str>, effect: Effect) -> Decision {
    Decision::Go {
        to,
        cause: cause.into(),
        result_code: code.map(str::to_string),
        effect,
    }
}

/// The effect a payment in `state` needs when a driver (re)starts on it.
pub fn resume_effect(state: State) -> Effect {
    match state {
        State::Paying | State::Inquiring => Effect::Inquire,
        State::Cancelling => Effect::Cancel,
        State::Refunding => Effect::Refund,
        _ => Effect::None,
    }
}

/// The transition function.
pub fn decide(state: State, ctx: &Context, event: &Event) -> Decision {
    use State as S;
    match (state, event) {
        // A sale waiting for its code.
        (S::AwaitingCode, Event::CodeBound) => go(S::Paying, "code scanned", None, Effect::SendPay),
        (S::AwaitingCode, Event::Abort) => go(
            S::Cancelled,
            "aborted by the cashier before a code was scanned; nothing was sent",
            None,
            Effect::None,
        ),
        (S::AwaitingCode, Event::Restarted) => go(
            S::Cancelled,
            "daemon restarted before a code was scanned; nothing was sent",
            None,
            Effect::None,
        ),

        // The answer to pay.
        (S::Paying, Event::PayAnswered(a)) => match a {
            Answer::Success => go(S::Succeeded, "pay succeeded", None, Effect::None),
            Answer::Failed { code, .. } => go(S::Failed, "pay declined", Some(code), Effect::None),
            Answer::Unknown { why } => go(
                S::Inquiring,
                format!("pay result unknown ({why}); inquiring"),
                None,
                Effect::Inquire,
            ),
        },
        // A verified pay answer after inquiries began (a late answer after a restart) is still
        // a certain result while the sale is open.
        (S::Inquiring, Event::PayAnswered(Answer::Success)) => go(
            S::Succeeded,
            "late pay answer: succeeded",
            None,
            Effect::None,
        ),
        (S::Inquiring, Event::PayAnswered(Answer::Failed { code, .. })) => go(
            S::Failed,
            "late pay answer: declined",
            Some(code),
            Effect::None,
        ),

        // Inquiries.
        (S::Inquiring, Event::Inquired(i)) => {
            let exhausted = ctx.inquiries_done + 1 >= ctx.inquiry_max;
            let keep_going = |what: String| {
                if exhausted {
                    go(
                        S::Cancelling,
                        format!(
                            "no final result after {} inquiries ({what}); cancelling",
                            ctx.inquiries_done + 1
                        ),
                        None,
                        Effect::Cancel,
                    )
                } else {
                    Decision::Go {
                        to: S::Inquiring,
                        cause: what,
                        result_code: None,
                        effect: Effect::Inquire,
                    }
                }
            };
            match i {
                Inquiry::Paid => go(S::Succeeded, "inquiry: paid", None, Effect::None),
                Inquiry::Declined { code, .. } => go(
                    S::Failed,
                    "inquiry: payment failed",
                    Some(code),
                    Effect::None,
                ),
                Inquiry::Closed => go(
                    S::Cancelled,
                    "inquiry: the gateway closed the payment",
                    None,
                    Effect::None,
                ),
                Inquiry::Pending { status } => keep_going(format!("inquiry: {status}")),
                Inquiry::NotFound => keep_going("inquiry: the gateway has no record yet".into()),
                Inquiry::Unknown { why } => keep_going(format!("inquiry unanswered: {why}")),
                Inquiry::Failed { code } => go(
                    S::Cancelling,
                    format!("inquiry failed with {code}; cancelling"),
                    Some(code),
                    Effect::Cancel,
                ),
            }
        }

        // Notifications settle only an open sale that is not being cancelled.
        (
            S::Paying | S::Inquiring,
            Event::Notified {
                paid,
                amount_matches,
            },
        ) => {
            if !amount_matches {
                go(
                    S::NeedsAttention,
                    "notification amount or currency differs from the request",
                    Some("AMOUNT_MISMATCH"),
                    Effect::None,
                )
            } else if *paid {
                go(
                    S::Succeeded,
                    "notification: paid",
                    None,
                    Effect::None,
                )
            } else {
                go(
                    S::Failed,
                    "notification: payment failed",
                    None,
                    Effect::None,
                )
            }
        }
        (_, Event::Notified { .. }) => Decision::Ignore {
            why: "notification for a payment that is final or being cancelled",
            effect: Effect::None,
        },

        // The cashier aborts.
        (S::Paying | S::Inquiring, Event::Abort) => go(
            S::Cancelling,
            "aborted by the cashier; cancelling",
            None,
            Effect::Cancel,
        ),
        (S::Cancelling | S::CancelQueued, Event::Abort) => Decision::Ignore {
            why: "already being reversed",
            effect: Effect::None,
        },
        (S::Refunding, Event::Abort) => Decision::Refuse {
            why: "a refund is in progress; it cannot be aborted".into(),
        },
        (s, Event::Abort) => Decision::Refuse {
            why: format!("payment is already {s}; to give money back, refund it"),
        },

        // "No such payment" on a cancel, from the payment's task or the queue alike: while the
        // pay may still arrive it means "not arrived yet" and the cancel stays owed (resent,
        // then queued); once it cannot, one last inquiry decides.
        (
            S::Cancelling | S::CancelQueued,
            Event::CancelAnswered(Answer::Failed {
                refusal: Refusal::NoSuchPayment,
                ..
            }),
        ) if !ctx.gateway_saw_payment => {
            if ctx.pay_may_still_arrive() {
                Decision::Ignore {
                    why: "the gateway has no record of the payment yet; the pay may still arrive before its expiry, so the cancel stays owed",
                    effect: Effect::Cancel,
                }
            } else {
                Decision::Ignore {
                    why: "the gateway has no record of the payment and the pay's expiry has passed; one last inquiry",
                    effect: Effect::LastInquiry,
                }
            }
        }
        (S::Cancelling | S::CancelQueued, Event::LastInquiry(i)) => match i {
            Inquiry::NotFound if !ctx.pay_may_still_arrive() && !ctx.gateway_saw_payment => go(
                S::Failed,
                "the gateway has no record of this payment and the pay's expiry has passed: it was never charged",
                None,
                Effect::None,
            ),
            _ => Decision::Ignore {
                why: "the last inquiry did not show the gateway never had the payment; the cancel stays owed",
                effect: Effect::Cancel,
            },
        },

        // Cancels.
        (S::Cancelling, Event::CancelAnswered(a)) => match a {
            Answer::Success => go(
                S::Cancelled,
                "cancel confirmed",
                None,
                Effect::None,
            ),
            Answer::Failed {
                refusal: Refusal::CancelWindowPassed,
                code,
                ..
            } if ctx.gateway_saw_payment => go(
                S::Refunding,
                "cancel window passed; refunding the full amount",
                Some(code),
                Effect::Refund,
            ),
            // The refund owed needs the gateway's paymentId, and neither an answer nor the
            // inquiries made on this refusal gave it: the reversal is not settled, so it stays
            // owed as a cancel (resent, each refusal asking again, then queued, where the queue
            // asks again), as the queue treats the same answer.
            Answer::Failed {
                refusal: Refusal::CancelWindowPassed,
                ..
            } => Decision::Ignore {
                why: "cancel window passed; the gateway has not given the paymentId the refund needs yet, so the cancel stays owed",
                effect: Effect::Cancel,
            },
            Answer::Failed { code, message, .. } => go(
                S::NeedsAttention,
                format!("cancel refused: {code} {message}"),
                Some(code),
                Effect::None,
            ),
            Answer::Unknown { .. } => Decision::Ignore {
                why: "cancel unanswered; resending the identical request",
                effect: Effect::Cancel,
            },
        },
        // The gateway had charged the payment and the cancel gave it all back: a refund, not a
        // cancel (the caller records the full reversal refund as confirmed).
        (S::Cancelling | S::CancelQueued, Event::CancelRefunded) => go(
            S::Refunded,
            "cancel confirmed: the gateway had charged the payment and refunded it in full",
            None,
            Effect::None,
        ),
        (S::Cancelling, Event::CancelWindowOver) => go(
            S::CancelQueued,
            "cancel unanswered for the whole retry window; queued for delivery",
            None,
            Effect::EnqueueCancel,
        ),
        (S::Cancelling, Event::PayAnswered(_) | Event::Inquired(_)) => Decision::Ignore {
            why: "late answer after the terminal decided to cancel; the cancel stays owed",
            effect: Effect::None,
        },

        // Refunds.
        (
            S::Refunding,
            Event::RefundAnswered {
                answer,
                fully_refunded,
            },
        ) => match answer {
            Answer::Success => {
                let to = if *fully_refunded {
                    S::Refunded
                } else {
                    S::PartiallyRefunded
                };
                go(to, "refund confirmed", None, Effect::None)
            }
            Answer::Failed { code, message, .. } => match ctx.refund_kind {
                RefundKind::Reversal => go(
                    S::NeedsAttention,
                    format!("reversal refund refused: {code} {message}"),
                    Some(code),
                    Effect::None,
                ),
                RefundKind::Requested => go(
                    ctx.refund_return_to,
                    format!("refund refused: {code} {message}"),
                    Some(code),
                    Effect::None,
                ),
            },
            Answer::Unknown { .. } => Decision::Ignore {
                why: "refund unanswered; resending the identical request",
                effect: Effect::Refund,
            },
        },
        (S::Refunding, Event::RefundWindowOver) => match ctx.refund_kind {
            RefundKind::Reversal => go(
                S::CancelQueued,
                "reversal refund unanswered for the whole retry window; queued for delivery",
                None,
                Effect::EnqueueRefund,
            ),
            RefundKind::Requested => Decision::Go {
                to: S::Refunding,
                cause: "refund unanswered for the whole retry window; queued for delivery".into(),
                result_code: None,
                effect: Effect::EnqueueRefund,
            },
        },
        (S::Succeeded | S::PartiallyRefunded, Event::RefundRequested) => {
            go(S::Refunding, "refund requested", None, Effect::Refund)
        }
        (s, Event::RefundRequested) => Decision::Refuse {
            why: format!(
                "payment is {s}; only SUCCEEDED or PARTIALLY_REFUNDED payments can be refunded"
            ),
        },

        // The queue finishing what the terminal owed.
        (S::CancelQueued, Event::QueuedCancelConfirmed) => go(
            S::Cancelled,
            "queued cancel confirmed",
            None,
            Effect::None,
        ),
        // The reversal stays owed: the payment waits in CANCEL_QUEUED for the queued refund.
        (S::CancelQueued, Event::QueuedCancelWindowPassed) => go(
            S::CancelQueued,
            "queued cancel refused: the cancel window has passed; the full amount is queued as a refund",
            None,
            Effect::EnqueueRefund,
        ),
        (S::CancelQueued | S::Refunding, Event::QueuedRefundConfirmed { fully_refunded }) => {
            let to = if *fully_refunded {
                S::Refunded
            } else {
                S::PartiallyRefunded
            };
            go(to, "queued refund confirmed", None, Effect::None)
        }
        (S::CancelQueued | S::Refunding, Event::QueueGaveUp { reason }) => go(
            S::NeedsAttention,
            format!("queued reversal given up: {reason}"),
            None,
            Effect::None,
        ),

        // The back office (reconciliation, resolving by hand). A final payment stays final
        // except when the gateway's own statement contradicts it: then a human must look.
        (
            S::Failed | S::Cancelled | S::CancelQueued,
            Event::StatementShowsCharge { statement },
        ) => go(
            S::NeedsAttention,
            format!("the gateway's statement shows this payment charged ({statement}); posd held it as {state}"),
            Some("STATEMENT_CHARGED"),
            Effect::None,
        ),
        (_, Event::StatementShowsCharge { .. }) => Decision::Ignore {
            why: "the statement's charge changes nothing in this state",
            effect: Effect::None,
        },
        (S::NeedsAttention, Event::StatementReversalQueued) => go(
            S::CancelQueued,
            "the statement's charge is reversed: the full amount is queued as a refund",
            None,
            Effect::EnqueueRefund,
        ),
        (s, Event::StatementReversalQueued) => Decision::Refuse {
            why: format!("payment is {s}; only a payment that needs attention can have the statement's charge reversed"),
        },
        (S::NeedsAttention, Event::Resolved { to, reason }) => match to {
            S::Succeeded | S::Failed | S::Cancelled | S::Refunded => go(
                *to,
                format!("resolved by the back office as {to}: {reason}"),
                Some("RESOLVED"),
                Effect::None,
            ),
            other => Decision::Refuse {
                why: format!("a payment can be resolved as SUCCEEDED, FAILED, CANCELLED or REFUNDED, not {other}"),
            },
        },
        (s, Event::Resolved { .. }) => Decision::Refuse {
            why: format!("payment is {s}; only a payment in NEEDS_ATTENTION can be resolved"),
        },

        // Crash recovery (rule 6).
        (S::Paying, Event::Restarted) => go(
            S::Inquiring,
            "daemon restarted; the pay may have been sent: inquiring",
            None,
            Effect::Inquire,
        ),
        (S::Inquiring | S::Cancelling | S::Refunding, Event::Restarted) => Decision::Ignore {
            why: "daemon restarted; resuming",
            effect: resume_effect(state),
        },
        (_, Event::Restarted) => Decision::Ignore {
            why: "final; nothing to resume",
            effect: Effect::None,
        },

        // Everything else is a late or duplicate answer: it changes nothing.
        _ => Decision::Ignore {
            why: "late or duplicate event",
            effect: Effect::None,
        },
    }
}

#[cfg(test)]
mod tests;
