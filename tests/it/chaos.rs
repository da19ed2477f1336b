//! Seeded crash-and-fault runs: the real `posd run` binary against the sandbox gateway (run
//! in this process, so it outlives every crash of the daemon, as the real gateway would),
//! reached through a fault-injecting proxy, in either dialect (Alipay+ or the mainland
//! `alipay.trade.*` API; the sandbox plays every scenario row the same way in both). For a
//! seed, each round starts random sales over every sandbox scenario and then, as the seed
//! decides, SIGKILLs the daemon at a random moment or at a crash point (one that fires in
//! start-up recovery counts as a kill), holds the database's writer lock from another
//! process, fills the database's small filesystem, starts posd on it read-only, aborts open
//! sales, refunds (a full one's first send lost before the gateway sees it) and replays the
//! queue, while the proxy holds, resets, truncates, answers 5xx or breaks the signature of
//! gateway calls (and, in about a third of the rounds, holds one sale's pay until after
//! posd gave up on it) and a relay duplicates, delays, loses the acknowledgement of (so the
//! sandbox sends again), changes the amount of (under the same signature: never to be
//! acknowledged) and re-delivers old notifications (notifyPayment, or the mainland
//! `trade_status_sync` form). After each round every payment is driven final (a restart
//! runs recovery; a refund still unconfirmed may wait in the queue), nothing is left held
//! at the proxy or the relay, and posd's database is held against the sandbox's own record:
//! no order charged twice, no charge the terminal does not know of, no charge reported as
//! not charged without a queued reversal, nothing open, nothing left for a human (no
//! sandbox answer calls for one), no panic.
//!
//! The database sits on its own 32 MB tmpfs when the test may mount one (root); otherwise
//! (or with `POSD_CHAOS_NO_MOUNT=1`) the full-disk and read-only faults are skipped.
//!
//! The smoke run (`chaos_smoke`, 20 rounds) is part of the default suite. Long runs:
//! `POSD_CHAOS_SEEDS=1..51 POSD_CHAOS_ROUNDS=20 cargo test --test integration -- --ignored
//! --exact chaos::chaos_long --nocapture` (`--exact`, or the hub's runner runs too), with
//! `POSD_CHAOS_DIALECT=alipay_cn` for the mainland dialect (`chaos_smoke_mainland` is its
//! smoke run). A failure names its seed and round; the same seed replays the same
//! schedule of sales, kills, lock holds, disk faults, back-office actions, proxy faults and
//! notification faults (the exact interleaving with the daemon's own timers can differ
//! between runs, so the failure also prints the payment's journal and the daemon's log).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::chaos_kit::{
    code, decimal, env_u64, journal, open_db, payments, queued, sandbox_took, seed_range, Dialect,
    InFlight, Proxy, Relay, Row, FAILPOINTS, SCENARIOS,
};
use super::daemon::TestDaemon;

/// Short flow timings; the queue retries quickly so scenario 86 settles within a round, in
/// batches of one, so that two queued items make two overlapping batches.
const FLOW: &str = r#"
[flow]
pay_timeout = "600ms"
inquiry_interval = "20ms"
inquiry_timeout = "400ms"
inquiry_max = 10
cancel_timeout = "400ms"
cancel_retry_window = "800ms"
cancel_retry_min = "20ms"
cancel_retry_max = "50ms"
queue_backoff_initial = "200ms"
queue_backoff_max = "1s"
queue_batch = 1
queue_concurrency = 2
"#;

const CLIENT_ID: &str = "SANDBOX_CHAOS";
const APP_ID: &str = "2021000000000086";

/// The daemon's `[gateway]` section for `dialect`, through the fault proxy at `proxy`, with
/// notifications sent to the relay at `relay`.
fn gateway_section(dialect: Dialect, proxy: SocketAddr, relay: SocketAddr) -> String {
    let public = posd::gateway::sandbox::GATEWAY_PUBLIC_KEY_FILE;
    match dialect {
        Dialect::AlipayPlus => format!(
            "[gateway]\nkind = \"alipay_plus\"\nbase_url = \"http://{proxy}\"\n\
                 insecure_http = true\nclient_id = \"{CLIENT_ID}\"\n\
                 merchant_private_key = \"var/keys/merchant_private.pem\"\n\
                 gateway_public_key = \"var/sandbox-keys/{public}\"\n\
                 notify_url = \"http://{relay}/alipay/notify\"\n"
        ),
        Dialect::Mainland => format!(
            "[gateway]\nkind = \"alipay_cn\"\nbase_url = \"http://{proxy}{}\"\n\
                 insecure_http = true\napp_id = \"{APP_ID}\"\n\
                 merchant_private_key = \"var/keys/merchant_private.pem\"\n\
                 alipay_public_key = \"var/sandbox-keys/{public}\"\n\
                 notify_url = \"http://{relay}/alipay/notify\"\n",
            posd::gateway::sandbox::mainland::PATH
        ),
    }
}

