//! Queue drain benchmark: 10,000 queued cancels in a file database (WAL,
//! `synchronous=FULL`) drained by the real `Replayer` through the real `AmsClient` against a
//! zero-delay loopback gateway that answers every cancel with a signed S. Prints items/s
//! (each acknowledgement durable before its payment is reported moved) next to the cost of one
//! `synchronous=FULL` commit measured on the same disk. The items are drained in stretches,
//! each between two short floor measurements, and each stretch's ratio to its own floors is
//! printed too: on a shared virtual machine the cost of a sign can move by a third from one
//! minute to the next, and a ratio whose two sides were measured seconds apart moves with
//! it. The CPU per item is split by thread (posd's worker, the gateway's, posd's database
//! threads). The replayer runs on the daemon's own runtime (`posd::cli::daemon_runtime`: one
//! worker), the gateway on a runtime of its own. Run: `cargo bench --bench queue`;
//! `POSD_BENCH_QUEUE_BATCH` and `POSD_BENCH_QUEUE_CONCURRENCY` change the daemon's sizes (64,
//! 16).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::IntoResponse;
use posd::engine::clock::SystemClock;
use posd::engine::queue::{Payload, PAYLOAD_VERSION};
use posd::engine::worker::{QueueSettings, Replayer};
use posd::gateway::client::{AmsClient, ClientSettings, MerchantIdentity};
use posd::gateway::sign::{Message, PrivateKey, PublicKey};
use posd::store::Store;

#[path = "floor.rs"]
mod floor;

const ITEMS: usize = 10_000;
/// The drain is timed in this many stretches of `ITEMS / STRETCHES` items.
const STRETCHES: usize = 5;
/// Not due until a stretch makes it so.
const LATER: i64 = i64::MAX / 2;

/// A size from the environment, else the daemon's own (`QueueSettings::from_config`).
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("test key")
}

