//! Sale benchmarks, each beside the machine's floors measured in the same run (`floor.rs`):
//! (a) a sale with its code accepted → pay request on the wire (id, intent commit, JSON,
//!     sign, send; until its first bytes are read at the gateway's socket, and beside that
//!     until the gateway's handler runs) and (a') the same from a scan bound to a waiting
//!     sale, against the larger
//!     of one RSA-2048 sign and the intent's own statements committed on a bare connection
//!     (the sign overlaps the commit), and against a one-row `synchronous=FULL` commit; with
//!     the two done at once on bare threads, and a bare hop of the request over loopback;
//! (b) full sales per second, 32 in flight, against a loopback gateway that verifies every
//!     pay and signs every answer on the same cores (on a runtime of its own, as a remote
//!     gateway's threads would be), against the fsync and CPU ceilings, with
//!     the sales' latencies and how many sales one fsync served; timed in three stretches,
//!     each also held against the floors measured just before and after it; with the CPU per
//!     sale by thread (posd's worker, the gateway's, posd's database threads), and the
//!     store's work for a sale done bare on one thread as the floor of the last.
//! Every commit floor is timed on a WAL that has wrapped, as the store's has by (a) (it prints
//! the WAL's size around (a)): a growing WAL's fsync also journals the file's new size.
//! The engine runs on the daemon's own runtime (`posd::cli::daemon_runtime`: one worker).
//! Run: `cargo bench --bench sale`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::money::{Amount, Currency};
use posd::engine::{Engine, EngineSettings, SaleRequest};
use posd::gateway::client::{AmsClient, ClientSettings, MerchantIdentity};
use posd::gateway::sign::{Message, PrivateKey, PublicKey};
use posd::store::Store;
use tokio::sync::mpsc;

#[path = "floor.rs"]
mod floor;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");

fn key(name: &str) -> String {
    std::fs::read_to_string(format!("{KEYS}{name}")).expect("test key")
}

/// The fake gateway's connections, each stamping the moment a request's first bytes are read
/// from its socket (the first read after the last answer written): when the pay arrived off
/// the wire, before the HTTP server parsed it.
struct Stamping {
    inner: tokio::net::TcpListener,
    wire: mpsc::UnboundedSender<Instant>,
}