/// The database's own small filesystem (a tmpfs, when this process may mount one): it can
/// be filled up, and remounted read-only while posd is stopped. Without mount rights the
/// database lives in a plain directory and the disk faults are skipped.
struct Disk {
    dir: std::path::PathBuf,
    mounted: bool,
}

impl Disk {
    const SIZE: &'static str = "size=32m";

    fn new(dir: std::path::PathBuf) -> Disk {
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::env::var_os("POSD_CHAOS_NO_MOUNT").is_none()
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", Disk::SIZE, "tmpfs"])
                .arg(&dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        Disk { dir, mounted }
    }

    fn filler(&self) -> std::path::PathBuf {
        self.dir.join("filler")
    }

    /// Fills the filesystem to the last byte.
    fn fill(&self) {
        use std::io::Write as _;
        let Ok(mut f) = std::fs::File::create(self.filler()) else {
            return;
        };
        let chunk = vec![0u8; 64 * 1024];
        for size in [64 * 1024, 4096, 1] {
            while f.write_all(&chunk[..size]).is_ok() {}
        }
    }

    fn unfill(&self) {
        let _ = std::fs::remove_file(self.filler());
    }

    /// Remounts the filesystem read-only (`true`) or read-write; works only while no
    /// process holds a file on it open for writing.
    fn read_only(&self, ro: bool) -> bool {
        std::process::Command::new("mount")
            .args(["-o", if ro { "remount,ro" } else { "remount,rw" }])
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

/// What a run did, summed over its rounds.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub rounds: u64,
    pub payments: u64,
    pub kills: u64,
    pub failpoints: u64,
    pub lock_holds: u64,
    /// Crash points that fired during start-up recovery, before `/healthz` answered.
    pub startup_kills: u64,
    /// Rounds with the database's filesystem full for a while.
    pub disk_full: u64,
    /// Starts attempted on a read-only database filesystem.
    pub read_only: u64,
    /// Notifications relayed, and old ones delivered again.
    pub notifications: u64,
    pub stale_notifications: u64,
    pub notes: BTreeMap<String, u64>,
    pub aborts: u64,
    pub refunds: u64,
    pub replays: u64,
    pub rescans: u64,
    pub restarts: u64,
    pub calls: u64,
    /// Planned late pays (held past posd's deadline, whatever the round's fault rate).
    pub late_pays: u64,
    /// Full refunds whose first send was reset before the gateway saw it, as planned.
    pub lost_refunds: u64,
    pub faults: BTreeMap<String, u64>,
    pub states: BTreeMap<String, u64>,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.rounds += o.rounds;
        self.payments += o.payments;
        self.kills += o.kills;
        self.failpoints += o.failpoints;
        self.lock_holds += o.lock_holds;
        self.startup_kills += o.startup_kills;
        self.disk_full += o.disk_full;
        self.read_only += o.read_only;
        self.notifications += o.notifications;
        self.stale_notifications += o.stale_notifications;
        for (k, v) in &o.notes {
            *self.notes.entry(k.clone()).or_default() += v;
        }
        self.aborts += o.aborts;
        self.refunds += o.refunds;
        self.replays += o.replays;
        self.rescans += o.rescans;
        self.restarts += o.restarts;
        self.calls += o.calls;
        self.late_pays += o.late_pays;
        self.lost_refunds += o.lost_refunds;
        for (k, v) in &o.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.states {
            *self.states.entry(k.clone()).or_default() += v;
        }
    }
}

/// One seed's run: a fresh daemon speaking `dialect`, state directory and sandbox; `rounds`
/// rounds.
pub async fn run_seed(dialect: Dialect, seed: u64, rounds: u64) -> Result<Figures, String> {
    let mut fig = Figures::default();
    let dir = tempfile::tempdir().unwrap();
    let sandbox_db = dir.path().join("sandbox.sqlite3");
    let support = super::support::keys_dir();
    let gateway_key = posd::gateway::sign::PrivateKey::from_text(
        &std::fs::read_to_string(support.join("gateway_private_pkcs8.pem")).unwrap(),
        "gateway",
    )
    .unwrap();
    let merchant_public =
        posd::gateway::sign::PublicKey::load(&support.join("merchant_public.pem")).unwrap();
    let mut settings = posd::gateway::sandbox::SandboxSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        sandbox_db.clone(),
        gateway_key,
        merchant_public,
    );
    settings.cancel_outage = Duration::from_millis(1200);
    settings.no_answer_stall = Duration::from_millis(600);
    let sandbox = posd::gateway::sandbox::Sandbox::start(settings)
        .await
        .unwrap();
    let proxy = Proxy::start(sandbox.base_url()).await;
    let notify_port = super::daemon::free_port();
    let relay = Relay::start(vec![format!("http://127.0.0.1:{notify_port}")]).await;
    let quiet = [&proxy.in_flight, &relay.in_flight];
    let disk = Disk::new(dir.path().join("db"));
    let mut d = TestDaemon::new(&format!(
        "{}{FLOW}\n\
         [notify]\nenabled = true\nlisten = \"127.0.0.1:{notify_port}\"\npath = \"/alipay/notify\"\n\
         [store]\npath = \"{}/posd.sqlite3\"\n",
        gateway_section(dialect, proxy.addr, relay.addr),
        disk.dir.display()
    ));
    let db = disk.dir.join("posd.sqlite3");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    d.start(None).await;
    fig.restarts += 1;
    let mut order = 0u64;
    for round in 0..rounds {
        let round_seed = seed.wrapping_mul(1_000_003).wrapping_add(round);
        let mut rng = StdRng::seed_from_u64(round_seed);
        let at = |what: &str| format!("{} seed {seed} round {round}: {what}", dialect.name());
        // The plan of this round.
        let rate = if rng.gen_bool(0.4) {
            0.0
        } else {
            rng.gen_range(0.1..0.45)
        };
        proxy.plan(rate, round_seed);
        let note_rate = if rng.gen_bool(0.4) {
            0.0
        } else {
            rng.gen_range(0.2..0.8)
        };
        relay.plan(note_rate, round_seed);
        if rng.gen_bool(0.3) {
            // Old notifications again, after their payments moved on.
            relay.redeliver(rng.gen_range(1..=3), &mut rng);
        }
        if disk.mounted && rng.gen_bool(0.06) {
            // posd started on a read-only database filesystem: it refuses to start, naming
            // the cause, never reports itself healthy, and charges nothing.
            d.kill();
            if disk.read_only(true) {
                fig.read_only += 1;
                d.spawn(&[]);
                fig.restarts += 1;
                let r = read_only_start(&mut d, &http, &mut order, seed, &mut rng).await;
                d.kill();
                assert!(
                    disk.read_only(false),
                    "the database filesystem is writable again"
                );
                r.map_err(|e| at(&e))?;
            }
            d.start(None).await;
            fig.restarts += 1;
        }
        let failpoint = rng
            .gen_bool(0.15)
            .then(|| FAILPOINTS[rng.gen_range(0..FAILPOINTS.len())]);
        if let Some(fp) = failpoint {
            d.kill();
            fig.failpoints += 1;
            fig.restarts += 1;
            if !d.start(Some(fp)).await {
                // The crash point fired in start-up recovery: a kill; start again.
                fig.startup_kills += 1;
                d.start(None).await;
                fig.restarts += 1;
            }
        }
        let kill_after = rng.gen_bool(0.3).then(|| rng.gen_range(0..1200u64));
        let lock = rng
            .gen_bool(0.15)
            .then(|| (rng.gen_range(0..300u64), rng.gen_range(50..1500u64)));
        let n = rng.gen_range(1..=4);
        let sales: Vec<(String, String, String)> = (0..n)
            .map(|_| {
                order += 1;
                let last2 = SCENARIOS[rng.gen_range(0..SCENARIOS.len())];
                (
                    format!("S{seed}-{order}"),
                    code(last2, &mut rng),
                    decimal(rng.gen_range(1..100_000)),
                )
            })
            .collect();
        let full = (disk.mounted && rng.gen_bool(0.1))
            .then(|| (rng.gen_range(0..300u64), rng.gen_range(50..1500u64)));
        let abort = rng.gen_bool(0.15);
        let rescan = rng.gen_bool(0.15);
        let refund = rng.gen_bool(0.3).then(|| rng.gen_bool(0.5));
        let replay = rng.gen_bool(0.2);
        // The ambiguity the inquiry flow exists for, planned beside the random faults: one
        // sale's pay reaches the gateway only after posd gave up waiting for its answer (and
        // after its first inquiries, or its cancel, found no such payment).
        if let Some(i) = rng.gen_bool(0.35).then(|| rng.gen_range(0..sales.len())) {
            let (order_ref, code, _) = &sales[i];
            proxy.hold_first_pay(dialect.sale_name(order_ref, code));
        }

        // Disk trouble: another process holds the writer lock for a while.
        let locker = lock.map(|(delay, hold)| {
            let db = db.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                if let Ok(c) = rusqlite::Connection::open(&db) {
                    let _ = c.busy_timeout(Duration::from_secs(2));
                    if c.execute_batch("BEGIN IMMEDIATE").is_ok() {
                        std::thread::sleep(Duration::from_millis(hold));
                        let _ = c.execute_batch("ROLLBACK");
                    }
                }
            })
        });
        if locker.is_some() {
            fig.lock_holds += 1;
        }
        // Disk trouble: the database's filesystem fills up for a while.
        let filler = full.map(|(delay, hold)| {
            fig.disk_full += 1;
            let disk = Disk {
                dir: disk.dir.clone(),
                mounted: false,
            };
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay));
                disk.fill();
                std::thread::sleep(Duration::from_millis(hold));
                disk.unfill();
            })
        });
        let started = Instant::now();
        let mut ids = Vec::new();
        for (order_ref, c, amount) in &sales {
            let body = serde_json::json!({"amount": amount, "order_ref": order_ref, "code": c});
            if let Ok(r) = http
                .post(format!("{}/v1/payments", d.base))
                .json(&body)
                .send()
                .await
            {
                if let Ok(v) = r.json::<Value>().await {
                    if let Some(id) = v["payment_request_id"].as_str() {
                        ids.push(id.to_string());
                    }
                }
            }
            if rescan {
                // The cashier scans again: never a second charge for the order.
                fig.rescans += 1;
                let _ = http
                    .post(format!("{}/v1/payments", d.base))
                    .json(&body)
                    .send()
                    .await;
            }
        }
        if abort && !ids.is_empty() {
            let id = &ids[rng.gen_range(0..ids.len())];
            fig.aborts += 1;
            let _ = http
                .post(format!("{}/v1/payments/{id}/abort", d.base))
                .send()
                .await;
        }
        if let Some(ms) = kill_after {
            let elapsed = started.elapsed().as_millis() as u64;
            if ms > elapsed {
                tokio::time::sleep(Duration::from_millis(ms - elapsed)).await;
            }
            d.kill();
            fig.kills += 1;
        }
        if let Some(t) = locker {
            t.join().unwrap();
        }
        if let Some(t) = filler {
            t.join().unwrap();
        }
        if failpoint.is_some() || kill_after.is_some() {
            // A failpoint may not have fired; either way restart without it.
            d.kill();
            d.start(None).await;
            fig.restarts += 1;
        }
        settle(&mut d, &db, &quiet, &mut fig)
            .await
            .map_err(|e| at(&e))?;
        if let Some(full) = refund {
            let succeeded = payments(&db)
                .into_iter()
                .filter(|p| p.state == "SUCCEEDED")
                .collect::<Vec<_>>();
            if !succeeded.is_empty() {
                let p = &succeeded[rng.gen_range(0..succeeded.len())];
                // A full refund loses its first send before the gateway sees it. posd cannot
                // tell that from a refund made whose answer was lost: it must send the
                // identical refund again, never report the money given back unasked. (Partial
                // refunds, and the refunds of a closed cancel window, meet the proxy's random
                // faults only.)
                if full {
                    proxy.reset_next(&dialect.op("refund"));
                }
                let body = if full {
                    serde_json::json!({"reason": "chaos"})
                } else {
                    serde_json::json!({"amount": decimal((p.amount / 2).max(1)), "reason": "chaos"})
                };
                fig.refunds += 1;
                let _ = http
                    .post(format!("{}/v1/payments/{}/refunds", d.base, p.id))
                    .json(&body)
                    .send()
                    .await;
            }
        }
        if replay {
            fig.replays += 1;
            let _ = http
                .post(format!("{}/v1/queue/replay", d.base))
                .send()
                .await;
        }
        if refund.is_some() || replay {
            settle(&mut d, &db, &quiet, &mut fig)
                .await
                .map_err(|e| at(&e))?;
        }
        relay.check_listeners().map_err(|e| at(&e))?;
        check(&d, &db, &sandbox_db).map_err(|e| at(&e))?;
        fig.rounds += 1;
    }
    // The round's own figures.
    {
        let s = proxy.state.lock().unwrap();
        // Every call the proxy saw was of the run's dialect (the config really chose it).
        if let Some((id, op)) = s.trail.iter().find(|(_, op)| !dialect.speaks(op)) {
            return Err(format!(
                "seed {seed}: a {} run sent {op} for {id}",
                dialect.name()
            ));
        }
        fig.calls = s.calls;
        fig.late_pays = s.late_held;
        fig.lost_refunds = s.planned_resets;
        for (f, n) in &s.faults {
            fig.faults.insert(format!("{f:?}"), *n);
        }
        let r = relay.state.lock().unwrap();
        fig.notifications = r.delivered;
        fig.stale_notifications = r.stale;
        for (f, n) in &r.notes {
            fig.notes.insert(format!("{f:?}"), *n);
        }
    }
    for p in payments(&db) {
        *fig.states.entry(p.state).or_default() += 1;
    }
    fig.payments = payments(&db).len() as u64;
    let log = d.log();
    if log.contains("panicked") {
        return Err(format!(
            "{} seed {seed}: the daemon panicked:\n{log}",
            dialect.name()
        ));
    }
    d.kill();
    sandbox.shutdown().await;
    Ok(fig)
}

