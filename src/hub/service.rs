//! What the hub does with one terminal request: verify (key, enabled, replay window), own
//! (the terminal's own payments; merchant, store and terminal fields from the registry),
//! record before forwarding, forward signed with the merchant key, verify and record the
//! answer, and answer the terminal. Every upstream call for a payment is made while its row
//! lock is held, so the requests of one payment are serialized across instances.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio_postgres::Transaction;

use super::intake::{self, str_at, valid_id};
use super::metrics::HubMetrics;
use super::queue::{self, QueueItem};
use super::registry::{self, Terminal};
use super::upstream::{Answer, AnswerFields, Upstream};
use crate::engine::failpoint;
use crate::gateway::client::Operation;
use crate::gateway::sign::{Message, PrivateKey};

/// The hub's timings and switches, from `hub.toml`.
#[derive(Debug, Clone)]
pub struct HubRules {
    /// How far `Request-Time` may be from the hub's clock.
    pub replay_window: Duration,
    /// Answer a terminal's cancel `S` once it is queued.
    pub reversal_advice: bool,
    /// How long a request waits for a payment's row lock before answering `U`.
    pub lock_timeout: Duration,
    /// `paymentNotifyUrl` put into forwarded pays (the hub's own listener), if any.
    pub notify_url: Option<String>,
    /// The queue's retry rules.
    pub queue: queue::QueueRules,
    /// Added to a forwarded pay's expiry before "no such payment" upstream means "never
    /// charged" (the upstream's clock may run behind ours).
    pub expiry_margin: Duration,
}

impl HubRules {
    /// The rules of a validated `hub.toml`. A request waits for a payment's row lock one
    /// second longer than the longest upstream call made under it.
    pub fn from_config(config: &super::config::HubConfig) -> HubRules {
        let f = &config.flow;
        let longest = config
            .upstream
            .pay_timeout()
            .max(config.upstream.call_timeout());
        HubRules {
            replay_window: config.hub.replay_window.0,
            reversal_advice: config.hub.reversal_advice,
            lock_timeout: longest.saturating_add(Duration::from_secs(1)),
            notify_url: config.upstream.notify_url.clone(),
            expiry_margin: f.payment_expiry_margin.0,
            queue: queue::QueueRules {
                retry_window: f.cancel_retry_window.0,
                retry_min: f.cancel_retry_min.0,
                retry_max: f.cancel_retry_max.0,
                backoff_initial: f.queue_backoff_initial.0,
                backoff_max: f.queue_backoff_max.0,
                max_attempts: f.queue_max_attempts,
                lease: f.lease.0,
            },
        }
    }
}

/// One instance's state.
pub struct Hub {
    /// The database.
    pub pool: Pool,
    /// The gateway the hub forwards to.
    pub upstream: Upstream,
    /// Signs answers to terminals.
    pub hub_key: PrivateKey,
    /// `keyVersion` of those signatures.
    pub key_version: String,
    /// Timings and switches.
    pub rules: HubRules,
    /// Lease owner name and journal name of this instance.
    pub instance: String,
    /// Metrics.
    pub metrics: Arc<HubMetrics>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// The answer to a terminal: a body, signed for the terminal or not (refusals before the
/// terminal is authenticated are unsigned, as the real gateway's signature errors are).
#[derive(Debug, Clone)]
pub struct Reply {
    /// JSON body.
    pub body: Vec<u8>,
    /// The terminal's client id, when the answer is signed.
    pub signed_for: Option<String>,
}

/// The request headers the hub reads.
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders {
    /// `client-id`.
    pub client_id: Option<String>,
    /// `request-time`.
    pub request_time: Option<String>,
    /// `signature`.
    pub signature: Option<String>,
}

/// A `result`-only body.
pub fn result_body(status: &str, code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"result": {
        "resultCode": code, "resultStatus": status, "resultMessage": message}}))
    .expect("json")
}

fn refused(metrics: &HubMetrics, op: Operation, code: &'static str, message: &str) -> Reply {
    metrics.refusal(code);
    metrics.request(op, "refused");
    tracing::warn!(
        operation = op.label(),
        code,
        message,
        "terminal request refused"
    );
    Reply {
        body: result_body("F", code, message),
        signed_for: None,
    }
}

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses a `Request-Time`: epoch milliseconds, or RFC 3339.
pub fn parse_request_time(s: &str) -> Option<i64> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The row of a payment, as read under its lock.
#[derive(Debug, Clone)]
pub struct PaymentRow {
    /// paymentRequestId.
    pub id: String,
    /// Owner.
    pub client_id: String,
    /// Hub state.
    pub state: String,
    /// Hash of the terminal's pay body (`None`: a cancel came first).
    pub body_hash: Option<Vec<u8>>,
    /// The forwarded pay body, payment code masked.
    pub forward_body: Option<Vec<u8>>,
    /// Amount in minor units.
    pub amount_minor: Option<i64>,
    /// Currency.
    pub currency: Option<String>,
    /// Upstream id.
    pub payment_id: Option<String>,
    /// The verified final pay answer.
    pub pay_answer: Option<Vec<u8>>,
    /// The verified cancel answer.
    pub cancel_answer: Option<Vec<u8>>,
    /// Whether the terminal asked to cancel.
    pub terminal_cancelled: bool,
    /// Refunded so far.
    pub refunded_minor: i64,
    /// When the pay (or the first cancel) arrived, epoch ms.
    pub received_ms: i64,
}

