//! Sale benchmarks, each beside the machine's floor measured in the same run:
//! (a) a sale with its code accepted → pay request on the wire (id, intent commit, JSON,
//!     sign, send), and (a') the same from a scan bound to a waiting sale, against
//!     one `synchronous=FULL` commit + one OpenSSL RSA-2048 sign;
//! (b) full sales per second against a zero-delay loopback gateway against the fsync
//!     ceiling divided by the commits one sale needs (2: the intent, the answer).
//! Run: `cargo bench --bench sale`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
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

/// A zero-delay gateway: answers every pay at once with one signed S (signed once, so the
/// gateway's own CPU does not eat into the terminal's) and reports arrival times.
async fn fake_gateway(arrivals: mpsc::UnboundedSender<Instant>) -> String {
    let gw_key = PrivateKey::from_text(&key("gateway_private_pkcs8.pem"), "gateway").unwrap();
    let body = r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"paymentId":"GBENCH"}"#;
    let time = "2026-11-21T10:00:00+08:00";
    let sig = gw_key.sign_header(
        "1",
        &Message {
            method: "POST",
            uri: "/ams/api/v1/payments/pay",
            client_id: "BENCH_CLIENT",
            time,
            body: body.as_bytes(),
        },
    );
    let app = axum::Router::new().route(
        "/ams/api/v1/payments/pay",
        post(move |_body: Bytes| {
            let arrivals = arrivals.clone();
            let sig = sig.clone();
            async move {
                let _ = arrivals.send(Instant::now());
                (
                    StatusCode::OK,
                    [
                        ("client-id", "BENCH_CLIENT".to_string()),
                        ("response-time", time.to_string()),
                        ("signature", sig),
                    ],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
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

/// Mean time of one `synchronous=FULL` commit (WAL) of a small row, on the same disk.
fn full_commit(dir: &std::path::Path, n: u32) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let c = rusqlite::Connection::open(dir.join("floor.sqlite3")).unwrap();
    c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", [])
        .unwrap();
    let start = Instant::now();
    for i in 0..n {
        c.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    start.elapsed() / n
}

/// OpenSSL's RSA-2048 sign time from `openssl speed`, if the CLI is there.
fn openssl_sign() -> Option<Duration> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", "rsa2048"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "rsa 2048 bits 0.000281s 0.000008s   3555.2 118000.1"
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("rsa 2048") || l.contains("rsa  2048"))?;
    let secs: f64 = line
        .split_whitespace()
        .find(|w| w.ends_with('s') && w.contains('.'))?
        .trim_end_matches('s')
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(secs))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and wants a quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (n_lat, n_sales) = if quick { (5, 20) } else { (300, 3000) };
    let dir = tempfile::tempdir().unwrap();
    let n_commit = if quick { 10 } else { 300 };
    let commit_before = full_commit(dir.path(), n_commit);
    let n_rsa = if quick { 5 } else { 300 };
    let floors_before = floor::Floors::measure(&dir.path().join("floor"), n_commit, n_rsa);
    let sign = openssl_sign();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let base = fake_gateway(tx).await;
        let e = engine(base, dir.path());
        let code = PaymentCode::parse("281234567890123456", &CodeRules::default()).unwrap();
        let cny = Currency::from_code("CNY").unwrap();
        // Warm up the connection pool and caches.
        for _ in 0..3 {
            let r = e.start_sale(SaleRequest { amount: Amount::parse("1", cny).unwrap(), order_ref: None, code: Some(code.clone()) }).await.unwrap();
            e.wait_final(&r.payment_request_id, Duration::from_secs(10)).await.unwrap();
            rx.recv().await.unwrap();
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
                .call(move |c| Ok(posd::store::payments::create(c, &new, 0, |seq| format!("BENCH{i}-{seq}"))?))
                .await
                .unwrap();
            intents.push(t0.elapsed());
            let id = e.store().call(|c| Ok(posd::store::payments::awaiting_code(c)?.unwrap().payment_request_id)).await.unwrap();
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
                let _p = gw.prepare_pay(posd::gateway::PayOrder { payment_request_id: id, amount: Amount::parse("12.34", cny).unwrap(), code, order_ref: None, description: "x".into(), terminal_time: chrono::Utc::now().fixed_offset(), expires_at: None });
                (t_id, t0.elapsed())
            };
            let (r, (t_id, t_signed)) = tokio::join!(commit, prepare);
            r.unwrap();
            parts.push((t_id, t_signed, t0.elapsed()));
        }
        parts.sort_by_key(|p| p.2);
        let m = parts[parts.len() / 2];
        println!("overlap: id handed out at {}, signed at {}, both done at {}", ms(m.0), ms(m.1), ms(m.2));
        println!("the intent's transaction alone (create, through Store::call): median {}", ms(intents[intents.len() / 2]));
        // (a) scan accepted -> pay on the wire, one sale at a time.
        let mut lat = Vec::new();
        let mut returned = Vec::new();
        for _ in 0..n_lat {
            let t0 = Instant::now();
            let r = e.start_sale(SaleRequest { amount: Amount::parse("12.34", cny).unwrap(), order_ref: None, code: Some(code.clone()) }).await.unwrap();
            returned.push(t0.elapsed());
            let t1 = rx.recv().await.unwrap();
            lat.push(t1 - t0);
            e.wait_final(&r.payment_request_id, Duration::from_secs(10)).await.unwrap();
        }
        lat.sort();
        returned.sort();
        let median = lat[lat.len() / 2];
        let p95 = lat[lat.len() * 95 / 100];
        // (a') the same from a scan: the sale waits for its code, the scan binds it.
        let mut scan_lat = Vec::new();
        for _ in 0..n_lat {
            let r = e.start_sale(SaleRequest { amount: Amount::parse("12.34", cny).unwrap(), order_ref: None, code: None }).await.unwrap();
            let t0 = Instant::now();
            e.bind_code(code.clone()).await.unwrap();
            let t1 = rx.recv().await.unwrap();
            scan_lat.push(t1 - t0);
            e.wait_final(&r.payment_request_id, Duration::from_secs(10)).await.unwrap();
        }
        scan_lat.sort();
        let scan_median = scan_lat[scan_lat.len() / 2];
        // (b) full sales per second, 32 sales in flight.
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..32 {
            let e = e.clone();
            let code = code.clone();
            let per = n_sales / 32;
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    let r = e.start_sale(SaleRequest { amount: Amount::parse("1.00", cny).unwrap(), order_ref: None, code: Some(code.clone()) }).await.unwrap();
                    let v = e.wait_final(&r.payment_request_id, Duration::from_secs(30)).await.unwrap();
                    assert_eq!(v.payment.state, posd::domain::machine::State::Succeeded, "worker {w}");
                }
                per
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await.unwrap();
        }
        let elapsed = start.elapsed();
        // The floor again after the load: the lower of the two is the machine's floor (other
        // work on a shared disk only ever makes a commit slower).
        let commit = commit_before.min(full_commit(&dir.path().join("after"), n_commit));
        let rate = done as f64 / elapsed.as_secs_f64();
        let ceiling = 1.0 / commit.as_secs_f64();
        println!("floor: one synchronous=FULL commit          {}", ms(commit));
        match sign {
            Some(s) => println!("floor: one OpenSSL RSA-2048 sign           {}", ms(s)),
            None => println!("floor: openssl CLI not found; sign floor unknown"),
        }
        let floor_a = commit + sign.unwrap_or_default();
        println!("(a) sale with its code -> pay on the wire: median {}  p95 {}  ({} sales)", ms(median), ms(p95), n_lat);
        println!("    of which intent committed and request signed (start_sale returned): median {}", ms(returned[returned.len() / 2]));
        println!("(a') scan binds a waiting sale -> pay on the wire: median {}  p95 {}", ms(scan_median), ms(scan_lat[scan_lat.len() * 95 / 100]));
        println!("    target <= 1.5 x (sign + commit) = {}  -> ratio {:.2}", ms(floor_a.mul_f64(1.5)), median.max(scan_median).as_secs_f64() / floor_a.as_secs_f64());
        println!("(b) full sales: {done} in {:.2} s = {rate:.0} sales/s (32 in flight)", elapsed.as_secs_f64());
        println!("    fsync ceiling {ceiling:.0} commits/s / 2 commits per sale = {:.0} sales/s -> {:.0} % of it (target >= 70 %)", ceiling / 2.0, 100.0 * rate / (ceiling / 2.0));
        // Floors measured in this run, before and after the load (the lower of each).
        let floors = floors_before.min(floor::Floors::measure(&dir.path().join("floor-after"), n_commit, n_rsa));
        // (a): the sign overlaps the intent's commit, so the floor is the larger of the two.
        let larger = floors.sign.max(floors.commit);
        println!(
            "(a) floor: max(sign {} ms, commit {} ms) = {} ms; (a) median is {:.2} x it, (a') {:.2} x (target <= 1.3 x)",
            floor::ms(floors.sign),
            floor::ms(floors.commit),
            floor::ms(larger),
            median.as_secs_f64() / larger.as_secs_f64(),
            scan_median.as_secs_f64() / larger.as_secs_f64()
        );
        // (b): per sale the terminal commits twice (intent, answer), signs the pay and
        // verifies the answer; this bench's gateway answers with one pre-signed body and
        // verifies nothing. A real gateway on the same cores would add one sign and one verify.
        floors.report("(b) full sales", rate, floor::PerItem { commits: 2.0, signs: 1.0, verifies: 1.0 });
        println!(
            "    with a real gateway's sign + verify on the same cores the CPU ceiling would be {:.0}/s",
            floors.cpu_ceiling(floor::PerItem { commits: 2.0, signs: 2.0, verifies: 2.0 })
        );
    });
}