/// posd on a read-only database: it must refuse to start within five seconds, naming the
/// cause, and never answer `/healthz` with 200 meanwhile; a sale is tried while it might
/// still listen (anything it took is checked with the round).
async fn read_only_start(
    d: &mut TestDaemon,
    http: &reqwest::Client,
    order: &mut u64,
    seed: u64,
    rng: &mut StdRng,
) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(5);
    let mut tried = false;
    while Instant::now() < until {
        if let Some(status) = d.exited() {
            let log = d.log();
            if status.success() || !log.contains("read-only") {
                return Err(format!(
                    "posd on a read-only database exited with {status} without naming the cause:\n{log}"
                ));
            }
            return Ok(());
        }
        if let Ok(r) = http.get(d.url("/healthz")).send().await {
            if r.status().is_success() {
                return Err(format!(
                    "posd reports itself healthy on a read-only database:\n{}",
                    d.log()
                ));
            }
            if !tried {
                tried = true;
                *order += 1;
                let last2 = SCENARIOS[rng.gen_range(0..SCENARIOS.len())];
                let body = serde_json::json!({
                    "amount": "1.00",
                    "order_ref": format!("S{seed}-{order}"),
                    "code": code(last2, rng),
                });
                let _ = http.post(d.url("/v1/payments")).json(&body).send().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "posd kept running on a read-only database instead of refusing to start:\n{}",
        d.log()
    ))
}