/// How long after a pay arrived the hub assumes it may still reach the upstream when its
/// body names no `paymentExpiryTime` (the gateway's usual default is 3 minutes).
pub const DEFAULT_PAY_LIFETIME_MS: i64 = 180_000;

impl PaymentRow {
    /// Until when (epoch ms) the forwarded pay may still reach the upstream and be charged:
    /// its `paymentExpiryTime` (or the default lifetime) plus a clock margin. `None` when no
    /// pay was ever forwarded for this id (a cancel came first).
    pub fn pay_may_arrive_until(&self, margin: Duration) -> Option<i64> {
        let body = self.forward_body.as_ref()?;
        let expiry = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("paymentExpiryTime")?.as_str().map(str::to_string))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(self.received_ms + DEFAULT_PAY_LIFETIME_MS);
        Some(expiry + margin.as_millis() as i64)
    }
}

const PAYMENT_COLUMNS: &str = "payment_request_id, client_id, state, body_hash, forward_body, \
     amount_minor, currency, payment_id, pay_answer, cancel_answer, \
     terminal_cancel_at IS NOT NULL, refunded_minor, \
     (extract(epoch from received_at) * 1000)::bigint";

fn payment_from_row(r: &tokio_postgres::Row) -> PaymentRow {
    PaymentRow {
        id: r.get(0),
        client_id: r.get(1),
        state: r.get(2),
        body_hash: r.get(3),
        forward_body: r.get(4),
        amount_minor: r.get(5),
        currency: r.get(6),
        payment_id: r.get(7),
        pay_answer: r.get(8),
        cancel_answer: r.get(9),
        terminal_cancelled: r.get(10),
        refunded_minor: r.get(11),
        received_ms: r.get(12),
    }
}

/// Sets the lock wait bound of this transaction.
pub async fn set_lock_timeout(tx: &Transaction<'_>, t: Duration) -> anyhow::Result<()> {
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        t.as_millis().max(1)
    ))
    .await?;
    Ok(())
}

/// Reads a payment with `FOR UPDATE` (its row lock).
pub async fn lock_payment(tx: &Transaction<'_>, id: &str) -> anyhow::Result<Option<PaymentRow>> {
    let row = tx
        .query_opt(
            &format!("SELECT {PAYMENT_COLUMNS} FROM hub_payments WHERE payment_request_id = $1 FOR UPDATE"),
            &[&id],
        )
        .await
        .context("cannot lock the payment")?;
    Ok(row.as_ref().map(payment_from_row))
}

/// Reads a payment without locking.
pub async fn read_payment(
    client: &impl tokio_postgres::GenericClient,
    id: &str,
) -> anyhow::Result<Option<PaymentRow>> {
    let row = client
        .query_opt(
            &format!("SELECT {PAYMENT_COLUMNS} FROM hub_payments WHERE payment_request_id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(payment_from_row))
}

/// Appends a journal event.
#[allow(
    clippy::too_many_arguments,
    reason = "one journal row: every column is an argument"
)]
pub async fn event(
    tx: &Transaction<'_>,
    instance: &str,
    id: &str,
    kind: &str,
    from: Option<&str>,
    to: Option<&str>,
    code: Option<&str>,
    detail: Option<&str>,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO hub_events (payment_request_id, instance, kind, from_state, to_state, \
         result_code, detail) VALUES ($1,$2,$3,$4,$5,$6,$7)",
        &[&id, &instance, &kind, &from, &to, &code, &detail],
    )
    .await?;
    Ok(())
}

/// The state a verified `paymentStatus` moves an open payment to (compare-and-set: only a
/// payment in `RECEIVED` moves; one being cancelled stays so — a late success never turns a
/// decision to cancel into a sale).
pub fn status_transition(state: &str, payment_status: &str) -> Option<&'static str> {
    if state != "RECEIVED" {
        return None;
    }
    match payment_status {
        "SUCCESS" => Some("SUCCEEDED"),
        "FAIL" => Some("FAILED"),
        "CANCELLED" => Some("CANCELLED"),
        _ => None,
    }
}