/// A gateway that answers every request at once with a signed S (cancel's shape).
async fn loopback_gateway(count: Arc<AtomicU64>) -> std::net::SocketAddr {
    let gw_key = Arc::new(PrivateKey::from_text(&key("gateway_private_pkcs8.pem"), "gw").unwrap());
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let (gw_key, count) = (gw_key.clone(), count.clone());
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = req["paymentRequestId"].as_str().unwrap_or("");
            let answer = serde_json::json!({
                "result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "success"},
                "paymentRequestId": id,
                "paymentId": format!("G{id}"),
                "cancelTime": "2026-11-21T10:15:30+08:00",
            })
            .to_string();
            let client_id = headers
                .get("client-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let time = chrono::Utc::now().to_rfc3339();
            let sig = gw_key.sign_header(
                "1",
                &Message {
                    method: "POST",
                    uri: uri.path(),
                    client_id: &client_id,
                    time: &time,
                    body: answer.as_bytes(),
                },
            );
            let mut h = HeaderMap::new();
            h.insert("client-id", HeaderValue::from_str(&client_id).unwrap());
            h.insert("response-time", HeaderValue::from_str(&time).unwrap());
            h.insert("signature", HeaderValue::from_str(&sig).unwrap());
            h.insert("content-type", HeaderValue::from_static("application/json"));
            (StatusCode::OK, h, answer).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Makes the next `n` items (in id order) of those not due yet due now.
fn make_due(store: &Store, n: usize) {
    store
        .call_blocking(move |c| {
            c.execute(
                "UPDATE reversal_queue SET next_attempt_at = 0 WHERE id IN (SELECT id FROM \
                 reversal_queue WHERE next_attempt_at = ?1 ORDER BY id LIMIT ?2)",
                rusqlite::params![LATER, n as i64],
            )?;
            Ok(())
        })
        .unwrap();
}

/// 10,000 payments in CANCEL_QUEUED, each with a cancel item, none due yet (one fill
/// transaction).
fn fill(store: &Store) {
    store
        .call_blocking(|c| {
            let tx = c.savepoint()?;
            {
                let mut p = tx.prepare(
                    "INSERT INTO payments (payment_request_id, amount_minor, currency, state, \
                     terminal_time, created_at, updated_at) VALUES (?1, 1234, 'CNY', 'CANCEL_QUEUED', \
                     '2026-11-21T10:15:30+08:00', 0, 0)",
                )?;
                let mut q = tx.prepare(
                    "INSERT INTO reversal_queue (kind, payment_request_id, payload_version, payload, \
                     status, next_attempt_at, created_at, updated_at) VALUES ('CANCEL', ?1, ?2, ?3, 'PENDING', ?4, 0, 0)",
                )?;
                for i in 0..ITEMS {
                    let id = format!("BENCH{i:08}");
                    p.execute([&id])?;
                    let payload = Payload::Cancel {
                        payment_request_id: id.clone(),
                    }
                    .encode();
                    q.execute(rusqlite::params![id, PAYLOAD_VERSION, payload, LATER])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .unwrap();
}

/// The cost of one `synchronous=FULL` commit on this disk (small write transactions), once
/// the store's WAL has wrapped (`floor::wrap_wal`).
fn commit_cost(store: &Store) -> Duration {
    const N: u32 = 200;
    // Its own connection to the same file, one autocommitted transaction per write (the
    // store's own connection wraps every job in a transaction of its own).
    let c = rusqlite::Connection::open(store.path()).unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let bump = |_| {
        c.execute("UPDATE terminal_sequence SET value = value + 1", [])
            .unwrap();
    };
    floor::wrap_wal(store.path(), bump);
    let t = Instant::now();
    (0..N as usize).for_each(bump);
    t.elapsed() / N
}

fn main() {
    // The gateway on a runtime of its own, as a remote one would be on its own threads; the
    // replayer on the daemon's runtime (one worker), as `posd run` has it.
    let gateway_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let addr = gateway_rt.block_on(loopback_gateway(count.clone()));
    let rt = posd::cli::daemon_runtime();
    let gateway = gateway_rt.handle().clone();
    let bench = async move {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.sqlite3")).unwrap();
        let commit = commit_cost(&store);
        let floors_before = floor::Floors::measure(&dir.path().join("floor"), 200, 300);
        fill(&store);
        let client = AmsClient::new(ClientSettings {
            base_url: format!("http://{addr}"),
            client_id: "BENCH".into(),
            key_version: "1".into(),
            merchant_key: Arc::new(
                PrivateKey::from_text(&key("merchant_private_pkcs8.pem"), "merchant").unwrap(),
            ),
            gateway_key: PublicKey::from_text(&key("gateway_public.pem"), "gw").unwrap(),
            notify_url: None,
            agent_token: None,
            insecure_http: true,
            connect_timeout: Duration::from_secs(1),
            pay_timeout: Duration::from_secs(3),
            inquiry_timeout: Duration::from_secs(3),
            cancel_timeout: Duration::from_secs(3),
            merchant: MerchantIdentity {
                merchant_id: "M1".into(),
                merchant_name: "Bench".into(),
                merchant_mcc: "5812".into(),
                store_id: "S1".into(),
                store_name: "Bench".into(),
                store_mcc: "5812".into(),
                terminal_id: "T1".into(),
            },
        })
        .unwrap();
        let settings = QueueSettings {
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(600),
            call_timeout: Duration::from_secs(3),
            inquiry_timeout: Duration::from_secs(3),
            batch: env_usize("POSD_BENCH_QUEUE_BATCH", 64),
            concurrency: env_usize("POSD_BENCH_QUEUE_CONCURRENCY", 16),
            terminal_id: "T1".into(),
            timezone: None,
            merchant_name: "Bench".into(),
            store_name: "Bench".into(),
            inquiry_max: 10,
            payment_expiry_margin: Duration::from_secs(30),
        };
        let (batch, concurrency) = (settings.batch, settings.concurrency);
        let replayer = Replayer::new(
            store.clone(),
            Arc::new(client),
            Arc::new(SystemClock),
            settings,
            "bench",
        );
        // Per item: the lease (one commit per batch) and the settle (shared by at most the
        // items in flight), the cancel signed here and its answer verified, the answer signed
        // by the loopback gateway.
        let per = floor::PerItem {
            fsyncs: 1.0 / batch as f64 + 1.0 / concurrency as f64,
            fsyncs_are: "a lease shared by its batch, a settle shared by the items in flight",
            signs: 2.0,
            verifies: 1.0,
        };
        let stretch = ITEMS / STRETCHES;
        let mut stretches = floor::Stretches::start(dir.path());
        let mut reports = Vec::new();
        let (mut took, mut cpu) = (Duration::ZERO, floor::CpuSplit::default());
        let commits_before = store.commit_counts();
        for _ in 0..STRETCHES {
            make_due(&store, stretch);
            let cpu0 = floor::CpuSplit::now(&gateway).await;
            let t = Instant::now();
            reports.extend(replayer.drain().await.unwrap());
            let took_here = t.elapsed();
            cpu = cpu.plus(floor::CpuSplit::now(&gateway).await.since(cpu0));
            took += took_here;
            stretches.after(stretch as f64 / took_here.as_secs_f64(), per);
        }
        let commits = store.commit_counts();
        let fsyncs = (commits.transactions - commits_before.transactions) as f64;
        let jobs = (commits.jobs - commits_before.jobs) as f64;
        let done = reports
            .iter()
            .filter(|r| r.outcome.as_str() == "done")
            .count();
        let (cancelled, pending): (i64, i64) = store
            .call_blocking(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT count(*) FROM payments WHERE state = 'CANCELLED'), \
                     (SELECT count(*) FROM reversal_queue WHERE status = 'PENDING')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap();
        assert_eq!((done, cancelled, pending), (ITEMS, ITEMS as i64, 0));
        assert_eq!(
            count.load(Ordering::Relaxed),
            ITEMS as u64,
            "one send per item"
        );
        println!(
            "queue drain: {ITEMS} cancels in {:.2} s = {:.0} items/s (batch {batch}, group commit per batch; \
             one synchronous=FULL commit = {:.3} ms on this disk)",
            took.as_secs_f64(),
            ITEMS as f64 / took.as_secs_f64(),
            commit.as_secs_f64() * 1000.0
        );
        println!(
            "    {:.3} fsyncs per item, {:.1} commit jobs per fsync (group commit)",
            fsyncs / ITEMS as f64,
            jobs / fsyncs.max(1.0)
        );
        let floors = stretches
            .cheapest(floors_before)
            .min(floor::Floors::measure(
                &dir.path().join("floor-after"),
                200,
                300,
            ));
        floors.report("queue drain", ITEMS as f64 / took.as_secs_f64(), per);
        // posd signs the cancel and verifies the answer; the gateway signs the answer.
        floors.report_cpu(
            "queue drain",
            ITEMS,
            took,
            cpu,
            floor::Side {
                signs: 1.0,
                verifies: 1.0,
            },
            floor::Side {
                signs: 1.0,
                verifies: 0.0,
            },
        );
        stretches.report(stretch, "items");
    };
    // On the worker thread, as the daemon's queue task runs (not on the thread that blocks
    // on the runtime).
    rt.block_on(rt.spawn(bench)).unwrap();
}