/// Whether the queue's worker holds an item or is about to take one (a lease not yet run
/// out, or an item due now): its answer can still move a payment, e.g. a queued cancel
/// refused for its window turns CANCEL_QUEUED into REFUNDING with the refund in flight.
fn queue_busy(db: &std::path::Path) -> bool {
    let now = chrono::Utc::now().timestamp_millis();
    open_db(db)
        .query_row(
            "SELECT count(*) FROM reversal_queue WHERE status = 'PENDING' \
             AND (lease_until > ?1 OR next_attempt_at <= ?1)",
            [now],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        > 0
}

/// The settle's "queue quiet" condition against a real database written by posd's own queue
/// functions: an item leased (by the daemon's worker or `posd queue replay`) or due now keeps
/// the round waiting; one waiting for its backoff, or closed, does not.
#[test]
fn the_settle_waits_for_a_leased_or_due_item_only() {
    use posd::store::queue::{self as q, ItemStatus};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("posd.sqlite3");
    let now = chrono::Utc::now().timestamp_millis();
    let later = now + 3_600_000;
    let item = super::support::queue_cancel(&db, "P1", later);
    let store = posd::store::Store::open(&db).unwrap();
    assert!(!queue_busy(&db), "an item waiting for its backoff");
    // Leased by a replay on demand, not yet due: busy until the lease ends or the item moves.
    let leased = store
        .call_blocking(move |c| Ok(q::lease_one(c, item, "replay", now, later)?))
        .unwrap();
    assert!(leased.is_ok(), "{leased:?}");
    assert!(queue_busy(&db), "a leased item");
    store
        .call_blocking(move |c| Ok(q::reschedule(c, item, "replay", now - 1, "U", now)?))
        .unwrap();
    assert!(queue_busy(&db), "an item due now");
    store
        .call_blocking(move |c| {
            q::lease_one(c, item, "worker", now, later)?.unwrap();
            Ok(q::close(
                c,
                item,
                "worker",
                ItemStatus::Done,
                "confirmed",
                now,
            )?)
        })
        .unwrap();
    assert!(!queue_busy(&db), "a closed item");
}

/// The journal a failure prints: the payment's transitions and its queue items' events, read
/// through posd's own store functions, in time order.
#[test]
fn a_failure_prints_the_journal_in_time_order() {
    use posd::store::queue as q;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("posd.sqlite3");
    let now = chrono::Utc::now().timestamp_millis();
    let item = super::support::queue_cancel(&db, "P1", now);
    let store = posd::store::Store::open(&db).unwrap();
    // The set-up's two transitions are at 1 and 2 ms; an event at 1 ms goes after the
    // transition of the same time.
    store
        .call_blocking(move |c| {
            q::record_event(c, item, now, "worker", "DONE", "confirmed")?;
            Ok(q::record_event(
                c,
                item,
                1,
                "replay",
                "HELD",
                "newer payload",
            )?)
        })
        .unwrap();
    assert_eq!(
        journal(&db, "P1"),
        format!(
            "  1 - -> CANCELLING: sale started; waiting for a code\n  \
             1 queue item {item} (CANCEL) by replay: HELD newer payload\n  \
             2 CANCELLING -> CANCEL_QUEUED: queued\n  \
             {now} queue item {item} (CANCEL) by worker: DONE confirmed\n"
        )
    );
}

/// Waits until every payment is final (or its reversal waits in the queue) and the queue's
/// worker is between attempts; if some stay open, restarts the daemon (recovery) and waits
/// again. Open after that is a failure.
async fn settle(
    d: &mut TestDaemon,
    db: &std::path::Path,
    quiet: &[&InFlight],
    fig: &mut Figures,
) -> Result<(), String> {
    for attempt in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let open: Vec<Row> = payments(db)
                .into_iter()
                .filter(|p| !p.is_final() && !queued(db, &p.id))
                .collect();
            // Nothing held at the proxy or the relay either: a late pay has reached the
            // sandbox, a late notification the daemon.
            let in_flight: u64 = quiet.iter().map(|q| q.count()).sum();
            if open.is_empty() && !queue_busy(db) && in_flight == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                if attempt == 1 && open.is_empty() && in_flight > 0 {
                    return Err(format!(
                        "{in_flight} requests still in flight at the proxy and the relay after \
                         20 s\n{}",
                        d.log()
                    ));
                }
                if attempt == 1 && open.is_empty() {
                    return Err(format!(
                        "the queue's worker never fell quiet after recovery (an item leased or \
                         due for 20 s)\n{}",
                        d.log()
                    ));
                }
                if attempt == 1 {
                    let journals: String = open
                        .iter()
                        .map(|p| format!("{}:\n{}", p.id, journal(db, &p.id)))
                        .collect();
                    return Err(format!(
                        "payments left open after recovery: {:?}\n{journals}{}",
                        open.iter().map(|p| (&p.id, &p.state)).collect::<Vec<_>>(),
                        d.log()
                    ));
                }
                d.kill();
                d.start(None).await;
                fig.restarts += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// posd's word against the sandbox's record.
fn check(d: &TestDaemon, db: &std::path::Path, sandbox_db: &std::path::Path) -> Result<(), String> {
    let rows = payments(db);
    let posd = open_db(db);
    let gw = open_db(sandbox_db);
    // The gateway's record: request id -> (status, refunded, whether it took the money). The
    // last is the sandbox's own rule (`scenario::charged`): scenario 87's charge goes through
    // while its status stays PROCESSING.
    let mut record: HashMap<String, (String, i64, bool)> = HashMap::new();
    {
        let mut st = gw
            .prepare(
                "SELECT p.payment_request_id, p.status, \
                 (SELECT ifnull(sum(r.amount_minor), 0) FROM refunds r WHERE r.payment_id = p.payment_id) \
                 FROM payments p",
            )
            .unwrap();
        let it = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
            })
            .unwrap();
        for x in it {
            let (id, status, refunded) = x.unwrap();
            let took = sandbox_took(&gw, &id);
            record.insert(id, (status, refunded, took));
        }
    }
    let known: HashMap<&str, &Row> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    for (id, (_, _, took)) in &record {
        if *took && !known.contains_key(id.as_str()) {
            return Err(format!(
                "the gateway charged {id}, which posd has no record of"
            ));
        }
    }
    let mut charged_per_order: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in &rows {
        // A refund that could not be confirmed waits in the queue with its payment in
        // REFUNDING: that is the queue's to finish, not an open payment.
        if !p.is_final() && !queued(db, &p.id) {
            return Err(format!(
                "{} is open ({})\nits journal:\n{}",
                p.id,
                p.state,
                journal(db, &p.id)
            ));
        }
        let (status, gw_refunded, took) = record
            .get(&p.id)
            .cloned()
            .unwrap_or_else(|| ("NONE".into(), 0, false));
        let charged = took && gw_refunded < p.amount;
        let pending_reversal: i64 = posd
            .query_row(
                "SELECT count(*) FROM reversal_queue WHERE payment_request_id = ?1 AND status = 'PENDING'",
                [&p.id],
                |r| r.get(0),
            )
            .unwrap();
        if charged {
            if let Some(o) = &p.order_ref {
                charged_per_order.entry(o.as_str()).or_default().push(&p.id);
            }
        }
        // Money the gateway holds for this payment vs what posd says it holds; a reversal or
        // refund still in the queue accounts for a difference.
        let wrong = match p.state.as_str() {
            "SUCCEEDED" | "PARTIALLY_REFUNDED" => {
                !took || (gw_refunded != p.refunded && pending_reversal == 0)
            }
            "FAILED" | "CANCELLED" | "CANCEL_QUEUED" | "REFUNDED" => {
                charged && pending_reversal == 0
            }
            // Nothing the sandbox answers, however faulty the way there, leaves a payment for a
            // human: its refusals all have a rule (cancel window passed: refund; no such
            // payment: the expiry rule), and every answer can be waited for or asked again.
            "NEEDS_ATTENTION" => {
                let reason: Option<String> = posd
                    .query_row(
                        "SELECT attention_reason FROM payments WHERE payment_request_id = ?1",
                        [&p.id],
                        |r| r.get(0),
                    )
                    .unwrap();
                return Err(format!(
                    "{} ({:?}) was left for a human: {}; the gateway has {status} refunded {gw_refunded}\n\
                     its journal:\n{}{}",
                    p.id,
                    p.order_ref,
                    reason.unwrap_or_default(),
                    journal(db, &p.id),
                    d.log()
                ));
            }
            "REFUNDING" => !took,
            _ => true,
        };
        if wrong {
            return Err(format!(
                "{} ({:?}, {}): posd says {} (refunded {}), the gateway has {status} refunded {gw_refunded}, \
                 pending reversals {pending_reversal}\nits journal:\n{}{}",
                p.id,
                p.order_ref,
                p.amount,
                p.state,
                p.refunded,
                journal(db, &p.id),
                d.log()
            ));
        }
    }
    for (order, ids) in charged_per_order {
        if ids.len() > 1 {
            let journals: String = ids
                .iter()
                .map(|id| format!("{id}:\n{}", journal(db, id)))
                .collect();
            return Err(format!("order {order} charged twice: {ids:?}\n{journals}"));
        }
    }
    Ok(())
}