/// Whether a payment in `state` is being (or has been) reversed by a cancel or refund the
/// hub owes: an upstream `SUCCESS` is then not its outcome.
pub fn reversing(state: &str) -> bool {
    matches!(state, "CANCELLING" | "CANCELLED" | "REFUNDING" | "REFUNDED")
}

/// Applies a verified `paymentStatus` (inquiry answer, notification, the active-cancel
/// inquiry) to a locked payment; returns the new state if it moved.
pub async fn apply_status(
    tx: &Transaction<'_>,
    instance: &str,
    row: &PaymentRow,
    status: &str,
    payment_id: Option<&str>,
    cause: &str,
) -> anyhow::Result<Option<&'static str>> {
    let to = status_transition(&row.state, status);
    tx.execute(
        "UPDATE hub_payments SET upstream_status = $2, \
         payment_id = coalesce(payment_id, $3), state = coalesce($4, state), updated_at = now() \
         WHERE payment_request_id = $1",
        &[&row.id, &status, &payment_id, &to],
    )
    .await?;
    if let Some(to) = to {
        event(
            tx,
            instance,
            &row.id,
            cause,
            Some(&row.state),
            Some(to),
            Some(status),
            None,
        )
        .await?;
    }
    Ok(to)
}

impl Hub {
    fn signed(&self, t: &Terminal, body: Vec<u8>) -> Reply {
        Reply {
            body,
            signed_for: Some(t.client_id.clone()),
        }
    }

    fn signed_refusal(
        &self,
        t: &Terminal,
        op: Operation,
        code: &'static str,
        message: &str,
    ) -> Reply {
        let mut r = refused(&self.metrics, op, code, message);
        r.signed_for = Some(t.client_id.clone());
        r
    }

    fn unknown(&self, t: &Terminal, op: Operation, code: Option<&str>, why: &str) -> Reply {
        self.metrics.request(op, "error");
        tracing::warn!(operation = op.label(), why, "answering the terminal U");
        self.signed(
            t,
            result_body(
                "U",
                code.unwrap_or("UNKNOWN_EXCEPTION"),
                "result unknown; inquire",
            ),
        )
    }

    /// Relays an upstream answer: the verified body for `S`/`F`, a hub-made `U` otherwise.
    fn relay(&self, t: &Terminal, op: Operation, answer: &Answer) -> Reply {
        match answer {
            Answer::Success(body) | Answer::Failed { body, .. } => {
                self.metrics.request(op, "forwarded");
                self.signed(t, body.clone())
            }
            Answer::Unknown { why, code } => self.unknown(t, op, code.as_deref(), why),
        }
    }

    /// Signs an answer body for a terminal: the `signature` and `response-time` headers.
    pub fn sign_answer(&self, path: &str, client_id: &str, body: &[u8]) -> (String, String) {
        let time = now_ms().to_string();
        let msg = Message {
            method: "POST",
            uri: path,
            client_id,
            time: &time,
            body,
        };
        (self.hub_key.sign_header(&self.key_version, &msg), time)
    }

