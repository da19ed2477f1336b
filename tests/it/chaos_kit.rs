//! The pieces both seeded crash-and-fault runners use (the terminal's in `chaos.rs`, the
//! hub's in `hub/chaos.rs`): the sandbox scenario rows and the terminal's crash points, the
//! fault-injecting HTTP proxy in front of the sandbox (hold, reset, 5xx, truncate, bad
//! signature, chosen per call from the round's seed), the notification relay (duplicates,
//! late and stale deliveries, lost acknowledgements, damaged bodies, to one listener or to
//! either of two), random payment codes, and a terminal's own SQLite record (its payments,
//! its reversal queue and a payment's journal).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Last two digits of the code: every scenario row of the sandbox (00–79 are plain successes).
pub const SCENARIOS: &[&str] = &[
    "07", "42", "79", "80", "81", "82", "83", "84", "85", "86", "87", "88", "89",
];

/// Crash points of the money path (`POSD_FAILPOINT`).
pub const FAILPOINTS: &[&str] = &[
    "intent_committed",
    "pay_in_flight",
    "pay_answered",
    "inquiry_1",
    "inquiry_3",
    "cancel_committed",
    "cancel_in_flight",
    "refund_in_flight",
    "queue_written",
    "replay_leased",
    "replay_leased_beside",
    "replay_sent",
    "replay_answered",
    "replay_settled",
];

/// The gateway dialect a run speaks to the sandbox: Alipay+ (AMS) or the mainland
/// `alipay.trade.*` API. The sandbox plays every scenario row the same way in both, so the
/// same schedule of sales and faults must end the same way; only the wire differs (the
/// mainland signature sits in the answer's body, its notifications are signed forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    AlipayPlus,
    Mainland,
}

impl Dialect {
    /// From `var`: `alipay_plus` (the default) or `alipay_cn`.
    pub fn from_env(var: &str) -> Dialect {
        match std::env::var(var).as_deref() {
            Err(_) | Ok("alipay_plus") => Dialect::AlipayPlus,
            Ok("alipay_cn") => Dialect::Mainland,
            Ok(other) => panic!("{var}={other}: alipay_plus or alipay_cn"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::AlipayPlus => "alipay_plus",
            Dialect::Mainland => "alipay_cn",
        }
    }

    /// The name the proxy knows a sale by ([`Call::sale`]): its order reference on the AMS
    /// wire, its payment code on the mainland one.
    pub fn sale_name(self, order_ref: &str, code: &str) -> String {
        match self {
            Dialect::AlipayPlus => order_ref.to_string(),
            Dialect::Mainland => code.to_string(),
        }
    }

    /// The proxy's name of the operation `op` (`pay`, `refund`, …) in this dialect.
    pub fn op(self, op: &str) -> String {
        match self {
            Dialect::AlipayPlus => op.to_string(),
            Dialect::Mainland => format!("alipay.trade.{op}"),
        }
    }

    /// Whether the proxy's operation name `op` is of this dialect.
    pub fn speaks(self, op: &str) -> bool {
        op.starts_with("alipay.") == (self == Dialect::Mainland)
    }
}

/// The dialect-free name of a proxied operation: `pay`, `cancel`, … for both the AMS path
/// segment and the mainland `method` (`alipay.trade.pay` → `pay`).
pub fn operation(op: &str) -> &str {
    op.strip_prefix("alipay.trade.").unwrap_or(op)
}

/// What the proxy does to one gateway call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Holds the request past the client's deadline, then forwards it (a late answer).
    Hold,
    /// Resets the connection before the gateway sees the request.
    ResetBefore,
    /// Forwards, then resets instead of answering (the gateway acted; the answer is lost).
    ResetAfter,
    /// Answers 5xx without forwarding.
    Error5xxBefore,
    /// Forwards, then answers 5xx.
    Error5xxAfter,
    /// Forwards, then sends half of the body and closes.
    Truncate,
    /// Forwards, then answers with one character of the signature changed.
    BadSignature,
}

/// Faults by weight: a held request (the answer, or the request itself, arriving after the
/// client gave up) is the ambiguity that matters most, so it comes three times as often.
pub const FAULTS: &[Fault] = &[
    Fault::Hold,
    Fault::Hold,
    Fault::Hold,
    Fault::ResetBefore,
    Fault::ResetAfter,
    Fault::Error5xxBefore,
    Fault::Error5xxAfter,
    Fault::Truncate,
    Fault::BadSignature,
];

/// The proxy's per-round plan and what it did.
#[derive(Default)]
pub struct ProxyState {
    /// Probability that one call gets a fault, this round.
    pub rate: f64,
    /// Seeds the per-call choices of this round.
    pub round_seed: u64,
    pub calls: u64,
    /// paymentRequestId -> the sale's order reference (learnt from its pay request).
    pub orders: HashMap<String, String>,
    /// How often each (sale, operation) was seen: the n-th inquiry of a sale gets the same
    /// fault in every run of the seed, whatever the interleaving with other sales.
    pub seen: HashMap<String, u64>,
    pub faults: BTreeMap<Fault, u64>,
    /// (request id, operation) of every call, in the order they reached the proxy.
    pub trail: Vec<(String, String)>,
    /// Operations (the last path segment, e.g. `inquiryPayment`) answered 5xx without being
    /// forwarded, whatever the plan: a test's outage of one operation.
    pub down: Vec<String>,
    /// Sales (by the name [`Call::sale`] reads) whose first pay is held past the client's
    /// deadline whatever the rate: a late pay planned by the runner.
    pub late: std::collections::HashSet<String>,
    /// Planned late pays that reached the proxy and were held.
    pub late_held: u64,
    /// Operations whose next call is reset before it reaches the upstream, whatever the
    /// rate (planned by the runner for this round; cleared when the next round is planned).
    pub reset_next: Vec<String>,
    /// Planned resets that met their call.
    pub planned_resets: u64,
    /// How long a held pay is held, in ms, where a runner sets it past its own client's pay
    /// deadline; [`HOLD`] otherwise.
    pub pay_hold: Option<std::ops::Range<u64>>,
}

/// How long a held call is held, in ms: past the terminal runner's call deadlines (a 600 ms
/// pay, 400 ms inquiries and cancels), so that the answer, or the request itself, arrives
/// after the client gave up.
pub const HOLD: std::ops::Range<u64> = 650..1500;