fn print(dialect: Dialect, label: &str, seeds: &str, fig: &Figures, elapsed: Duration) {
    eprintln!(
        "chaos {label} ({}): seeds {seeds}: {} rounds, {} payments, {} SIGKILLs + {} crash points \
         ({} fired in start-up recovery), {} restarts, {} writer-lock holds, {} full-disk \
         spells, {} read-only starts, {} aborts, {} rescans, {} refunds ({} full ones' first \
         send lost as planned), {} queue replays; {} gateway calls ({} pays held late as \
         planned), faults {:?}; {} notifications \
         relayed, {:?}, {} old ones again; final states {:?}; {:.1} s",
        dialect.name(),
        fig.rounds,
        fig.payments,
        fig.kills,
        fig.failpoints,
        fig.startup_kills,
        fig.restarts,
        fig.lock_holds,
        fig.disk_full,
        fig.read_only,
        fig.aborts,
        fig.rescans,
        fig.refunds,
        fig.lost_refunds,
        fig.replays,
        fig.calls,
        fig.late_pays,
        fig.faults,
        fig.notifications,
        fig.notes,
        fig.stale_notifications,
        fig.states,
        elapsed.as_secs_f64()
    );
}

/// 20 rounds over two seeds: the default suite's share of the seeded runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_smoke() {
    smoke(Dialect::AlipayPlus).await;
}