    /// Handles one terminal request end to end.
    pub async fn handle(
        &self,
        op: Operation,
        path: &str,
        headers: &RequestHeaders,
        body: &[u8],
    ) -> Reply {
        let terminal = match self.verify(op, path, headers, body).await {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        let value: Value = match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return self.signed_refusal(
                    &terminal,
                    op,
                    "PARAM_ILLEGAL",
                    "the body is not a JSON object",
                )
            }
        };
        let result = match op {
            Operation::Pay => self.pay(&terminal, value).await,
            Operation::InquiryPayment => self.inquiry(&terminal, value).await,
            Operation::Cancel => self.cancel(&terminal, value).await,
            Operation::Refund => self.refund(&terminal, value).await,
            Operation::InquiryRefund => self.inquiry_refund(&terminal, value).await,
        };
        match result {
            Ok(reply) => reply,
            Err(e) => {
                tracing::error!(
                    operation = op.label(),
                    error = format!("{e:#}"),
                    "hub request failed"
                );
                self.unknown(&terminal, op, None, &format!("{e:#}"))
            }
        }
    }

    /// Rule 1 at the hub: the terminal exists, the signature verifies with its key, it is
    /// enabled, and `Request-Time` is inside the window. Refusals are unsigned.
    async fn verify(
        &self,
        op: Operation,
        path: &str,
        h: &RequestHeaders,
        body: &[u8],
    ) -> Result<Terminal, Reply> {
        let m = &self.metrics;
        let Some(client_id) = h.client_id.as_deref().filter(|s| !s.is_empty()) else {
            return Err(refused(m, op, "CLIENT_INVALID", "no Client-Id header"));
        };
        let terminal = match self.pool.get().await {
            Ok(c) => registry::get(&**c, client_id).await,
            Err(e) => Err(anyhow::anyhow!("no database connection: {e}")),
        };
        let terminal = match terminal {
            Ok(Some(t)) => t,
            Ok(None) => return Err(refused(m, op, "CLIENT_INVALID", "unknown client id")),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "registry read failed");
                m.request(op, "error");
                return Err(Reply {
                    body: result_body("U", "UNKNOWN_EXCEPTION", "try again"),
                    signed_for: None,
                });
            }
        };
        let (Some(time), Some(signature)) = (h.request_time.as_deref(), h.signature.as_deref())
        else {
            return Err(refused(
                m,
                op,
                "INVALID_SIGNATURE",
                "Request-Time and Signature headers are required",
            ));
        };
        let key = terminal.key().map_err(|_| {
            refused(
                m,
                op,
                "INVALID_SIGNATURE",
                "the registered key does not parse",
            )
        })?;
        let msg = Message {
            method: "POST",
            uri: path,
            client_id,
            time,
            body,
        };
        if key.verify_header(&msg, signature).is_err() {
            return Err(refused(
                m,
                op,
                "INVALID_SIGNATURE",
                "signature does not verify",
            ));
        }
        if !terminal.enabled {
            return Err(refused(m, op, "ACCESS_DENIED", "this terminal is disabled"));
        }
        let window = self.rules.replay_window.as_millis() as i64;
        match parse_request_time(time) {
            Some(t) if (now_ms() - t).abs() <= window => Ok(terminal),
            Some(_) => Err(refused(
                m,
                op,
                "PARAM_ILLEGAL",
                "Request-Time is outside the replay window; check the terminal's clock",
            )),
            None => Err(refused(
                m,
                op,
                "PARAM_ILLEGAL",
                "Request-Time is not a time",
            )),
        }
    }

    async fn pay(&self, t: &Terminal, v: Value) -> anyhow::Result<Reply> {
        let op = Operation::Pay;
        let intake::PayIntake {
            id,
            amount,
            hash,
            forward_body,
            recorded_body,
        } = match intake::pay(&v, t, self.rules.notify_url.as_deref()) {
            Ok(p) => p,
            Err(r) => return Ok(self.signed_refusal(t, op, r.code, &r.message)),
        };

        // Write ahead: the pay is committed before it is forwarded.
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO hub_payments (payment_request_id, client_id, state, body_hash, \
                 forward_body, amount_minor, currency) VALUES ($1,$2,'RECEIVED',$3,$4,$5,$6) \
                 ON CONFLICT (payment_request_id) DO NOTHING",
                &[
                    &id,
                    &t.client_id,
                    &hash,
                    &recorded_body,
                    &amount.minor(),
                    &amount.currency().code(),
                ],
            )
            .await?;
        if inserted == 1 {
            event(
                &tx,
                &self.instance,
                &id,
                "pay_recorded",
                None,
                Some("RECEIVED"),
                None,
                None,
            )
            .await?;
            tx.commit().await?;
            failpoint::hit("hub_request_recorded");
        } else {
            let row = read_payment(&*tx, &id).await?.context("payment vanished")?;
            tx.commit().await?;
            if row.client_id != t.client_id {
                return Ok(self.signed_refusal(
                    t,
                    op,
                    "ACCESS_DENIED",
                    "this paymentRequestId belongs to another terminal",
                ));
            }
            match &row.body_hash {
                None => {
                    return Ok(self.signed_refusal(
                        t,
                        op,
                        "ORDER_IS_CLOSED",
                        "this payment was cancelled before its pay arrived; not forwarded",
                    ))
                }
                Some(h) if *h != hash => {
                    return Ok(self.signed_refusal(
                        t,
                        op,
                        "REPEAT_REQ_INCONSISTENT",
                        "the same paymentRequestId with a different body",
                    ))
                }
                Some(_) => {}
            }
        }
        drop(client);
        self.forward_pay(t, &id, forward_body).await
    }

    /// Forwards a recorded pay (`body`: this request's, code in clear) under its row lock, or
    /// answers from the record.
    async fn forward_pay(&self, t: &Terminal, id: &str, body: Vec<u8>) -> anyhow::Result<Reply> {
        let op = Operation::Pay;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        set_lock_timeout(&tx, self.rules.lock_timeout).await?;
        let row = match lock_payment(&tx, id).await {
            Ok(Some(r)) => r,
            Ok(None) => anyhow::bail!("recorded payment {id} not found"),
            Err(e) => return Ok(self.unknown(t, op, None, &format!("{e:#}"))),
        };
        if let Some(answer) = &row.pay_answer {
            tx.commit().await?;
            self.metrics.request(op, "answered_from_record");
            return Ok(self.signed(t, answer.clone()));
        }
        if row.state != "RECEIVED" {
            // A cancel is owed (or done): never send the pay again.
            tx.commit().await?;
            return Ok(self.unknown(t, op, None, "the payment is being cancelled"));
        }
        failpoint::hit("hub_upstream_in_flight");
        let answer = self.upstream.call(op, &body).await;
        let fields = match &answer {
            Answer::Success(b) | Answer::Failed { body: b, .. } => AnswerFields::of(b),
            Answer::Unknown { .. } => AnswerFields::default(),
        };
        let (to, final_body, status): (&str, Option<&Vec<u8>>, &str) = match &answer {
            Answer::Success(b) => {
                let matches = fields.payment_amount.as_ref().is_none_or(|a| {
                    Some(a.value.parse::<i64>().ok()) == Some(row.amount_minor)
                        && Some(&a.currency) == row.currency.as_ref()
                });
                if matches {
                    ("SUCCEEDED", Some(b), "S")
                } else {
                    ("NEEDS_ATTENTION", None, "S")
                }
            }
            Answer::Failed { body: b, .. } => ("FAILED", Some(b), "F"),
            Answer::Unknown { .. } => ("RECEIVED", None, "U"),
        };
        tx.execute(
            "UPDATE hub_payments SET state = $2, pay_answer = $3, pay_status = $4, result_code = $5, \
             payment_id = coalesce(payment_id, $6), attention_reason = CASE WHEN $2 = 'NEEDS_ATTENTION' \
             THEN 'the approved amount differs from the request' ELSE attention_reason END, \
             updated_at = now() WHERE payment_request_id = $1",
            &[&id, &to, &final_body, &status, &answer.code(), &fields.payment_id],
        )
        .await?;
        let why = match &answer {
            Answer::Unknown { why, .. } => Some(why.as_str()),
            _ => None,
        };
        event(
            &tx,
            &self.instance,
            id,
            "pay_answered",
            Some("RECEIVED"),
            Some(to),
            answer.code(),
            why,
        )
        .await?;
        tx.commit().await?;
        failpoint::hit("hub_answer_recorded");
        if to == "NEEDS_ATTENTION" {
            return Ok(self.unknown(t, op, None, "approved amount differs"));
        }
        Ok(self.relay(t, op, &answer))
    }

    /// The payment named by `paymentRequestId` (or `paymentId`) if this terminal owns it.
    async fn owned(
        &self,
        t: &Terminal,
        v: &Value,
    ) -> anyhow::Result<Result<String, (&'static str, &'static str)>> {
        let client = self.pool.get().await?;
        let row = if let Some(id) = valid_id(str_at(v, &["paymentRequestId"])) {
            client
                .query_opt("SELECT payment_request_id, client_id FROM hub_payments WHERE payment_request_id = $1", &[&id])
                .await?
        } else if let Some(pid) = valid_id(str_at(v, &["paymentId"])) {
            client
                .query_opt(
                    "SELECT payment_request_id, client_id FROM hub_payments WHERE payment_id = $1",
                    &[&pid],
                )
                .await?
        } else {
            return Ok(Err((
                "PARAM_ILLEGAL",
                "paymentRequestId or paymentId is required",
            )));
        };
        Ok(match row {
            None => Err(("ORDER_NOT_EXIST", "the hub has not forwarded this payment")),
            Some(r) if r.get::<_, String>(1) != t.client_id => {
                Err(("ACCESS_DENIED", "this payment belongs to another terminal"))
            }
            Some(r) => Ok(r.get(0)),
        })
    }

    async fn inquiry(&self, t: &Terminal, v: Value) -> anyhow::Result<Reply> {
        let op = Operation::InquiryPayment;
        let id = match self.owned(t, &v).await? {
            Ok(id) => id,
            Err((code, msg)) => return Ok(self.signed_refusal(t, op, code, msg)),
        };
        // Built here, not passed through: a paymentId inside the terminal's body would win
        // over the paymentRequestId upstream and could name someone else's payment.
        let body = serde_json::to_vec(&json!({ "paymentRequestId": id }))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        set_lock_timeout(&tx, self.rules.lock_timeout).await?;
        let row = match lock_payment(&tx, &id).await {
            Ok(Some(r)) => r,
            Ok(None) => anyhow::bail!("payment {id} vanished"),
            Err(e) => return Ok(self.unknown(t, op, None, &format!("{e:#}"))),
        };
        let answer = self.upstream.call(op, &body).await;
        if let Answer::Success(b) = &answer {
            let f = AnswerFields::of(b);
            if let Some(status) = f.payment_status.as_deref() {
                let amount_ok = f.payment_amount.as_ref().is_none_or(|a| {
                    a.value.parse::<i64>().ok() == row.amount_minor
                        && Some(&a.currency) == row.currency.as_ref()
                });
                if status == "SUCCESS" && !amount_ok && row.amount_minor.is_some() {
                    mark_attention(
                        &tx,
                        &self.instance,
                        &row,
                        "inquiry: the paid amount differs from the request",
                    )
                    .await?;
                    tx.commit().await?;
                    return Ok(self.unknown(t, op, None, "paid amount differs"));
                }
                apply_status(
                    &tx,
                    &self.instance,
                    &row,
                    status,
                    f.payment_id.as_deref(),
                    "inquiry",
                )
                .await?;
                if status == "SUCCESS" && reversing(&row.state) {
                    // The hub owes (or has made) a reversal of this payment — its own
                    // active cancel, perhaps turned into a full refund — so the upstream's
                    // SUCCESS is not how it ends: relayed, it would have the terminal report
                    // a sale whose money goes back. U keeps the terminal asking until it
                    // cancels, and its cancel is answered with the reversal's outcome.
                    tx.commit().await?;
                    return Ok(self.unknown(t, op, None, "the hub is reversing this payment"));
                }
            }
        }
        tx.commit().await?;
        Ok(self.relay(t, op, &answer))
    }

    async fn cancel(&self, t: &Terminal, v: Value) -> anyhow::Result<Reply> {
        let op = Operation::Cancel;
        let Some(id) = valid_id(str_at(&v, &["paymentRequestId"])).map(str::to_string) else {
            return Ok(self.signed_refusal(t, op, "PARAM_ILLEGAL", "paymentRequestId is required"));
        };
        let body = serde_json::to_vec(&json!({ "paymentRequestId": id }))?;
        let origin = if self.rules.reversal_advice {
            "advice"
        } else {
            "terminal"
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        set_lock_timeout(&tx, self.rules.lock_timeout).await?;
        // A cancel that arrives before its pay claims the id, so a late pay is never forwarded.
        tx.execute(
            "INSERT INTO hub_payments (payment_request_id, client_id, state, terminal_cancel_at) \
             VALUES ($1, $2, 'CANCELLING', now()) ON CONFLICT (payment_request_id) DO NOTHING",
            &[&id, &t.client_id],
        )
        .await?;
        let row = match lock_payment(&tx, &id).await {
            Ok(Some(r)) => r,
            Ok(None) => anyhow::bail!("payment {id} vanished"),
            Err(e) => return Ok(self.unknown(t, op, None, &format!("{e:#}"))),
        };
        if row.client_id != t.client_id {
            tx.rollback().await?;
            return Ok(self.signed_refusal(
                t,
                op,
                "ACCESS_DENIED",
                "this payment belongs to another terminal",
            ));
        }
        if let Some(answer) = &row.cancel_answer {
            tx.commit().await?;
            self.metrics.request(op, "answered_from_record");
            return Ok(self.signed(t, answer.clone()));
        }
        // A cancel settled for good without an S (ORDER_NOT_EXIST: the pay never arrived, the
        // payment FAILED) is answered from its item's record; the payment stays where that
        // answer put it. Moving it to CANCELLING here would leave it there: the item is done.
        let settled: Option<Vec<u8>> = tx
            .query_opt(
                "SELECT answer FROM hub_queue WHERE kind = 'cancel' AND payment_request_id = $1 \
                 AND status = 'DONE' AND answer IS NOT NULL",
                &[&id],
            )
            .await?
            .map(|r| r.get(0));
        if let Some(answer) = settled {
            tx.commit().await?;
            self.metrics.request(op, "answered_from_record");
            return Ok(self.signed(t, answer));
        }
        // The hub's own cancel became a full refund (the cancel window had passed) and the
        // refund is done: the payment is reversed, which is what this cancel asks for. Its
        // item is done without an answer to relay, so without this the terminal would hear U
        // for ever.
        if row.state == "REFUNDED" {
            if let Some(reply) = self.window_refunded(&*tx, t, &id).await? {
                tx.commit().await?;
                return Ok(reply);
            }
        }
        let to = match row.state.as_str() {
            "RECEIVED" | "SUCCEEDED" | "FAILED" => "CANCELLING",
            other => other,
        }
        .to_string();
        tx.execute(
            "UPDATE hub_payments SET terminal_cancel_at = coalesce(terminal_cancel_at, now()), \
             state = $2, updated_at = now() WHERE payment_request_id = $1",
            &[&id, &to],
        )
        .await?;
        let item = queue::enqueue(&tx, "cancel", &id, None, &body, origin).await?;
        if to != row.state || row.body_hash.is_none() {
            event(
                &tx,
                &self.instance,
                &id,
                "terminal_cancel",
                Some(&row.state),
                Some(&to),
                None,
                Some(origin),
            )
            .await?;
        }
        tx.commit().await?;
        failpoint::hit("hub_request_recorded");
        drop(client);
        if self.rules.reversal_advice {
            self.metrics.request(op, "queued");
            return Ok(self.signed(
                t,
                serde_json::to_vec(&json!({
                    "result": {"resultCode": "SUCCESS", "resultStatus": "S",
                               "resultMessage": "cancel accepted; the hub delivers it"},
                    "paymentRequestId": id,
                }))?,
            ));
        }
        let reply = self.deliver_for_terminal(t, op, item).await?;
        // Delivered through the hub's own cancel and refused for its window, the cancel has
        // just become the hub's full refund: relaying the refusal would have the terminal
        // refund as well (the second refund refused upstream, the payment left for a human).
        let client = self.pool.get().await?;
        Ok(self
            .window_refunded(&**client, t, &id)
            .await?
            .unwrap_or(reply))
    }

    /// The answer to a terminal's cancel of a payment whose cancel the hub turned into its
    /// own full refund: `S` once refunded, `U` while the refund is under way; `None` for any
    /// other payment.
    async fn window_refunded(
        &self,
        client: &impl tokio_postgres::GenericClient,
        t: &Terminal,
        id: &str,
    ) -> anyhow::Result<Option<Reply>> {
        let state: Option<String> = client
            .query_opt(
                "SELECT state FROM hub_refunds WHERE refund_request_id = $1 \
                 AND payment_request_id = $2 AND origin = 'hub'",
                &[&queue::window_refund_id(id), &id],
            )
            .await?
            .map(|r| r.get(0));
        let op = Operation::Cancel;
        Ok(match state.as_deref() {
            None => None,
            Some("REFUNDED") => {
                self.metrics.request(op, "answered_from_record");
                Some(self.signed(
                    t,
                    serde_json::to_vec(&json!({
                        "result": {"resultCode": "SUCCESS", "resultStatus": "S",
                                   "resultMessage": "reversed by the hub: refunded in full, the cancel window had passed"},
                        "paymentRequestId": id,
                    }))?,
                ))
            }
            Some("REFUNDING") => {
                Some(self.unknown(t, op, None, "the hub is refunding this payment in full"))
            }
            Some(_) => None,
        })
    }

    async fn deliver_for_terminal(
        &self,
        t: &Terminal,
        op: Operation,
        item: i64,
    ) -> anyhow::Result<Reply> {
        match queue::deliver(self, item, queue::Caller::Terminal).await? {
            queue::Delivery::Sent(answer) => Ok(self.relay(t, op, &answer)),
            queue::Delivery::Recorded(body) => {
                self.metrics.request(op, "answered_from_record");
                Ok(self.signed(t, body))
            }
            queue::Delivery::Busy => {
                Ok(self.unknown(t, op, None, "another instance is sending it right now"))
            }
        }
    }

    async fn refund(&self, t: &Terminal, v: Value) -> anyhow::Result<Reply> {
        let op = Operation::Refund;
        let intake::RefundIntake {
            refund_request_id: rid,
            payment_id: pid,
            amount,
            hash,
            forward_body,
        } = match intake::refund(&v) {
            Ok(r) => r,
            Err(r) => return Ok(self.signed_refusal(t, op, r.code, &r.message)),
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        set_lock_timeout(&tx, self.rules.lock_timeout).await?;
        let owner = tx
            .query_opt(
                "SELECT payment_request_id, client_id FROM hub_payments WHERE payment_id = $1",
                &[&pid],
            )
            .await?;
        let payment = match owner {
            Some(r) if r.get::<_, String>(1) == t.client_id => r.get::<_, String>(0),
            _ => {
                tx.rollback().await?;
                return Ok(self.signed_refusal(
                    t,
                    op,
                    "ACCESS_DENIED",
                    "paymentId is not a payment of this terminal",
                ));
            }
        };
        let row = match lock_payment(&tx, &payment).await {
            Ok(Some(r)) => r,
            Ok(None) => anyhow::bail!("payment vanished"),
            Err(e) => return Ok(self.unknown(t, op, None, &format!("{e:#}"))),
        };
        if row.currency.as_deref() != Some(amount.currency().code()) {
            tx.rollback().await?;
            return Ok(self.signed_refusal(
                t,
                op,
                "PARAM_ILLEGAL",
                "refundAmount is not in the payment's currency",
            ));
        }
        tx.execute(
            "INSERT INTO hub_refunds (refund_request_id, payment_request_id, client_id, body_hash, \
             forward_body, amount_minor, currency, state, origin) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,'REFUNDING','terminal') ON CONFLICT DO NOTHING",
            &[&rid, &payment, &t.client_id, &hash, &forward_body, &amount.minor(), &amount.currency().code()],
        )
        .await?;
        let existing = tx
            .query_one(
                "SELECT client_id, body_hash, answer FROM hub_refunds WHERE refund_request_id = $1",
                &[&rid],
            )
            .await?;
        if existing.get::<_, String>(0) != t.client_id {
            tx.rollback().await?;
            return Ok(self.signed_refusal(
                t,
                op,
                "ACCESS_DENIED",
                "this refundRequestId belongs to another terminal",
            ));
        }
        if existing.get::<_, Vec<u8>>(1) != hash {
            tx.rollback().await?;
            return Ok(self.signed_refusal(
                t,
                op,
                "REPEAT_REQ_INCONSISTENT",
                "the same refundRequestId with a different body",
            ));
        }
        if let Some(answer) = existing.get::<_, Option<Vec<u8>>>(2) {
            tx.commit().await?;
            self.metrics.request(op, "answered_from_record");
            return Ok(self.signed(t, answer));
        }
        let item = queue::enqueue(
            &tx,
            "refund",
            &payment,
            Some(&rid),
            &forward_body,
            "terminal",
        )
        .await?;
        event(
            &tx,
            &self.instance,
            &payment,
            "refund_recorded",
            Some(&row.state),
            None,
            None,
            Some(&rid),
        )
        .await?;
        tx.commit().await?;
        failpoint::hit("hub_request_recorded");
        drop(client);
        self.deliver_for_terminal(t, op, item).await
    }

    async fn inquiry_refund(&self, t: &Terminal, v: Value) -> anyhow::Result<Reply> {
        let op = Operation::InquiryRefund;
        let Some(rid) = valid_id(str_at(&v, &["refundRequestId"])).map(str::to_string) else {
            return Ok(self.signed_refusal(t, op, "PARAM_ILLEGAL", "refundRequestId is required"));
        };
        let client = self.pool.get().await?;
        let owner = client
            .query_opt(
                "SELECT client_id, forward_body FROM hub_refunds WHERE refund_request_id = $1",
                &[&rid],
            )
            .await?;
        match owner {
            None => {
                return Ok(self.signed_refusal(
                    t,
                    op,
                    "ORDER_NOT_EXIST",
                    "the hub has not forwarded this refund",
                ))
            }
            Some(r) if r.get::<_, String>(0) != t.client_id => {
                return Ok(self.signed_refusal(
                    t,
                    op,
                    "ACCESS_DENIED",
                    "this refund belongs to another terminal",
                ))
            }
            Some(_) => {}
        }
        drop(client);
        // A converting upstream's refund query names the trade: the hub adds the paymentId and
        // amount from its record (any instance may be asked). AMS gets the body it always got.
        let recorded = owner
            .as_ref()
            .and_then(|r| r.get::<_, Option<Vec<u8>>>(1))
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|_| self.upstream.converts());
        let body = match recorded {
            Some(v) => serde_json::to_vec(&json!({ "refundRequestId": rid,
                "paymentId": v.get("paymentId"), "refundAmount": v.get("refundAmount") }))?,
            None => serde_json::to_vec(&json!({ "refundRequestId": rid }))?,
        };
        let answer = self.upstream.call(op, &body).await;
        Ok(self.relay(t, op, &answer))
    }
}

