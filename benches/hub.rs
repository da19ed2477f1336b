//! The hub's cost, each figure beside the machine's floor measured in the same run:
//! (a) one pay through a hub instance (`posd hub run`, its own process) vs the same pay direct
//!     to a zero-delay loopback upstream, as a ratio and in ms, beside one PostgreSQL commit
//!     and one RSA-2048 sign;
//! (b) pays per second and p50/p99 latency with 200 simulated terminals on one instance and on
//!     two (one database);
//! (c) the hub's CPU-ms per pay (its process, from /proc) and PostgreSQL commits per pay
//!     (`pg_stat_database.xact_commit`), so an estate can be sized from them;
//! each beside its floor: (a) against the RSA work and the commits of one pay one after the
//! other, (b) against the fsync ceiling (the commits a pay needs, each shared at most by the
//! pays in flight) and the CPU ceiling (cores ÷ the RSA-2048 signs and verifies of one pay on
//! every side: the terminal signs, the hub verifies it, signs upstream, verifies the answer and
//! signs its own, the upstream signs, the terminal verifies), with the ratio to the lower.
//!
//! Needs PostgreSQL at `POSD_BENCH_PG_URL` (default `postgres://postgres@127.0.0.1:5432`; a
//! fresh database is created and dropped). Run: `cargo bench --bench hub`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::routing::post;
use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::money::{Amount, Currency};
use posd::gateway::client::{AmsClient, ClientSettings, MerchantIdentity};
use posd::gateway::sign::{Message, PrivateKey, PublicKey};
use posd::gateway::{Answer, Gateway, PayOrder};
use posd::hub::registry::{self, NewTerminal};

#[path = "floor.rs"]
mod floor;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");
const TERMINALS: usize = 200;
const SEQUENTIAL: usize = 300;
const LOAD_FOR: Duration = Duration::from_secs(8);

fn key(name: &str) -> String {
    std::fs::read_to_string(format!("{KEYS}{name}")).expect("test key")
}