/// Requests a proxy or a relay has taken in and not finished with (held, forwarded,
/// answered). A round's check waits until there are none: a pay held past its deadline
/// reaches the sandbox, and a notification held back reaches its listener, before the records
/// are read, not in the next round's (or, after the last round, never).
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    /// Counts one request until the guard is dropped, however its handling ends.
    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.0.clone())
    }

    /// How many are in flight now.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct InFlightGuard(Arc<AtomicU64>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fault-injecting HTTP/1.1 proxy in front of the sandbox.
pub struct Proxy {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ProxyState>>,
    pub in_flight: InFlight,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port in front of `upstream` (a base URL); no faults until planned.
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let http = reqwest::Client::new();
        let in_flight = InFlight::default();
        let (st, busy) = (state.clone(), in_flight.clone());
        let task = accept_each(listener, move |sock| {
            let (st, http, upstream, busy) =
                (st.clone(), http.clone(), upstream.clone(), busy.clone());
            async move {
                let _ = serve(sock, st, http, upstream, busy).await;
            }
        });
        Proxy {
            addr,
            state,
            in_flight,
            task,
        }
    }

    /// This round's fault rate and seed.
    pub fn plan(&self, rate: f64, round_seed: u64) {
        let mut s = self.state.lock().unwrap();
        s.rate = rate;
        s.round_seed = round_seed;
        s.reset_next.clear();
    }

    /// Resets the next call of `op` (the AMS path's last segment, or the mainland `method`)
    /// before the upstream sees it, whatever this round's rate: a request its client cannot
    /// tell from one the upstream acted on and whose answer was lost.
    pub fn reset_next(&self, op: &str) {
        self.state.lock().unwrap().reset_next.push(op.to_string());
    }

    /// Holds pays (when their fault is a hold) for a time in `ms`, e.g. past a client's pay
    /// deadline longer than the terminal runner's.
    pub fn hold_pays(&self, ms: std::ops::Range<u64>) {
        self.state.lock().unwrap().pay_hold = Some(ms);
    }

    /// Holds the first pay of the sale named `sale` (its AMS `referenceOrderId`, or its
    /// mainland `auth_code`) past the client's deadline, whatever this round's rate.
    pub fn hold_first_pay(&self, sale: String) {
        self.state.lock().unwrap().late.insert(sale);
    }
}

/// Serves each connection `listener` accepts with `serve`, on a task of its own, until the
/// returned task is aborted.
fn accept_each<F, Fut>(listener: TcpListener, serve: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock));
        }
    })
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one gateway call concerns, in either dialect.
#[derive(Debug, PartialEq, Eq)]
struct Call {
    /// The payment (or, for an AMS refund, the refund) request id.
    id: String,
    /// A name of the sale that is the same in every run of a seed, where the call carries
    /// one: the AMS pay's `referenceOrderId`, the mainland pay's `auth_code` (the seeded
    /// code; the mainland wire carries no order reference).
    sale: Option<String>,
    /// The AMS path's last segment (`pay`, `inquiryPayment`, …) or the mainland `method`.
    op: String,
    pay: bool,
}

/// Reads a gateway call: an AMS JSON body, or the mainland signed form (`POST /gateway.do`,
/// its `biz_content` JSON inside).
fn call_of(path: &str, body: &[u8]) -> Call {
    if path.ends_with(posd::gateway::sandbox::mainland::PATH) {
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let op = form.get("method").cloned().unwrap_or_default();
        let biz: Value = form
            .get("biz_content")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        let pay = op == "alipay.trade.pay";
        return Call {
            id: biz["out_trade_no"].as_str().unwrap_or("").to_string(),
            sale: pay
                .then(|| biz["auth_code"].as_str().map(str::to_string))
                .flatten(),
            op,
            pay,
        };
    }
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    let op = path.rsplit('/').next().unwrap_or("").to_string();
    Call {
        id: v["paymentRequestId"]
            .as_str()
            .or(v["refundRequestId"].as_str())
            .unwrap_or("")
            .to_string(),
        sale: v["order"]["referenceOrderId"].as_str().map(str::to_string),
        pay: op == "pay",
        op,
    }
}

/// Picks this call's fault (or none) from the round's seed and the call's number.
fn choose(state: &Mutex<ProxyState>, path: &str, body: &[u8]) -> Option<(Fault, Duration)> {
    let mut s = state.lock().unwrap();
    s.calls += 1;
    let call = call_of(path, body);
    if let Some(sale) = &call.sale {
        s.orders.insert(call.id.clone(), sale.clone());
    }
    if !call.id.is_empty() {
        s.trail.push((call.id.clone(), call.op.clone()));
    }
    let sale = s.orders.get(&call.id).cloned().unwrap_or(call.id);
    let key = format!("{sale}/{}", call.op);
    let nth = {
        let n = s.seen.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(s.round_seed, &key, nth), &mut h);
    let mut rng = StdRng::seed_from_u64(std::hash::Hasher::finish(&h));
    let range = match &s.pay_hold {
        Some(r) if call.pay => r.clone(),
        _ => HOLD,
    };
    let hold = Duration::from_millis(rng.gen_range(range));
    if let Some(i) = s.reset_next.iter().position(|op| *op == call.op) {
        s.reset_next.swap_remove(i);
        s.planned_resets += 1;
        *s.faults.entry(Fault::ResetBefore).or_default() += 1;
        return Some((Fault::ResetBefore, Duration::ZERO));
    }
    if call.pay && call.sale.as_ref().is_some_and(|name| s.late.remove(name)) {
        s.late_held += 1;
        *s.faults.entry(Fault::Hold).or_default() += 1;
        return Some((Fault::Hold, hold));
    }
    if !rng.gen_bool(s.rate) {
        return None;
    }
    // A pay that reaches the gateway after the terminal gave up on it is the case the whole
    // inquiry flow exists for: pays that get a fault are mostly held.
    let f = if call.pay && rng.gen_bool(0.7) {
        Fault::Hold
    } else {
        FAULTS[rng.gen_range(0..FAULTS.len())]
    };
    *s.faults.entry(f).or_default() += 1;
    Some((f, hold))
}

/// One HTTP request as the proxy read it.
#[derive(Clone)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Reads one request; `None` at a clean end of the connection.
pub async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let start = head_end + 4;
    while buf.len() < start + len {
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    Ok(Some(Request {
        path,
        headers,
        body,
    }))
}