/// The same 20 rounds with the daemon speaking the mainland dialect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_smoke_mainland() {
    smoke(Dialect::Mainland).await;
}

async fn smoke(dialect: Dialect) {
    let t0 = Instant::now();
    let mut all = Figures::default();
    // Two seeds at once, each with its own daemon, sandbox and proxy.
    let (a, b) = tokio::join!(run_seed(dialect, 1, 10), run_seed(dialect, 2, 10));
    for fig in [a, b] {
        all.add(&fig.unwrap_or_else(|e| panic!("{e}")));
    }
    print(dialect, "smoke", "1..=2", &all, t0.elapsed());
    assert_eq!(all.rounds, 20);
    assert!(all.payments >= 20, "{all:?}");
    assert!(
        all.lost_refunds >= 1,
        "a full refund lost its first send: {all:?}"
    );
}

/// Replays one seed: `POSD_CHAOS_SEED=N [POSD_CHAOS_ROUNDS=R] [POSD_CHAOS_DIALECT=alipay_cn]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "replays one seed: run with --ignored and POSD_CHAOS_SEED"]
async fn chaos_seed() {
    let seed: u64 = std::env::var("POSD_CHAOS_SEED")
        .expect("POSD_CHAOS_SEED=N")
        .parse()
        .unwrap();
    let rounds = env_u64("POSD_CHAOS_ROUNDS", 10);
    let dialect = Dialect::from_env("POSD_CHAOS_DIALECT");
    let t0 = Instant::now();
    let fig = run_seed(dialect, seed, rounds)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    print(dialect, "seed", &seed.to_string(), &fig, t0.elapsed());
}

/// The long run: `POSD_CHAOS_SEEDS=A..B` (end exclusive), `POSD_CHAOS_ROUNDS` per seed [20],
/// `POSD_CHAOS_DIALECT` [alipay_plus].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored and POSD_CHAOS_SEEDS"]
async fn chaos_long() {
    let (a, b) = seed_range("POSD_CHAOS_SEEDS", "1..51");
    let rounds = env_u64("POSD_CHAOS_ROUNDS", 20);
    let dialect = Dialect::from_env("POSD_CHAOS_DIALECT");
    let t0 = Instant::now();
    let mut all = Figures::default();
    let mut failures = Vec::new();
    for seed in a..b {
        match run_seed(dialect, seed, rounds).await {
            Ok(fig) => all.add(&fig),
            Err(e) => {
                eprintln!("FAILED {e}");
                failures.push(seed);
            }
        }
        print(
            dialect,
            "progress",
            &format!("{a}..{}", seed + 1),
            &all,
            t0.elapsed(),
        );
    }
    print(dialect, "total", &format!("{a}..{b}"), &all, t0.elapsed());
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}