/// A zero-delay upstream: answers every pay at once with a signed S carrying its own
/// paymentId (the hub records it, unique).
async fn zero_delay_upstream() -> String {
    let gw_key =
        Arc::new(PrivateKey::from_text(&key("gateway_private_pkcs8.pem"), "gateway").unwrap());
    let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let gw_key = gw_key.clone();
        async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = v["paymentRequestId"].as_str().unwrap_or("").to_string();
            let answer = serde_json::to_vec(&serde_json::json!({
                "result": {"resultCode": "SUCCESS", "resultStatus": "S", "resultMessage": "success"},
                "paymentId": format!("P{id}"), "paymentRequestId": id,
            }))
            .unwrap();
            let client_id = headers
                .get("client-id")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            let time = "2026-11-21T10:00:00+08:00";
            let sig = gw_key.sign_header(
                "1",
                &Message {
                    method: "POST",
                    uri: uri.path(),
                    client_id: &client_id,
                    time,
                    body: &answer,
                },
            );
            (
                [
                    ("content-type", "application/json".to_string()),
                    ("client-id", client_id),
                    ("response-time", time.to_string()),
                    ("signature", sig),
                ],
                answer,
            )
                .into_response()
        }
    };
    let app = axum::Router::new()
        .route("/ams/api/v1/payments/{op}", post(handler.clone()))
        .route("/ams/sandbox/api/v1/payments/{op}", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn client(base: &str, client_id: &str, signing: &str, verifying: &str) -> AmsClient {
    let s = ClientSettings {
        base_url: base.to_string(),
        client_id: client_id.to_string(),
        key_version: "1".into(),
        merchant_key: Arc::new(PrivateKey::from_text(&key(signing), signing).unwrap()),
        gateway_key: PublicKey::from_text(&key(verifying), verifying).unwrap(),
        notify_url: None,
        agent_token: None,
        insecure_http: true,
        connect_timeout: Duration::from_secs(3),
        pay_timeout: Duration::from_secs(10),
        inquiry_timeout: Duration::from_secs(10),
        cancel_timeout: Duration::from_secs(10),
        merchant: MerchantIdentity {
            merchant_id: "M0001".into(),
            merchant_name: "Demo Cafe".into(),
            merchant_mcc: "5812".into(),
            store_id: "S01".into(),
            store_name: "Demo Cafe Central".into(),
            store_mcc: "5812".into(),
            terminal_id: "T0001".into(),
        },
    };
    AmsClient::new(s).unwrap()
}

fn order(id: String) -> PayOrder {
    PayOrder {
        payment_request_id: id,
        amount: Amount::parse("12.34", Currency::from_code("CNY").unwrap()).unwrap(),
        code: PaymentCode::parse("281234567890123456", &CodeRules::default()).unwrap(),
        order_ref: None,
        description: "bench".into(),
        terminal_time: chrono::DateTime::parse_from_rfc3339("2026-11-21T10:15:30+08:00").unwrap(),
        expires_at: None,
    }
}

async fn pay_ok(c: &AmsClient, id: String) -> Duration {
    let t = Instant::now();
    let r = Gateway::pay(c, &order(id)).await;
    assert_eq!(r.answer, Answer::Success, "{r:?}");
    t.elapsed()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn mean_ms(v: &[Duration]) -> f64 {
    v.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / v.len() as f64
}

/// utime + stime of a process, in ms (`/proc/PID/stat`, 100 ticks per second).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 10.0
}

struct HubProc {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_hub(db_url: &str, upstream: &str, name: &str) -> HubProc {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("hub/hub_private.pem", "hub_private.pem"),
        ("merchant_private_pkcs8.pem", "merchant_private.pem"),
    ] {
        let p = dir.path().join(to);
        std::fs::write(&p, key(from)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(
        dir.path().join("gateway_public.pem"),
        key("gateway_public.pem"),
    )
    .unwrap();
    let (port, api) = (free_port(), free_port());
    let cfg = format!(
        "[hub]\nlisten = \"127.0.0.1:{port}\"\ninsecure_http = true\nhub_private_key = \"hub_private.pem\"\n\
         instance_id = \"{name}\"\n[database]\nurl = \"{db_url}\"\npool_size = 32\n[upstream]\n\
         base_url = \"{upstream}\"\ninsecure_http = true\nclient_id = \"SANDBOX_HUB\"\n\
         merchant_private_key = \"merchant_private.pem\"\ngateway_public_key = \"gateway_public.pem\"\n\
         [api]\nlisten = \"127.0.0.1:{api}\"\n[log]\nlevel = \"warn\"\n"
    );
    std::fs::write(dir.path().join("hub.toml"), cfg).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_posd"))
        .args(["hub", "run", "--config"])
        .arg(dir.path().join("hub.toml"))
        .env_remove("POSD_FAILPOINT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{api}/healthz"))
            .send()
            .await
        {
            if r.status().is_success() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "hub did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    HubProc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// Per pay, on every side of the loopback (terminal, hub, upstream): see the module's doc.
const SIGNS_PER_PAY: f64 = 4.0;
const VERIFIES_PER_PAY: f64 = 3.0;

async fn xact_commits(pool: &deadpool_postgres::Pool) -> i64 {
    pool.get()
        .await
        .unwrap()
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// 200 terminals (clients) spread over `hubs`, each paying in a loop for `LOAD_FOR`.
async fn load(hubs: &[&HubProc], pool: &deadpool_postgres::Pool, tag: &str, floors: floor::Floors) {
    let clients: Vec<Arc<AmsClient>> = (0..TERMINALS)
        .map(|i| {
            let hub = hubs[i % hubs.len()];
            Arc::new(client(
                &hub.base,
                &format!("BT{i:03}"),
                "hub/terminal_a_private.pem",
                "hub/hub_public.pem",
            ))
        })
        .collect();
    let cpu0: f64 = hubs.iter().map(|h| cpu_ms(h.child.id())).sum();
    let commits0 = xact_commits(pool).await;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        let tag = tag.to_string();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0;
            while started.elapsed() < LOAD_FOR {
                lat.push(pay_ok(&c, format!("L{tag}{i:03}N{n:06}")).await);
                n += 1;
            }
            lat
        });
    }
    let mut all: Vec<Duration> = set.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    let cpu = hubs.iter().map(|h| cpu_ms(h.child.id())).sum::<f64>() - cpu0;
    let commits = xact_commits(pool).await - commits0;
    all.sort();
    let n = all.len() as f64;
    println!(
        "load  {} instance(s), {TERMINALS} terminals: {:.0} pays/s over {:.1} s ({} pays); p50 {:.1} ms, p99 {:.1} ms; \
         hub CPU {:.2} ms/pay; {:.2} PostgreSQL commits/pay",
        hubs.len(),
        n / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        cpu / n,
        commits as f64 / n
    );
    floors.report(
        &format!("load  {} instance(s)", hubs.len()),
        n / elapsed.as_secs_f64(),
        floor::PerItem {
            fsyncs: commits as f64 / n / TERMINALS as f64,
            fsyncs_are:
                "a pay's PostgreSQL commits, each shared by at most the terminals in flight",
            signs: SIGNS_PER_PAY,
            verifies: VERIFIES_PER_PAY,
        },
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = std::env::var("POSD_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let name = format!("posd_hub_bench_{}", std::process::id());
        let (admin, conn) = tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
            .await
            .expect("the hub bench needs PostgreSQL at POSD_BENCH_PG_URL");
        tokio::spawn(conn);
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        let db_url = format!("{server}/{name}");
        let pool = posd::hub::db::connect(&db_url, 4).await.unwrap();
        posd::hub::db::migrate(&pool).await.unwrap();
        let terminal_key = PublicKey::from_text(&key("hub/terminal_a_public.pem"), "terminal").unwrap();
        for i in 0..TERMINALS {
            registry::add(
                &pool,
                &NewTerminal {
                    client_id: format!("BT{i:03}"),
                    name: None,
                    public_key: terminal_key.clone(),
                    merchant_id: "M0001".into(),
                    store_id: "S01".into(),
                    terminal_id: Some("T0001".into()),
                    max_amount_minor: None,
                },
            )
            .await
            .unwrap();
        }

        // Floors: one PostgreSQL commit, one RSA-2048 sign.
        let c = pool.get().await.unwrap();
        c.batch_execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, v text NOT NULL)").await.unwrap();
        let mut commit = Vec::new();
        for i in 0..SEQUENTIAL {
            let t = Instant::now();
            c.execute("INSERT INTO bench_floor (v) VALUES ($1)", &[&format!("row {i}")]).await.unwrap();
            commit.push(t.elapsed());
        }
        drop(c);
        // The machine's signs and verifies (the same RSA-2048 work whatever the key), with
        // the hub's commit in place of SQLite's.
        let floor_dir = tempfile::tempdir().unwrap();
        let mut floors = floor::Floors::measure(floor_dir.path(), 10, SEQUENTIAL);
        floors.commit = commit.iter().sum::<Duration>() / commit.len() as u32;
        floors.commit_is = "PostgreSQL commit (mean)";

        let upstream = zero_delay_upstream().await;
        let hub_a = start_hub(&db_url, &upstream, "bench-a").await;

        // (a) One pay, sequential: direct vs through the hub.
        let direct = client(&upstream, "SANDBOX_HUB", "merchant_private_pkcs8.pem", "gateway_public.pem");
        let via = client(&hub_a.base, "BT000", "hub/terminal_a_private.pem", "hub/hub_public.pem");
        for i in 0..30 {
            pay_ok(&direct, format!("WD{i}")).await;
            pay_ok(&via, format!("WH{i}")).await;
        }
        let mut d = Vec::new();
        let mut h = Vec::new();
        let commits0 = xact_commits(&pool).await;
        for i in 0..SEQUENTIAL {
            d.push(pay_ok(&direct, format!("SD{i:05}")).await);
            h.push(pay_ok(&via, format!("SH{i:05}")).await);
        }
        let seq_commits = (xact_commits(&pool).await - commits0) as f64 / SEQUENTIAL as f64;
        d.sort();
        h.sort();
        println!(
            "floor one PostgreSQL commit: mean {:.3} ms, p50 {:.3} ms; one RSA-2048 sign (aws-lc): {} ms alone, {} ms per core with all cores signing; verify {} ms",
            mean_ms(&commit),
            {
                commit.sort();
                pct(&commit, 0.5)
            },
            floor::ms(floors.sign),
            floor::ms(floors.sign_all_cores),
            floor::ms(floors.verify)
        );
        println!(
            "pay   direct to the zero-delay upstream: mean {:.3} ms, p50 {:.3} ms",
            mean_ms(&d),
            pct(&d, 0.5)
        );
        println!(
            "pay   through one hub instance: mean {:.3} ms, p50 {:.3} ms; overhead {:.3} ms ({:.2}x direct)",
            mean_ms(&h),
            pct(&h, 0.5),
            mean_ms(&h) - mean_ms(&d),
            mean_ms(&h) / mean_ms(&d)
        );
        let rsa_ms = (SIGNS_PER_PAY * floors.sign.as_secs_f64()
            + VERIFIES_PER_PAY * floors.verify.as_secs_f64())
            * 1000.0;
        let commits_ms = seq_commits * floors.commit.as_secs_f64() * 1000.0;
        let seq_floor = rsa_ms + commits_ms;
        println!(
            "      floor of one pay through the hub, one step after another: {SIGNS_PER_PAY} signs + \
             {VERIFIES_PER_PAY} verifies ({rsa_ms:.3} ms) + {seq_commits:.2} commits ({commits_ms:.3} ms) = {seq_floor:.3} ms; \
             the pay is {:.2} x it",
            mean_ms(&h) / seq_floor
        );

        // (b), (c) 200 terminals on one instance, then on two.
        load(&[&hub_a], &pool, "A", floors).await;
        let hub_b = start_hub(&db_url, &upstream, "bench-b").await;
        load(&[&hub_a, &hub_b], &pool, "B", floors).await;
        drop(hub_a);
        drop(hub_b);
        pool.close();
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    });
}