/// One HTTP answer to write back.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Forwards one request to `upstream`; `None` when no answer came.
pub async fn forward(http: &reqwest::Client, upstream: &str, req: &Request) -> Option<Answer> {
    let mut r = http.post(format!("{upstream}{}", req.path));
    for (k, v) in &req.headers {
        if matches!(
            k.as_str(),
            "content-type" | "client-id" | "request-time" | "signature" | "agent-token"
        ) {
            r = r.header(k, v);
        }
    }
    let resp = r.body(req.body.clone()).send().await.ok()?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "content-type" | "client-id" | "response-time" | "signature"
            )
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.bytes().await.ok()?.to_vec();
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// Writes an answer; `cut`: only half of the body.
pub async fn write_answer(sock: &mut TcpStream, a: &Answer, cut: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} X\r\n", a.status);
    for (k, v) in &a.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", a.body.len()));
    let mut bytes = out.into_bytes();
    if cut {
        bytes.extend_from_slice(&a.body[..a.body.len() / 2]);
    } else {
        bytes.extend_from_slice(&a.body);
    }
    sock.write_all(&bytes).await
}

fn reset(sock: TcpStream) {
    let _ = sock.set_zero_linger();
    drop(sock);
}

async fn serve(
    mut sock: TcpStream,
    state: Arc<Mutex<ProxyState>>,
    http: reqwest::Client,
    upstream: String,
    in_flight: InFlight,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await? {
        let _busy = in_flight.enter();
        let op = req.path.rsplit('/').next().unwrap_or("");
        let down = state.lock().unwrap().down.iter().any(|d| d == op);
        let (fault, hold) = match choose(&state, &req.path, &req.body) {
            _ if down => (Some(Fault::Error5xxBefore), Duration::ZERO),
            Some((f, d)) => (Some(f), d),
            None => (None, Duration::ZERO),
        };
        let error = || Answer {
            status: 503,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"upstream unavailable".to_vec(),
        };
        match fault {
            Some(Fault::ResetBefore) => {
                reset(sock);
                return Ok(());
            }
            Some(Fault::Error5xxBefore) => {
                write_answer(&mut sock, &error(), false).await?;
                continue;
            }
            Some(Fault::Hold) => tokio::time::sleep(hold).await,
            _ => {}
        }
        let Some(mut answer) = forward(&http, &upstream, &req).await else {
            reset(sock);
            return Ok(());
        };
        match fault {
            Some(Fault::ResetAfter) => {
                reset(sock);
                return Ok(());
            }
            Some(Fault::Error5xxAfter) => answer = error(),
            Some(Fault::Truncate) => {
                write_answer(&mut sock, &answer, true).await?;
                reset(sock);
                return Ok(());
            }
            Some(Fault::BadSignature) => {
                // Flip one Base64 character of the signature: the AMS `Signature` header's
                // value, or the mainland body's `"sign"` field.
                let flip = |b: &mut u8| *b = if *b == b'A' { b'B' } else { b'A' };
                for (k, v) in &mut answer.headers {
                    if k == "signature" {
                        if let Some(i) = v.rfind("signature=").map(|i| i + 12) {
                            if i < v.len() {
                                let mut bytes = std::mem::take(v).into_bytes();
                                flip(&mut bytes[i]);
                                *v = String::from_utf8(bytes).expect("Base64 is ASCII");
                            }
                        }
                    }
                }
                const SIGN: &[u8] = br#""sign":""#;
                if let Some(i) = answer.body.windows(SIGN.len()).rposition(|w| w == SIGN) {
                    let i = i + SIGN.len() + 2;
                    if i < answer.body.len() && answer.body[i] != b'"' {
                        flip(&mut answer.body[i]);
                    }
                }
            }
            _ => {}
        }
        write_answer(&mut sock, &answer, false).await?;
    }
    Ok(())
}

/// A payment code of the scenario row `last2`, its other digits random.
pub fn code(last2: &str, rng: &mut StdRng) -> String {
    format!("28{:014}{last2}", rng.gen_range(0..100_000_000_000_000u64))
}

/// Minor units as the API's decimal string.
pub fn decimal(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

/// One payment of a terminal's own database.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub order_ref: Option<String>,
    pub amount: i64,
    pub state: String,
    pub refunded: i64,
}

impl Row {
    /// Whether the payment has left every open state.
    pub fn is_final(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "AWAITING_CODE" | "PAYING" | "INQUIRING" | "CANCELLING" | "REFUNDING"
        )
    }
}