/// Moves a locked payment to `NEEDS_ATTENTION` with the reason.
pub async fn mark_attention(
    tx: &Transaction<'_>,
    instance: &str,
    row: &PaymentRow,
    reason: &str,
) -> anyhow::Result<()> {
    tx.execute(
        "UPDATE hub_payments SET state = 'NEEDS_ATTENTION', attention_reason = $2, updated_at = now() \
         WHERE payment_request_id = $1",
        &[&row.id, &reason],
    )
    .await?;
    event(
        tx,
        instance,
        &row.id,
        "needs_attention",
        Some(&row.state),
        Some("NEEDS_ATTENTION"),
        None,
        Some(reason),
    )
    .await
}

/// A queue item as the deliverer reads it (re-exported for the worker).
pub type Item = QueueItem;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_times_in_both_forms() {
        assert_eq!(parse_request_time("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(
            parse_request_time("2026-11-21T10:15:30+08:00"),
            Some(1_795_227_330_000)
        );
        assert_eq!(parse_request_time(""), None);
        assert_eq!(parse_request_time("yesterday"), None);
    }

    #[test]
    fn only_an_open_payment_moves_on_a_status() {
        assert_eq!(status_transition("RECEIVED", "SUCCESS"), Some("SUCCEEDED"));
        assert_eq!(status_transition("RECEIVED", "FAIL"), Some("FAILED"));
        assert_eq!(
            status_transition("RECEIVED", "CANCELLED"),
            Some("CANCELLED")
        );
        assert_eq!(status_transition("RECEIVED", "PROCESSING"), None);
        assert_eq!(status_transition("RECEIVED", "PENDING"), None);
        // A decision to cancel is never overridden by a late success.
        assert_eq!(status_transition("CANCELLING", "SUCCESS"), None);
        assert_eq!(status_transition("FAILED", "SUCCESS"), None);
        assert_eq!(status_transition("SUCCEEDED", "FAIL"), None);
    }
}