impl axum::serve::Listener for Stamping {
    type Io = StampedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (StampedIo, std::net::SocketAddr) {
        let (inner, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let wire = self.wire.clone();
        (
            StampedIo {
                inner,
                wire,
                between_requests: true,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// One of [`Stamping`]'s connections.
struct StampedIo {
    inner: tokio::net::TcpStream,
    wire: mpsc::UnboundedSender<Instant>,
    /// No byte read since the last answer was written: the next read starts a request.
    between_requests: bool,
}

impl tokio::io::AsyncRead for StampedIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && std::mem::take(&mut self.between_requests)
        {
            let _ = self.wire.send(Instant::now());
        }
        polled
    }
}

impl tokio::io::AsyncWrite for StampedIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.between_requests = true;
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.between_requests = true;
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A zero-delay gateway on the same cores: verifies every pay's signature, answers with an S
/// signed for that request, and reports two arrival times for each pay: off the wire (its
/// first bytes read from the socket, [`Stamping`]) and at the handler (HTTP parsed, before it
/// verifies).
async fn fake_gateway(
    wire: mpsc::UnboundedSender<Instant>,
    arrivals: mpsc::UnboundedSender<Instant>,
) -> String {
    let gw_key =
        Arc::new(PrivateKey::from_text(&key("gateway_private_pkcs8.pem"), "gateway").unwrap());
    let merchant = Arc::new(PublicKey::from_text(&key("merchant_public.pem"), "merchant").unwrap());
    let body = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentId":"GBENCH"}"#;
    let app = axum::Router::new().route(
        "/ams/api/v1/payments/pay",
        post(move |headers: HeaderMap, request: Bytes| {
            let arrived = Instant::now();
            let (arrivals, gw_key, merchant) = (arrivals.clone(), gw_key.clone(), merchant.clone());
            async move {
                let _ = arrivals.send(arrived);
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let (client_id, time) = (h("client-id"), h("request-time"));
                let msg = Message {
                    method: "POST",
                    uri: "/ams/api/v1/payments/pay",
                    client_id: &client_id,
                    time: &time,
                    body: &request,
                };
                if merchant.verify_header(&msg, &h("signature")).is_err() {
                    return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
                }
                let sig = gw_key.sign_header(
                    "1",
                    &Message {
                        body: body.as_bytes(),
                        ..msg
                    },
                );
                (
                    StatusCode::OK,
                    [
                        ("client-id", client_id),
                        ("response-time", time),
                        ("signature", sig),
                    ],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let l = Stamping { inner, wire };
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

fn engine(base: String, dir: &std::path::Path) -> Engine {
    let settings = ClientSettings {
        base_url: base,
        client_id: "BENCH_CLIENT".into(),
        key_version: "1".into(),
        merchant_key: Arc::new(
            PrivateKey::from_text(&key("merchant_private_pkcs8.pem"), "merchant").unwrap(),
        ),
        gateway_key: PublicKey::from_text(&key("gateway_public.pem"), "gateway").unwrap(),
        notify_url: None,
        agent_token: None,
        insecure_http: true,
        connect_timeout: Duration::from_secs(3),
        pay_timeout: Duration::from_secs(5),
        inquiry_timeout: Duration::from_secs(3),
        cancel_timeout: Duration::from_secs(3),
        merchant: MerchantIdentity {
            merchant_id: "M1".into(),
            merchant_name: "Bench".into(),
            merchant_mcc: "5812".into(),
            store_id: "S1".into(),
            store_name: "Bench Store".into(),
            store_mcc: "5812".into(),
            terminal_id: "T0001".into(),
        },
    };
    let client = AmsClient::new(settings).unwrap();
    let store = Store::open(&dir.join("bench.sqlite3")).unwrap();
    Engine::new(
        store,
        Arc::new(client),
        EngineSettings {
            terminal_id: "T0001".into(),
            timezone: Some(posd::config::Tz::named("Asia/Shanghai").unwrap()),
            description: "bench".into(),
            merchant_name: "Bench".into(),
            store_name: "Bench Store".into(),
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
        },
    )
}

/// A bare connection to a new database of posd's schema at `path`: WAL, `synchronous=FULL`,
/// no queue and no thread of posd's.
fn bare_db(path: &std::path::Path) -> rusqlite::Connection {
    drop(Store::open(path).unwrap());
    let c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c
}

/// A sale's pay intent with its code, as the bare floors commit it.
fn paying_intent() -> posd::store::payments::NewPayment {
    posd::store::payments::NewPayment {
        order_ref: None,
        amount: Amount::parse("12.34", Currency::from_code("CNY").unwrap()).unwrap(),
        state: posd::domain::machine::State::Paying,
        code_masked: Some("2812**********3456".into()),
        terminal_time: "2026-11-21T10:00:00+08:00".into(),
        pay_expires_at: Some(180_000),
    }
}

/// Commits one pay intent with `payments::create`'s own statements in one `BEGIN IMMEDIATE …
/// COMMIT` on `c`.
fn commit_bare_intent(c: &mut rusqlite::Connection, tag: &str) {
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    posd::store::payments::create(c, &paying_intent(), 0, |seq| format!("{tag}-{seq}")).unwrap();
    c.execute_batch("COMMIT").unwrap();
}

/// A [`bare_db`] at `path` whose WAL has wrapped ([`floor::wrap_wal`]), filled with intents.
fn bare_db_wrapped(path: &std::path::Path) -> rusqlite::Connection {
    let mut c = bare_db(path);
    floor::wrap_wal(path, |i| commit_bare_intent(&mut c, &format!("FILL{i}")));
    c
}

/// Median of `n` intent commits made the cheapest way ([`commit_bare_intent`] on this
/// thread), on a WAL that has wrapped as the store's has by (a) (the bench prints its size
/// before and after), or on a new, growing one. The commit side of (a) can cost no less.
fn bare_intent_commit(dir: &std::path::Path, n: usize, wrapped: bool) -> Duration {
    let path = dir.join(format!("intent-floor-{n}-{wrapped}.sqlite3"));
    let mut c = if wrapped {
        bare_db_wrapped(&path)
    } else {
        bare_db(&path)
    };
    let mut took: Vec<Duration> = (0..n)
        .map(|i| {
            let t0 = Instant::now();
            commit_bare_intent(&mut c, &format!("FLOOR{i}"));
            t0.elapsed()
        })
        .collect();
    took.sort();
    took[took.len() / 2]
}

/// How many payments the engine's store holds.
async fn payment_count(e: &Engine) -> i64 {
    e.store()
        .read(|c| Ok(c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0))?))
        .await
        .unwrap()
}

/// Median of `n` overlaps done the cheapest way: this thread wakes a parked thread that
/// commits an intent bare ([`commit_bare_intent`]), signs a pay-sized message meanwhile, and
/// waits for the commit. What two threads of this machine take to do the two at once,
/// wake-up included: (a)'s floor if the overlap were perfect here.
fn bare_overlap(dir: &std::path::Path, n: usize) -> Duration {
    let mut c = bare_db_wrapped(&dir.join(format!("overlap-floor-{n}.sqlite3")));
    let (go_tx, go_rx) = std::sync::mpsc::channel::<usize>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let committer = std::thread::spawn(move || {
        for i in go_rx {
            commit_bare_intent(&mut c, &format!("OVER{i}"));
            done_tx.send(()).unwrap();
        }
    });
    let key = PrivateKey::from_text(&key("merchant_private_pkcs8.pem"), "merchant").unwrap();
    let body = vec![b'x'; 800];
    let content = floor::pay_message(&body).content();
    let mut took: Vec<Duration> = (0..n)
        .map(|i| {
            let t0 = Instant::now();
            go_tx.send(i).unwrap();
            std::hint::black_box(key.sign(std::hint::black_box(&content)));
            done_rx.recv().unwrap();
            t0.elapsed()
        })
        .collect();
    drop(go_tx);
    committer.join().unwrap();
    took.sort();
    took[took.len() / 2]
}

/// Median of `n` hops of a pay-sized request over loopback done the cheapest way: written
/// by the calling task (on posd's runtime) to a socket whose reader is a task on the
/// gateway's runtime, timed until that task has read it all. No HTTP on either side: the
/// part of (a) past `start_sale`'s return can cost no less.
async fn bare_hop(gateway: &tokio::runtime::Handle, n: usize) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 1200;
    let listener = gateway
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<Instant>();
    gateway.spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; SIZE];
        while socket.read_exact(&mut buf).await.is_ok() {
            if arrived_tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let request = vec![b'x'; SIZE];
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        socket.write_all(&request).await.unwrap();
        took.push(arrived.recv().await.unwrap() - t0);
    }
    took.sort();
    took[took.len() / 2]
}

/// CPU per sale of the store's own work for a sale done the cheapest way: on this thread,
/// on bare connections (a writer and a reader, as posd has), `group` sales to a commit. The
/// intents committed together (`payments::create`); then their answers (the payment read,
/// moved to SUCCEEDED with its journal event, the gateway's time and its slip, by
/// `transition::apply`), each job in its savepoint as posd's writer runs them; then each
/// sale's two reads of a long-poll (the payment and its journal, at the wait's start and
/// end). What posd's database threads could cost at best, with no hand-off between threads.
fn bare_store_cpu(dir: &std::path::Path, group: usize, n: usize) -> Duration {
    use posd::domain::machine::State;
    use posd::store::transition::{apply, Change};
    let path = dir.join(format!("store-floor-{group}-{n}.sqlite3"));
    let mut w = bare_db(&path);
    let r = rusqlite::Connection::open(&path).unwrap();
    let local = chrono::NaiveDate::from_ymd_opt(2026, 11, 21)
        .and_then(|d| d.and_hms_opt(10, 0, 0))
        .unwrap();
    let rounds = n.div_ceil(group);
    let start = floor::thread_cpu();
    for round in 0..rounds {
        w.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut ids = Vec::with_capacity(group);
        for i in 0..group {
            w.execute_batch("SAVEPOINT job").unwrap();
            let rec = posd::store::payments::create(&mut w, &paying_intent(), 0, |seq| {
                format!("20261121100000T0001{seq:08}{round}x{i}")
            })
            .unwrap();
            w.execute_batch("RELEASE job").unwrap();
            ids.push(rec.payment_request_id);
        }
        w.execute_batch("COMMIT").unwrap();
        w.execute_batch("BEGIN IMMEDIATE").unwrap();
        for id in &ids {
            w.execute_batch("SAVEPOINT job").unwrap();
            let rec = posd::store::payments::get(&w, id).unwrap().unwrap();
            let change = Change {
                to: Some(State::Succeeded),
                cause: "pay answered S".into(),
                result_code: Some("SUCCESS".into()),
                result_message: Some("success".into()),
                payment_id: Some("GBENCH".into()),
                gateway_time: Some("2026-11-21T10:00:01+08:00".into()),
                slip: Some(posd::domain::slip::SlipData {
                    kind: posd::domain::slip::SlipKind::Sale,
                    merchant_name: "Bench".into(),
                    store_name: "Bench Store".into(),
                    terminal_id: "T0001".into(),
                    amount: rec.amount,
                    payment_request_id: id.clone(),
                    payment_id: Some("GBENCH".into()),
                    refund_request_id: None,
                    local_time: local,
                    copy: false,
                }),
                ..Change::default()
            };
            assert!(apply(&mut w, id, State::Paying, &change, 1)
                .unwrap()
                .is_some());
            w.execute_batch("RELEASE job").unwrap();
        }
        w.execute_batch("COMMIT").unwrap();
        for id in &ids {
            for _ in 0..2 {
                let payment = posd::store::payments::get(&r, id).unwrap().unwrap();
                std::hint::black_box((payment, posd::store::payments::events(&r, id).unwrap()));
            }
        }
    }
    (floor::thread_cpu() - start) / (rounds * group) as u32
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The `q` quantile of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and wants a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n_lat, n_sales) = if quick { (5, 20) } else { (300, 3000) };
    let dir = tempfile::tempdir().unwrap();
    let n_commit = if quick { 10 } else { 300 };
    let n_rsa = if quick { 5 } else { 300 };
    let floors_before = floor::Floors::measure(&dir.path().join("floor"), n_commit, n_rsa);
    let intent_before = bare_intent_commit(dir.path(), n_commit as usize, true);
    let growing_before = bare_intent_commit(dir.path(), n_commit as usize, false);
    let overlap_before = bare_overlap(dir.path(), n_commit as usize);
    // The gateway on a runtime of its own, as a remote one would be on its own threads; the
    // engine and the sales on the daemon's runtime (one worker), as `posd run` has them.
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (wire_tx, mut wire_rx) = mpsc::unbounded_channel();
    let base = gateway_rt.block_on(fake_gateway(wire_tx, tx));
    let rt = posd::cli::daemon_runtime();
    let gateway = gateway_rt.handle().clone();
    let bench = async move {
        let e = engine(base, dir.path());
        let code = PaymentCode::parse("281234567890123456", &CodeRules::default()).unwrap();
        let cny = Currency::from_code("CNY").unwrap();
        // Warm up the connection pool and caches.
        for _ in 0..3 {
            let r = e
                .start_sale(SaleRequest {
                    amount: Amount::parse("1", cny).unwrap(),
                    order_ref: None,
                    code: Some(code.clone()),
                })
                .await
                .unwrap();
            e.wait_final(&r.payment_request_id, Duration::from_secs(10))
                .await
                .unwrap();
            rx.recv().await.unwrap();
            wire_rx.recv().await.unwrap();
        }
        // The intent's transaction alone (what the commit side of (a) costs).
        let mut intents = Vec::new();
        for i in 0..n_lat {
            let new = posd::store::payments::NewPayment {
                order_ref: None,
                amount: Amount::parse("12.34", cny).unwrap(),
                state: posd::domain::machine::State::AwaitingCode,
                code_masked: None,
                terminal_time: "2026-11-21T10:00:00+08:00".into(),
                pay_expires_at: None,
            };
            let t0 = Instant::now();
            e.store()
                .call(move |c| {
                    Ok(posd::store::payments::create(c, &new, 0, |seq| {
                        format!("BENCH{i}-{seq}")
                    })?)
                })
                .await
                .unwrap();
            intents.push(t0.elapsed());
            let id = e
                .store()
                .call(|c| {
                    Ok(posd::store::payments::awaiting_code(c)?
                        .unwrap()
                        .payment_request_id)
                })
                .await
                .unwrap();
            e.abort(&id).await.unwrap();
        }
        intents.sort();
        // Where the time goes when the sign overlaps the commit.
        let mut parts = Vec::new();
        for i in 0..n_lat {
            let new = posd::store::payments::NewPayment {
                order_ref: None,
                amount: Amount::parse("12.34", cny).unwrap(),
                state: posd::domain::machine::State::Paying,
                code_masked: None,
                terminal_time: "2026-11-21T10:00:00+08:00".into(),
                pay_expires_at: None,
            };
            let t0 = Instant::now();
            let (id_tx, id_rx) = tokio::sync::oneshot::channel::<String>();
            let commit = e.store().call(move |c| {
                Ok(posd::store::payments::create(c, &new, 0, |seq| {
                    let id = format!("BENCHP{i}-{seq}");
                    let _ = id_tx.send(id.clone());
                    id
                })?)
            });
            let gw = e.gateway().clone();
            let code = code.clone();
            let prepare = async move {
                let id = id_rx.await.unwrap();
                let t_id = t0.elapsed();
                let _p = gw.prepare_pay(posd::gateway::PayOrder {
                    payment_request_id: id,
                    amount: Amount::parse("12.34", cny).unwrap(),
                    code,
                    order_ref: None,
                    description: "x".into(),
                    terminal_time: chrono::Utc::now().fixed_offset(),
                    expires_at: None,
                });
                (t_id, t0.elapsed())
            };
            let (r, (t_id, t_signed)) = tokio::join!(commit, prepare);
            r.unwrap();
            parts.push((t_id, t_signed, t0.elapsed()));
        }
        parts.sort_by_key(|p| p.2);
        let m = parts[parts.len() / 2];
        println!(
            "overlap: id handed out at {}, signed at {}, both done at {}",
            ms(m.0),
            ms(m.1),
            ms(m.2)
        );
        println!(
            "the intent's transaction alone (create, through Store::call): median {}",
            ms(intents[intents.len() / 2])
        );
        let hop_before = bare_hop(&gateway, n_lat).await;
        // The store's size and its WAL's, before and after (a): whether its commits grow
        // the WAL or overwrite it, as the floor's do.
        let db = dir.path().join("bench.sqlite3");
        let (payments_before, wal_before) = (payment_count(&e).await, floor::wal_bytes(&db));
        // (a) scan accepted -> pay on the wire, one sale at a time: until its first bytes are
        // read at the gateway's socket (`off`), and until its handler runs (`lat`).
        let (mut lat, mut off) = (Vec::new(), Vec::new());
        let mut returned = Vec::new();
        // From start_sale's return to the pay's arrival off the wire: the payment's task, the
        // HTTP client and loopback, none of which the floor counts; then the gateway's HTTP
        // server, until its handler runs.
        let (mut wire, mut server) = (Vec::new(), Vec::new());
        for _ in 0..n_lat {
            let t0 = Instant::now();
            let r = e
                .start_sale(SaleRequest {
                    amount: Amount::parse("12.34", cny).unwrap(),
                    order_ref: None,
                    code: Some(code.clone()),
                })
                .await
                .unwrap();
            let back = t0.elapsed();
            returned.push(back);
            let (t_off, t1) = (wire_rx.recv().await.unwrap(), rx.recv().await.unwrap());
            lat.push(t1 - t0);
            off.push(t_off - t0);
            wire.push((t_off - t0).saturating_sub(back));
            server.push(t1 - t_off);
            e.wait_final(&r.payment_request_id, Duration::from_secs(10))
                .await
                .unwrap();
        }
        for v in [&mut lat, &mut off, &mut returned, &mut wire, &mut server] {
            v.sort();
        }
        let wal_after = floor::wal_bytes(&db);
        let median = off[off.len() / 2];
        let p95 = off[off.len() * 95 / 100];
        let handler_median = lat[lat.len() / 2];
        // (a') the same from a scan: the sale waits for its code, the scan binds it.
        let (mut scan_lat, mut scan_handler) = (Vec::new(), Vec::new());
        for _ in 0..n_lat {
            let r = e
                .start_sale(SaleRequest {
                    amount: Amount::parse("12.34", cny).unwrap(),
                    order_ref: None,
                    code: None,
                })
                .await
                .unwrap();
            let t0 = Instant::now();
            e.bind_code(code.clone()).await.unwrap();
            let (t_off, t1) = (wire_rx.recv().await.unwrap(), rx.recv().await.unwrap());
            scan_lat.push(t_off - t0);
            scan_handler.push(t1 - t0);
            e.wait_final(&r.payment_request_id, Duration::from_secs(10))
                .await
                .unwrap();
        }
        scan_lat.sort();
        scan_handler.sort();
        let scan_median = scan_lat[scan_lat.len() / 2];
        // (b) full sales per second, 32 sales in flight.
        const IN_FLIGHT: usize = 32;
        // Per sale: two commits in sequence (the intent, the answer); the terminal signs the
        // pay and verifies the answer, the gateway verifies the pay and signs the answer.
        let per_sale = floor::PerItem {
            fsyncs: 2.0 / IN_FLIGHT as f64,
            fsyncs_are:
                "the intent and the answer, one after the other, each shared by the sales in flight",
            signs: 2.0,
            verifies: 2.0,
        };
        // Timed in stretches, each between two short floor measurements (a sign's cost moves
        // from one minute to the next on a shared virtual machine).
        const STRETCHES: usize = 3;
        let mut stretches = floor::Stretches::start(dir.path());
        let mut sale_lat = Vec::new();
        let (mut elapsed, mut cpu) = (Duration::ZERO, floor::CpuSplit::default());
        let commits_before = e.store().commit_counts();
        for _ in 0..STRETCHES {
            let cpu0 = floor::CpuSplit::now(&gateway).await;
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..IN_FLIGHT {
                let e = e.clone();
                let code = code.clone();
                let per = (n_sales / IN_FLIGHT / STRETCHES).max(1);
                tasks.push(tokio::spawn(async move {
                    let mut took = Vec::with_capacity(per);
                    for _ in 0..per {
                        let t0 = Instant::now();
                        let r = e
                            .start_sale(SaleRequest {
                                amount: Amount::parse("1.00", cny).unwrap(),
                                order_ref: None,
                                code: Some(code.clone()),
                            })
                            .await
                            .unwrap();
                        let v = e
                            .wait_final(&r.payment_request_id, Duration::from_secs(30))
                            .await
                            .unwrap();
                        assert_eq!(
                            v.payment.state,
                            posd::domain::machine::State::Succeeded,
                            "worker {w}"
                        );
                        took.push(t0.elapsed());
                    }
                    took
                }));
            }
            let mut done_here = 0;
            for t in tasks {
                let took = t.await.unwrap();
                done_here += took.len();
                sale_lat.extend(took);
            }
            let took_here = start.elapsed();
            elapsed += took_here;
            cpu = cpu.plus(floor::CpuSplit::now(&gateway).await.since(cpu0));
            stretches.after(done_here as f64 / took_here.as_secs_f64(), per_sale);
        }
        let commits = e.store().commit_counts();
        while rx.try_recv().is_ok() {}
        while wire_rx.try_recv().is_ok() {}
        sale_lat.sort();
        let done = sale_lat.len();
        let rate = done as f64 / elapsed.as_secs_f64();
        let fsyncs = (commits.transactions - commits_before.transactions) as f64;
        let jobs = (commits.jobs - commits_before.jobs) as f64;
        // Floors measured in this run, before and after the load (the lower of each: other
        // work on a shared machine only ever makes one slower).
        let floors = stretches
            .cheapest(floors_before)
            .min(floor::Floors::measure(
                &dir.path().join("floor-after"),
                n_commit,
                n_rsa,
            ));
        let hop_floor = hop_before.min(bare_hop(&gateway, n_lat).await);
        let intent_floor =
            intent_before.min(bare_intent_commit(dir.path(), n_commit as usize + 1, true));
        let growing_floor =
            growing_before.min(bare_intent_commit(dir.path(), n_commit as usize + 1, false));
        let overlap_floor = overlap_before.min(bare_overlap(dir.path(), n_commit as usize + 1));
        println!(
            "(a) sale with its code -> pay on the wire (its first bytes read at the gateway's \
             socket): median {}  p95 {}  ({} sales, one at a time; the store held {} payments, \
             its -wal {} bytes before and {} after)",
            ms(median),
            ms(p95),
            n_lat,
            payments_before,
            wal_before,
            wal_after
        );
        println!(
            "    of which start_sale returned (intent committed, pay signed): median {}; from \
             there to the wire (the payment's task, HTTP client, loopback): median {}",
            ms(returned[returned.len() / 2]),
            ms(wire[wire.len() / 2])
        );
        println!(
            "    to the gateway's handler (its HTTP server parsed the pay): median {}  p95 {}; \
             wire -> handler: median {}",
            ms(handler_median),
            ms(lat[lat.len() * 95 / 100]),
            ms(server[server.len() / 2])
        );
        println!(
            "(a') scan binds a waiting sale -> pay on the wire: median {}  p95 {}; to the \
             handler: median {}",
            ms(scan_median),
            ms(scan_lat[scan_lat.len() * 95 / 100]),
            ms(scan_handler[scan_handler.len() / 2])
        );
        // (a): the sign overlaps the intent's commit, so the floor is the larger of the two.
        // The intent's commit is bounded below by the intent's own statements committed on a
        // bare connection whose WAL has wrapped as the store's has, and further below by a
        // one-row commit: both ratios are printed. The same commits on a new, growing WAL
        // are printed beside, to show what the WAL's state costs.
        let larger = floors.sign.max(intent_floor);
        let strict = floors.sign.max(floors.commit);
        println!(
            "(a) floor: max(sign {} ms, the intent's statements committed bare {} ms) = {} ms; \
             (a) median is {:.2} x it, (a') {:.2} x (target <= 1.3 x); to the handler: (a) \
             {:.2} x",
            floor::ms(floors.sign),
            floor::ms(intent_floor),
            floor::ms(larger),
            median.as_secs_f64() / larger.as_secs_f64(),
            scan_median.as_secs_f64() / larger.as_secs_f64(),
            handler_median.as_secs_f64() / larger.as_secs_f64()
        );
        // SQLite checkpoints at 1,000 pages (4 KiB, each with a 24-byte frame header): a WAL
        // that size has wrapped at least once.
        let store_wrapped = wal_before >= 1000 * (4096 + 24);
        println!(
            "    the intent's commit bare is on a WAL that has wrapped, {}; on a new, growing WAL \
             it takes {} ms ({:.2} x)",
            if store_wrapped {
                "as the store's had (its size above)"
            } else {
                "which the store's had NOT (its size above): its commits grew it"
            },
            floor::ms(growing_floor),
            growing_floor.as_secs_f64() / intent_floor.as_secs_f64()
        );
        println!(
            "    against a one-row commit ({} ms) instead: max = {} ms, (a) {:.2} x, (a') {:.2} x",
            floor::ms(floors.commit),
            floor::ms(strict),
            median.as_secs_f64() / strict.as_secs_f64(),
            scan_median.as_secs_f64() / strict.as_secs_f64()
        );
        println!(
            "    the two at once on two threads of this machine (wake a committer, sign, wait): {} ms \
             = {:.2} x the larger; (a) is {:.2} x it, (a') {:.2} x",
            floor::ms(overlap_floor),
            overlap_floor.as_secs_f64() / larger.as_secs_f64(),
            median.as_secs_f64() / overlap_floor.as_secs_f64(),
            scan_median.as_secs_f64() / overlap_floor.as_secs_f64()
        );
        let with_hop = overlap_floor + hop_floor;
        println!(
            "    the pay's hop done bare (a pay-sized request from a task on posd's runtime to one \
             on the gateway's, over loopback, no HTTP): {} ms, so the part past start_sale's \
             return is {:.2} x it; the two at once and then the hop: {} ms, (a) is {:.2} x it, \
             (a') {:.2} x",
            floor::ms(hop_floor),
            wire[wire.len() / 2].as_secs_f64() / hop_floor.as_secs_f64(),
            floor::ms(with_hop),
            median.as_secs_f64() / with_hop.as_secs_f64(),
            scan_median.as_secs_f64() / with_hop.as_secs_f64()
        );
        println!(
            "(b) full sales: {done} in {:.2} s, {IN_FLIGHT} in flight; a sale start -> final: p50 {}  p99 {}  max {}",
            elapsed.as_secs_f64(),
            ms(quantile(&sale_lat, 0.5)),
            ms(quantile(&sale_lat, 0.99)),
            ms(*sale_lat.last().unwrap())
        );
        println!(
            "    {:.2} fsyncs per sale, {:.1} commit jobs per fsync (group commit)",
            fsyncs / done as f64,
            jobs / fsyncs.max(1.0)
        );
        floors.report("(b) full sales", rate, per_sale);
        // Each side signs once and verifies once.
        let side = floor::Side {
            signs: 1.0,
            verifies: 1.0,
        };
        let shares = floors.report_cpu("(b) full sales", done, elapsed, cpu, side, side);
        // The database threads against the same work done bare, in groups as large as this
        // run's; and what the ratio could reach if that were all that ran beside the RSA.
        let group = (jobs / fsyncs.max(1.0)).round().max(1.0) as usize;
        let store_floor = bare_store_cpu(dir.path(), group, n_lat * 3);
        let at_floor = shares.rsa / (shares.rsa + store_floor.as_secs_f64());
        println!(
            "      the store's work for a sale done bare on one thread, {group} sales to a commit \
             as in this run: {} ms of CPU; were that all beside the signs and verifies (no HTTP, \
             no runtime, no hand-off), they would be {:.0} % of the CPU, and at this run's {:.0} % \
             busy cores the run would reach {:.0} % of the CPU ceiling",
            floor::ms(store_floor),
            100.0 * at_floor,
            100.0 * shares.busy,
            100.0 * at_floor * shares.busy
        );
        stretches.report(done / STRETCHES, "sales");
    };
    // On the worker thread, as the daemon's HTTP handlers run a sale (not on the thread that
    // blocks on the runtime).
    rt.block_on(rt.spawn(bench)).unwrap();
}