/// The terminal's SQLite, with a busy timeout.
pub fn open_db(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Whether the sandbox took the money for request `id`, by its own rule
/// (`scenario::charged`: scenario 87's charge goes through while its status stays PROCESSING).
pub fn sandbox_took(sandbox: &rusqlite::Connection, id: &str) -> bool {
    let row = posd::gateway::sandbox::store::payment_by_request_id(sandbox, id)
        .unwrap()
        .expect("a payment the sandbox listed");
    posd::gateway::sandbox::scenario::charged(&row.facts)
}

/// Whether the payment has a reversal or refund waiting in the queue.
pub fn queued(db: &std::path::Path, id: &str) -> bool {
    open_db(db)
        .query_row(
            "SELECT count(*) FROM reversal_queue WHERE payment_request_id = ?1 AND status = 'PENDING'",
            [id],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        > 0
}

/// Every payment of a terminal's database.
pub fn payments(db: &std::path::Path) -> Vec<Row> {
    let c = open_db(db);
    let mut st = c
        .prepare("SELECT payment_request_id, order_ref, amount_minor, state, refunded_minor FROM payments")
        .unwrap();
    st.query_map([], |r| {
        Ok(Row {
            id: r.get(0)?,
            order_ref: r.get(1)?,
            amount: r.get(2)?,
            state: r.get(3)?,
            refunded: r.get(4)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// A terminal's journal of one payment, for a failure message: its transitions and its
/// reversal queue items' events, in the order they happened (times in ms since the epoch).
pub fn journal(db: &std::path::Path, id: &str) -> String {
    use posd::store::{payments, queue};
    let c = open_db(db);
    let mut lines: Vec<(i64, String)> = payments::events(&c, id)
        .unwrap()
        .into_iter()
        .map(|e| {
            let from = e.from.map_or("-", |s| s.as_str());
            let code = e.result_code.map(|c| format!(" {c}")).unwrap_or_default();
            (e.at, format!("{from} -> {}: {}{code}", e.to, e.cause))
        })
        .collect();
    for item in queue::of_payment(&c, id).unwrap() {
        for e in queue::events(&c, item.id).unwrap() {
            let detail = e.detail.map(|d| format!(" {d}")).unwrap_or_default();
            let line = format!(
                "queue item {} ({}) by {}: {}{detail}",
                item.id,
                item.kind.as_str(),
                e.actor,
                e.what
            );
            lines.push((e.at, line));
        }
    }
    // Stable: within one time, transitions before queue events, each in its own order.
    lines.sort_by_key(|(at, _)| *at);
    lines
        .into_iter()
        .map(|(at, line)| format!("  {at} {line}\n"))
        .collect()
}

/// What the notification relay does to one notification on its way from the sandbox to its
/// listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Note {
    /// Delivered twice at once (with two listeners, once to each: two instances race to
    /// apply it).
    Duplicate,
    /// Held, then delivered: it arrives after later notifications, and after the payment was
    /// moved by an inquiry, a cancel or a restart.
    Late,
    /// Delivered, and the listener's acknowledgement lost on its way back: the sender sees a
    /// 503 and sends the notification again, to a listener that has already applied it.
    AckLost,
    /// Delivered damaged (what a tampering hop, or a forger without the key, sends): the
    /// listener must refuse it, and the sender, not acknowledged, sends the genuine one again.
    Damaged(Damage),
}

/// How the relay damages a notification: what it changes under the signature as it was, or
/// the signature itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Damage {
    /// One digit of the amount (AMS `paymentAmount.value`, mainland `total_amount`).
    Amount,
    /// The last digit of the payment it names (AMS `paymentRequestId`, mainland
    /// `out_trade_no`): the result moved onto another sale, often one that exists.
    Payment,
    /// The outcome turned (AMS `resultStatus` `S` and `F` swapped, mainland `TRADE_SUCCESS`
    /// to `TRADE_CLOSED` and back).
    Outcome,
    /// One digit of the signed time outside the body's fields (AMS the `request-time`
    /// header, mainland `notify_time`).
    Time,
    /// One character in the middle of the signature.
    Signature,
    /// The signature removed (AMS the `signature` header, mainland `sign`).
    Unsigned,
}

impl Damage {
    const ALL: [Damage; 6] = [
        Damage::Amount,
        Damage::Payment,
        Damage::Outcome,
        Damage::Time,
        Damage::Signature,
        Damage::Unsigned,
    ];
}

/// The relay's per-round plan and what it did.
#[derive(Default)]
pub struct RelayState {
    rate: f64,
    round_seed: u64,
    seen: u64,
    /// Every notification seen (bounded): some are delivered again in later rounds, after
    /// their payment was cancelled, refunded or recovered (out of order).
    stash: Vec<Request>,
    pub notes: BTreeMap<Note, u64>,
    /// Old notifications delivered again.
    pub stale: u64,
    /// Notifications relayed (each once, whatever the relay did to it).
    pub delivered: u64,
    /// Deliveries that no listener answered (the relay answers 503: the sender retries).
    pub unanswered: u64,
    /// Damaged notifications a listener acknowledged, by how they were damaged (must stay
    /// empty).
    pub damaged_acked: BTreeMap<Damage, u64>,
    /// Notifications as the sandbox sent them that a listener refused for good (an AMS `F`,
    /// a mainland `fail` with a 400; must stay 0).
    pub genuine_refused: u64,
}

/// Relays the sandbox's notifications to the listeners at `targets` (a terminal's, or each
/// hub instance's), duplicating some, holding others back, losing the acknowledgement of
/// others (the sandbox then sends them again), and delivering old ones again later. With
/// more than one listener each delivery goes to one chosen by the round's seed, and to the
/// next one when the chosen one does not answer (as a balancer would).
pub struct Relay {
    pub addr: SocketAddr,
    targets: Arc<Vec<String>>,
    pub state: Arc<Mutex<RelayState>>,
    pub in_flight: InFlight,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(targets: Vec<String>) -> Relay {
        assert!(!targets.is_empty(), "a relay needs a listener");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RelayState::default()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let targets = Arc::new(targets);
        let in_flight = InFlight::default();
        let (st, h, t, busy) = (
            state.clone(),
            http.clone(),
            targets.clone(),
            in_flight.clone(),
        );
        let task = accept_each(listener, move |sock| {
            let (st, h, t, busy) = (st.clone(), h.clone(), t.clone(), busy.clone());
            async move {
                let _ = relay_serve(sock, st, h, t, busy).await;
            }
        });
        Relay {
            addr,
            targets,
            state,
            in_flight,
            http,
            task,
        }
    }

    /// This round's share of notifications duplicated, held back or left unacknowledged, and
    /// its seed.
    pub fn plan(&self, rate: f64, round_seed: u64) {
        let mut s = self.state.lock().unwrap();
        s.rate = rate;
        s.round_seed = round_seed;
    }

    /// Delivers `n` old notifications again (chosen by `rng`), in the background; each
    /// handle ends when its delivery has been answered (or no listener answered).
    pub fn redeliver(&self, n: usize, rng: &mut StdRng) -> Vec<tokio::task::JoinHandle<()>> {
        let picked: Vec<(Request, usize)> = {
            let mut s = self.state.lock().unwrap();
            if s.stash.is_empty() {
                return Vec::new();
            }
            let picked: Vec<(Request, usize)> = (0..n)
                .map(|_| {
                    let req = s.stash[rng.gen_range(0..s.stash.len())].clone();
                    // One listener draws nothing: a terminal's schedule stays its own.
                    let first = match self.targets.len() {
                        1 => 0,
                        listeners => rng.gen_range(0..listeners),
                    };
                    (req, first)
                })
                .collect();
            s.stale += picked.len() as u64;
            picked
        };
        picked
            .into_iter()
            .map(|(req, first)| {
                let (http, targets) = (self.http.clone(), self.targets.clone());
                let busy = self.in_flight.enter();
                tokio::spawn(async move {
                    let _busy = busy;
                    let _ = deliver(&http, &targets, first, &req).await;
                })
            })
            .collect()
    }

    /// Fails when, since the relay started, a listener acknowledged a damaged notification or
    /// refused one the sandbox really sent.
    pub fn check_listeners(&self) -> Result<(), String> {
        let s = self.state.lock().unwrap();
        if !s.damaged_acked.is_empty() {
            return Err(format!(
                "damaged notifications were acknowledged, by how they were damaged: {:?}",
                s.damaged_acked
            ));
        }
        if s.genuine_refused > 0 {
            return Err(format!(
                "{} notifications the sandbox really sent were refused (AMS result F, or \
                 mainland fail with a 400)",
                s.genuine_refused
            ));
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards `req` to `targets[first]`, then to the next ones in turn until one answers.
async fn deliver(
    http: &reqwest::Client,
    targets: &[String],
    first: usize,
    req: &Request,
) -> Option<Answer> {
    for i in 0..targets.len() {
        let target = &targets[(first + i) % targets.len()];
        if let Some(a) = forward(http, target, req).await {
            return Some(a);
        }
    }
    None
}

async fn relay_serve(
    mut sock: TcpStream,
    state: Arc<Mutex<RelayState>>,
    http: reqwest::Client,
    targets: Arc<Vec<String>>,
    in_flight: InFlight,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut sock, &mut buf).await? {
        let _busy = in_flight.enter();
        let (note, delay, first) = {
            let mut s = state.lock().unwrap();
            s.seen += 1;
            s.delivered += 1;
            if s.stash.len() < 256 {
                s.stash.push(req.clone());
            }
            let mut rng = StdRng::seed_from_u64(s.round_seed ^ s.seen.wrapping_mul(0x9E37_79B9));
            let mut note = rng.gen_bool(s.rate).then(|| match rng.gen_range(0..4) {
                0 => Note::Duplicate,
                1 => Note::Late,
                2 => Note::AckLost,
                _ => Note::Damaged(Damage::Amount),
            });
            let delay = Duration::from_millis(rng.gen_range(100..1800));
            let first = rng.gen_range(0..targets.len());
            // Drawn last, so that a seed's other draws are those it drew before damage had
            // kinds.
            if let Some(Note::Damaged(how)) = &mut note {
                *how = Damage::ALL[rng.gen_range(0..Damage::ALL.len())];
            }
            if let Some(n) = note {
                *s.notes.entry(n).or_default() += 1;
            }
            (note, delay, first)
        };
        if note == Some(Note::Late) {
            tokio::time::sleep(delay).await;
        }
        let answer = if let Some(Note::Damaged(how)) = note {
            let a = deliver(&http, &targets, first, &damaged(&req, how)).await;
            if a.as_ref().is_some_and(acknowledges) {
                *state.lock().unwrap().damaged_acked.entry(how).or_default() += 1;
            }
            a
        } else if note == Some(Note::Duplicate) {
            let (a, _) = tokio::join!(
                deliver(&http, &targets, first, &req),
                deliver(&http, &targets, first + 1, &req)
            );
            a
        } else {
            deliver(&http, &targets, first, &req).await
        };
        let damaged_note = matches!(note, Some(Note::Damaged(_)));
        if !damaged_note && answer.as_ref().is_some_and(refuses) {
            state.lock().unwrap().genuine_refused += 1;
        }
        let unavailable = |why: &str| Answer {
            status: 503,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: why.as_bytes().to_vec(),
        };
        let answer = match answer {
            None => {
                state.lock().unwrap().unanswered += 1;
                unavailable("no listener answered")
            }
            Some(_) if note == Some(Note::AckLost) => unavailable("acknowledgement lost"),
            Some(a) => a,
        };
        write_answer(&mut sock, &answer, false).await?;
    }
    Ok(())
}

/// `req` damaged `how` (see [`Damage`]), in whichever dialect it speaks; when it carries
/// nothing `how` would change, a byte in the middle of its body is changed instead.
fn damaged(req: &Request, how: Damage) -> Request {
    let mut bad = req.clone();
    let (headers, body) = (&mut bad.headers, &mut bad.body);
    let done = match how {
        Damage::Amount => json_value(body, "value")
            .or_else(|| form_value(body, "total_amount"))
            .is_some_and(|v| bump_digit(body, v, false)),
        Damage::Payment => json_value(body, "paymentRequestId")
            .or_else(|| form_value(body, "out_trade_no"))
            .is_some_and(|v| bump_digit(body, v, true)),
        Damage::Outcome => [
            ("resultStatus", "\"S\"", "\"F\""),
            ("resultStatus", "\"F\"", "\"S\""),
            ("trade_status", "TRADE_SUCCESS", "TRADE_CLOSED"),
            ("trade_status", "TRADE_CLOSED", "TRADE_SUCCESS"),
        ]
        .iter()
        .any(|(key, from, to)| {
            replace(
                body,
                &format!("\"{key}\":{from}"),
                &format!("\"{key}\":{to}"),
            ) || replace(body, &format!("{key}={from}"), &format!("{key}={to}"))
        }),
        Damage::Time => edit_header(headers, "request-time", |v| {
            let all = 0..v.len();
            bump_digit(v, all, true)
        })
        .unwrap_or_else(|| {
            form_value(body, "notify_time").is_some_and(|v| bump_digit(body, v, true))
        }),
        Damage::Signature => edit_header(headers, "signature", |v| {
            let end = v.len();
            find(v, b"signature=").is_some_and(|i| flip_letter(v, i + "signature=".len()..end))
        })
        .unwrap_or_else(|| form_value(body, "sign").is_some_and(|v| flip_letter(body, v))),
        Damage::Unsigned => match headers.iter().position(|(k, _)| k == "signature") {
            Some(h) => {
                headers.remove(h);
                true
            }
            // The field with the `&` that joins it to the next (or to the one before it, when
            // it is the last).
            None => form_value(body, "sign").is_some_and(|v| {
                let start = v.start - "sign=".len();
                if v.end < body.len() {
                    body.drain(start..=v.end);
                } else {
                    body.drain(start.saturating_sub(1)..v.end);
                }
                true
            }),
        },
    };
    if !done && !body.is_empty() {
        let m = body.len() / 2;
        body[m] ^= 1;
    }
    bad
}

/// Edits the value of header `name` (names are lower case, as [`read_request`] keeps them)
/// with `edit`; `None` when there is no such header.
fn edit_header(
    headers: &mut [(String, String)],
    name: &str,
    edit: impl FnOnce(&mut Vec<u8>) -> bool,
) -> Option<bool> {
    let (_, value) = headers.iter_mut().find(|(k, _)| k == name)?;
    let mut bytes = std::mem::take(value).into_bytes();
    let done = edit(&mut bytes);
    *value = String::from_utf8(bytes).expect("a digit or a letter changed for another");
    Some(done)
}

/// Bumps the first digit within `within` (the last one, `from_end`); whether there was one.
fn bump_digit(bytes: &mut [u8], within: std::ops::Range<usize>, from_end: bool) -> bool {
    let digit = |&j: &usize| bytes[j].is_ascii_digit();
    let at = if from_end {
        within.clone().rev().find(digit)
    } else {
        within.clone().find(digit)
    };
    at.map(|j| bump(&mut bytes[j])).is_some()
}

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The bytes of the string value of `"key":"…"` in a JSON body.
fn json_value(body: &[u8], key: &str) -> Option<std::ops::Range<usize>> {
    let start = find(body, format!("\"{key}\":\"").as_bytes())? + key.len() + 4;
    let len = body[start..].iter().position(|&b| b == b'"')?;
    Some(start..start + len)
}

/// The bytes of the value of field `key` in a form body (`key=…`, up to the next `&`).
fn form_value(body: &[u8], key: &str) -> Option<std::ops::Range<usize>> {
    let needle = format!("{key}=");
    let at = (0..body.len())
        .find(|&i| (i == 0 || body[i - 1] == b'&') && body[i..].starts_with(needle.as_bytes()))?;
    let start = at + needle.len();
    let len = body[start..]
        .iter()
        .position(|&b| b == b'&')
        .unwrap_or(body.len() - start);
    Some(start..start + len)
}

/// Replaces the first `from` in `body` by `to`; whether there was one.
fn replace(body: &mut Vec<u8>, from: &str, to: &str) -> bool {
    let Some(i) = find(body, from.as_bytes()) else {
        return false;
    };
    body.splice(i..i + from.len(), to.bytes());
    true
}

/// Another digit in place of `d` (9 becomes 1, so an amount keeps a leading digit).
fn bump(d: &mut u8) {
    *d = if *d == b'9' { b'1' } else { *d + 1 };
}

/// Turns the case of the first letter from the middle of `within` on (a letter of an escape
/// such as `%2B` is skipped): a base64 signature that still decodes, to other bytes.
fn flip_letter(bytes: &mut [u8], within: std::ops::Range<usize>) -> bool {
    let mid = within.start + within.len() / 2;
    let escaped = |j: usize| bytes[j.saturating_sub(2)..j].contains(&b'%');
    match (mid..within.end).find(|&j| bytes[j].is_ascii_alphabetic() && !escaped(j)) {
        Some(j) => {
            bytes[j] ^= 0x20;
            true
        }
        None => false,
    }
}

/// Whether a listener's answer acknowledges a notification (AMS: the `S` result JSON;
/// mainland: `success`).
fn acknowledges(a: &Answer) -> bool {
    posd::gateway::sandbox::notify::is_ack(a.status, &a.body)
        || (a.status == 200 && a.body == posd::gateway::alipay_cn::notify::ACK.as_bytes())
}

/// Whether a listener's answer refuses a notification for good: an AMS result `F`, or a
/// mainland `fail` with a 400 (the terminal and the hub answer a `fail` they could not record
/// with a 500, and the sender resends either).
fn refuses(a: &Answer) -> bool {
    let mainland = a.status == 400 && a.body == posd::gateway::alipay_cn::notify::RETRY.as_bytes();
    mainland
        || serde_json::from_slice::<Value>(&a.body)
            .is_ok_and(|v| v["result"]["resultStatus"] == "F")
}

/// A seed range from `var` (`A..B`, end exclusive), `default` when unset.
pub fn seed_range(var: &str, default: &str) -> (u64, u64) {
    let seeds = std::env::var(var).unwrap_or_else(|_| default.into());
    let (a, b) = seeds
        .split_once("..")
        .unwrap_or_else(|| panic!("{var}=A..B, not {seeds}"));
    (a.parse().unwrap(), b.parse().unwrap())
}

/// A number from `var`, `default` when unset.
pub fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// The proxy names a call by its sale and operation in both dialects, so that the n-th query
/// of a sale gets the same fault in every run of a seed: the mainland pay's seeded code names
/// its sale, and the sale's later calls (which carry only `out_trade_no`) follow it.
#[test]
fn the_proxy_reads_both_dialects_calls() {
    use posd::gateway::alipay_cn::wire::Params;

    let form = |method: &str, biz: &str| {
        let mut p = Params::default();
        p.push("app_id", "2021000000000086");
        p.push("method", method);
        p.push("biz_content", biz);
        p.push("sign", "c2lnbg==");
        p.form_body()
    };
    let pay = form(
        "alipay.trade.pay",
        r#"{"out_trade_no":"PR1","auth_code":"281234567890123407","total_amount":"1.00"}"#,
    );
    assert_eq!(
        call_of("/gateway.do", pay.as_bytes()),
        Call {
            id: "PR1".into(),
            sale: Some("281234567890123407".into()),
            op: "alipay.trade.pay".into(),
            pay: true,
        }
    );
    let query = form("alipay.trade.query", r#"{"out_trade_no":"PR1"}"#);
    assert_eq!(
        call_of("/gateway.do", query.as_bytes()),
        Call {
            id: "PR1".into(),
            sale: None,
            op: "alipay.trade.query".into(),
            pay: false,
        }
    );
    let ams = br#"{"paymentRequestId":"PR2","order":{"referenceOrderId":"S1-1"}}"#;
    assert_eq!(
        call_of("/ams/sandbox/api/v1/payments/pay", ams),
        Call {
            id: "PR2".into(),
            sale: Some("S1-1".into()),
            op: "pay".into(),
            pay: true,
        }
    );
    // At a fault rate of 0, only a planned late pay is held, and only the sale's first pay.
    let state = Mutex::new(ProxyState::default());
    state
        .lock()
        .unwrap()
        .late
        .insert("281234567890123407".into());
    let held = choose(&state, "/gateway.do", pay.as_bytes());
    assert!(
        matches!(held, Some((Fault::Hold, d)) if d >= Duration::from_millis(650)),
        "{held:?}"
    );
    assert_eq!(choose(&state, "/gateway.do", pay.as_bytes()), None);
    assert_eq!(choose(&state, "/gateway.do", query.as_bytes()), None);
    let s = state.lock().unwrap();
    assert_eq!(
        s.seen.get("281234567890123407/alipay.trade.query"),
        Some(&1)
    );
    assert_eq!((s.calls, s.late_held), (3, 1));
}

/// A listener that answers every request 200 with `body` and counts them.
async fn counting_listener(body: &'static [u8]) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    answering_listener(200, body).await
}

/// A listener that answers every request `status` and `body`, and counts them.
async fn answering_listener(
    status: u16,
    body: &'static [u8],
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    // Runs until the test's runtime ends.
    drop(accept_each(listener, move |mut sock| {
        let seen = seen.clone();
        async move {
            let mut buf = Vec::new();
            while let Ok(Some(_)) = read_request(&mut sock, &mut buf).await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let ok = Answer {
                    status,
                    headers: Vec::new(),
                    body: body.to_vec(),
                };
                if write_answer(&mut sock, &ok, false).await.is_err() {
                    return;
                }
            }
        }
    }));
    (url, count)
}

/// The relay hands each notification to one listener and, when that one does not answer (an
/// instance killed), to the next; with none answering the sender gets a 503 and retries.
#[tokio::test]
async fn the_relay_fails_over_to_a_listener_that_answers() {
    use std::sync::atomic::Ordering::SeqCst;

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (live, count) = counting_listener(b"ok").await;
    let relay = Relay::start(vec![dead.clone(), live]).await;
    relay.plan(0.0, 7);
    let http = reqwest::Client::new();
    for i in 0..6 {
        let r = http
            .post(format!("http://{}/alipay/notify", relay.addr))
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(count.load(SeqCst), 6, "every one reached the live listener");
    // Again, each old one to the live listener, whichever the relay chose first.
    let mut rng = StdRng::seed_from_u64(1);
    for d in relay.redeliver(4, &mut rng) {
        d.await.unwrap();
    }
    assert_eq!(count.load(SeqCst), 10);
    {
        let s = relay.state.lock().unwrap();
        assert_eq!((s.delivered, s.stale, s.unanswered), (6, 4, 0));
    }

    let lost = Relay::start(vec![dead]).await;
    let r = http
        .post(format!("http://{}/alipay/notify", lost.addr))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "no listener: the sender must retry");
    assert_eq!(lost.state.lock().unwrap().unanswered, 1);
}

/// Every kind of damage, in both dialects, turns a notification the gateway really signed
/// into one its verification refuses, and changes what it says it changes.
#[test]
fn every_damage_breaks_a_genuine_notifications_signature() {
    use posd::gateway::alipay_cn::notify as cn;
    use posd::gateway::alipay_cn::sign::{sign_content, sign_rsa2};
    use posd::gateway::alipay_cn::wire::Params;
    use posd::gateway::sign::{Message, PrivateKey, PublicKey};

    let key = PrivateKey::from_text(
        &crate::support::key_text("gateway_private_pkcs8.pem"),
        "gateway",
    )
    .unwrap();
    let public =
        PublicKey::from_text(&crate::support::key_text("gateway_public.pem"), "gateway").unwrap();

    // AMS: the body, and client-id, request-time and the path under the signature header.
    let body = br#"{"notifyType":"PAYMENT_RESULT","result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentRequestId":"12612081000000001000001000000012345","paymentId":"G1","paymentAmount":{"currency":"CNY","value":"1934"}}"#;
    let path = "/alipay/notify";
    let time = "2026-12-08T10:00:00+08:00";
    let message = |time: &'static str| Message {
        method: "POST",
        uri: path,
        client_id: "SANDBOX_CLIENT",
        time,
        body,
    };
    let ams = Request {
        path: path.into(),
        headers: vec![
            ("client-id".into(), "SANDBOX_CLIENT".into()),
            ("request-time".into(), time.into()),
            ("signature".into(), key.sign_header("1", &message(time))),
        ],
        body: body.to_vec(),
    };
    let ams_verifies = |r: &Request| {
        let h = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let Some(signature) = h("signature") else {
            return false;
        };
        let msg = Message {
            method: "POST",
            uri: &r.path,
            client_id: h("client-id").unwrap(),
            time: h("request-time").unwrap(),
            body: &r.body,
        };
        public.verify_header(&msg, signature).is_ok()
    };
    assert!(ams_verifies(&ams), "the genuine AMS notification verifies");

    // Mainland: a form signed over its sorted fields, `sign` and `sign_type` last.
    let fields = [
        ("notify_time", "2026-12-08 10:00:00"),
        ("notify_type", "trade_status_sync"),
        ("app_id", "2021000000000086"),
        ("trade_no", "2026120822001"),
        ("out_trade_no", "12612081000000001000001000000012345"),
        ("trade_status", "TRADE_SUCCESS"),
        ("total_amount", "9.50"),
    ];
    let content = sign_content(fields.iter().copied(), &["sign", "sign_type"], true);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.extend_pairs(fields);
    form.append_pair("sign", &sign_rsa2(&key, &content));
    form.append_pair("sign_type", "RSA2");
    let cn_req = Request {
        path: "/alipay/notify".into(),
        headers: vec![],
        body: form.finish().into_bytes(),
    };
    let cn_verifies = |r: &Request| cn::verify(&public, "2021000000000086", &r.body).is_ok();
    assert!(
        cn_verifies(&cn_req),
        "the genuine mainland notification verifies"
    );

    let text = |r: &Request| String::from_utf8(r.body.clone()).unwrap();
    let header = |r: &Request, n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    for how in Damage::ALL {
        let (a, c) = (damaged(&ams, how), damaged(&cn_req, how));
        assert!(!ams_verifies(&a), "{how:?}: the AMS one must not verify");
        assert!(
            !cn_verifies(&c),
            "{how:?}: the mainland one must not verify"
        );
        // What each kind changes, and that it changed nothing else.
        let (ams_body, cn_body) = (text(&a), text(&c));
        let (ams_signature, cn_sign) = (
            header(&a, "signature"),
            Params::parse_form(&c.body).and_then(|p| p.get("sign").map(str::to_string)),
        );
        let genuine_sign =
            Params::parse_form(&cn_req.body).and_then(|p| p.get("sign").map(str::to_string));
        match how {
            Damage::Amount => {
                assert!(ams_body.contains(r#""value":"2934""#), "{ams_body}");
                assert!(cn_body.contains("total_amount=1.50"), "{cn_body}");
            }
            Damage::Payment => {
                assert!(ams_body
                    .contains(r#""paymentRequestId":"12612081000000001000001000000012346""#));
                assert!(cn_body.contains("out_trade_no=12612081000000001000001000000012346"));
            }
            Damage::Outcome => {
                assert!(ams_body.contains(r#""resultStatus":"F""#), "{ams_body}");
                assert!(cn_body.contains("trade_status=TRADE_CLOSED"), "{cn_body}");
            }
            Damage::Time => {
                assert_eq!(
                    header(&a, "request-time").unwrap(),
                    "2026-12-08T10:00:00+08:01"
                );
                assert!(
                    cn_body.contains("notify_time=2026-12-08+10%3A00%3A01"),
                    "{cn_body}"
                );
            }
            Damage::Signature => {
                let genuine = header(&ams, "signature").unwrap();
                let got = ams_signature.clone().unwrap();
                assert_eq!(got.len(), genuine.len());
                assert_eq!(
                    got.bytes()
                        .zip(genuine.bytes())
                        .filter(|(x, y)| x != y)
                        .count(),
                    1,
                    "one character of the signature: {got}"
                );
                let (got, genuine) = (cn_sign.clone().unwrap(), genuine_sign.clone().unwrap());
                assert_eq!(got.len(), genuine.len());
                assert_ne!(got, genuine);
            }
            Damage::Unsigned => {
                assert_eq!(ams_signature, None);
                assert_eq!(cn_sign, None);
                assert!(cn_body.ends_with("&sign_type=RSA2"), "{cn_body}");
            }
        }
        if how != Damage::Time {
            assert_eq!(header(&a, "request-time"), header(&ams, "request-time"));
        }
        if !matches!(how, Damage::Signature | Damage::Unsigned) {
            assert_eq!(ams_signature, header(&ams, "signature"), "{how:?}");
            assert_eq!(cn_sign, genuine_sign, "{how:?}");
        }
    }
    // A body that carries none of it is damaged in its middle byte.
    let plain = Request {
        path: "/alipay/notify".into(),
        headers: vec![],
        body: b"total_amount".to_vec(),
    };
    assert_eq!(damaged(&plain, Damage::Outcome).body, b"total_`mount");
}

/// One damaged notification a listener acknowledges fails the round's check, and so does a
/// genuine one a listener refuses.
#[tokio::test]
async fn a_damaged_notification_must_not_be_acknowledged() {
    // A listener that acknowledges whatever it is sent.
    let (url, _) = counting_listener(b"success").await;
    let relay = Relay::start(vec![url]).await;
    relay.plan(1.0, 3);
    let http = reqwest::Client::new();
    let mut sent = 0;
    while !relay
        .state
        .lock()
        .unwrap()
        .notes
        .keys()
        .any(|n| matches!(n, Note::Damaged(_)))
    {
        sent += 1;
        assert!(sent < 100, "the relay damages a quarter of what it faults");
        let _ = http
            .post(format!("http://{}/alipay/notify", relay.addr))
            .body("total_amount=12.34")
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        relay
            .state
            .lock()
            .unwrap()
            .damaged_acked
            .values()
            .sum::<u64>(),
        1
    );
    assert!(relay.check_listeners().is_err());

    // A listener that refuses a notification as the sandbox sent it fails the check too: an
    // AMS `F`, or a mainland `fail` with a 400 (with a 500 it only asks for it again).
    let answers: [(u16, &[u8], u64); 4] = [
        (200, br#"{"result":{"resultStatus":"F"}}"#, 1),
        (400, b"fail", 1),
        (500, b"fail", 0),
        (200, b"success", 0),
    ];
    for (status, body, refused) in answers {
        let (url, _) = answering_listener(status, body).await;
        let relay = Relay::start(vec![url]).await;
        relay.plan(0.0, 3);
        http.post(format!("http://{}/alipay/notify", relay.addr))
            .body("out_trade_no=P1")
            .send()
            .await
            .unwrap();
        let what = format!("{status} {}", String::from_utf8_lossy(body));
        assert_eq!(
            relay.state.lock().unwrap().genuine_refused,
            refused,
            "{what}"
        );
        assert_eq!(relay.check_listeners().is_err(), refused == 1, "{what}");
    }
}

/// A pay held past its client's deadline stays in flight at the proxy, though the client has
/// given up, until it has reached the upstream: a round's check waits for that, so the late
/// charge is in the record it reads.
#[tokio::test]
async fn a_held_pay_is_in_flight_until_it_reaches_the_upstream() {
    use std::sync::atomic::Ordering::SeqCst;

    let (upstream, count) = counting_listener(b"ok").await;
    let proxy = Proxy::start(upstream).await;
    proxy.hold_pays(300..301);
    proxy.hold_first_pay("S1-1".into());
    let gave_up = reqwest::Client::new()
        .post(format!("http://{}/ams/api/v1/payments/pay", proxy.addr))
        .timeout(Duration::from_millis(50))
        .body(r#"{"paymentRequestId":"PR1","order":{"referenceOrderId":"S1-1"}}"#)
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up: {gave_up:?}");
    assert_eq!(proxy.in_flight.count(), 1, "held, not forgotten");
    assert_eq!(count.load(SeqCst), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while proxy.in_flight.count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count.load(SeqCst),
        1,
        "it reached the upstream before it left the count"
    );
    assert_eq!(proxy.state.lock().unwrap().late_held, 1);
}

/// `scripts/broken-builds/`: each deliberately broken build still applies to today's source
/// (`git apply --check`), and names in its `caught-by:` line seeded smokes that exist, so
/// `scripts/broken-builds/run` can show the runners catching it.
#[test]
fn every_broken_build_still_applies_and_names_its_smokes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("scripts/broken-builds");
    let mut patches: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "patch"))
        .collect();
    patches.sort();
    assert!(patches.len() >= 6, "{patches:?}");
    for p in &patches {
        let text = std::fs::read_to_string(p).unwrap();
        let out = std::process::Command::new("git")
            .args(["apply", "--check"])
            .arg(p)
            .current_dir(root)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{} no longer applies to the source; mend it: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let tests: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("caught-by:"))
            .unwrap_or_else(|| panic!("{} has no caught-by: line", p.display()))
            .split_whitespace()
            .collect();
        assert!(!tests.is_empty(), "{}", p.display());
        for t in tests {
            // `hub::chaos::hub_chaos_smoke` is `fn hub_chaos_smoke` in tests/it/hub/chaos.rs.
            let (module, name) = t.rsplit_once("::").unwrap();
            let file = root.join(format!("tests/it/{}.rs", module.replace("::", "/")));
            let source = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                name.contains("smoke") && source.contains(&format!("async fn {name}()")),
                "{}: caught-by names {t}, which is not a seeded smoke in {}",
                p.display(),
                file.display()
            );
        }
    }
}
