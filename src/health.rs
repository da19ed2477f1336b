//! Liveness: one health check used by `GET /healthz` and by the systemd watchdog, which pings
//! only after a passing check — so a wedged, read-only, full or corrupt database, or a dead
//! worker, makes systemd restart the daemon (and `/healthz` say why).
//!
//! The check: the database answers a read and commits a real write (the one-row
//! `health_probe` table, through the same group-commit writer the payments use) within a
//! deadline; the last `PRAGMA quick_check` (at start and every [`INTEGRITY_EVERY`], on its own
//! connection, off the request path) found no corruption; no payment's task holds an answer it
//! cannot commit (`Engine::recording_fault`); the engine is not shutting down;
//! every registered probe passes. Probes ([`Health::add_worker`]) are the seam for any other
//! part that can say "I cannot do my job" (a task that stopped, a driver that cannot commit).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store::{integrity, notifications};

/// How long the database may take to answer the health query and commit the probe.
pub const DB_DEADLINE: Duration = Duration::from_secs(2);
/// A write probe's result is reused for this long: `/healthz` polled hard costs at most one
/// commit per interval.
pub const PROBE_REUSE: Duration = Duration::from_secs(1);
/// How often `PRAGMA quick_check` runs while the daemon runs.
pub const INTEGRITY_EVERY: Duration = Duration::from_secs(15 * 60);

/// Says whether a worker is alive: `Err(reason)` when it is not.
pub type WorkerProbe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// When the last write probe ran, and what it found.
type LastProbe = (Instant, Result<(), String>);

/// The health check, cheap to clone.
#[derive(Clone)]
pub struct Health {
    engine: Engine,
    workers: Arc<Mutex<Vec<(String, WorkerProbe)>>>,
    /// The last write probe and when it ran (one probe at a time; see [`PROBE_REUSE`]).
    probe: Arc<tokio::sync::Mutex<Option<LastProbe>>>,
    /// The last `quick_check`.
    integrity: Arc<Mutex<Result<(), String>>>,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The database answered a read and committed the probe's write in time.
    pub database: Result<(), String>,
    /// The last integrity check found nothing wrong.
    pub integrity: Result<(), String>,
    /// Every answer the engine got could be committed (no payment waits with an unrecorded
    /// answer, the queue can settle).
    pub recording: Result<(), String>,
    /// Shutdown has begun.
    pub shutting_down: bool,
    /// Workers that are not alive, with why.
    pub dead_workers: Vec<String>,
    /// Number of payment tasks running.
    pub active_payment_tasks: usize,
}

impl Report {
    /// Serving: database fine, every worker alive, not shutting down (`/healthz` 200).
    pub fn healthy(&self) -> bool {
        self.alive() && !self.shutting_down
    }

    /// The process works (database and workers); the watchdog pings on this, so a drain in
    /// progress is not mistaken for a hang.
    pub fn alive(&self) -> bool {
        self.database.is_ok()
            && self.integrity.is_ok()
            && self.recording.is_ok()
            && self.dead_workers.is_empty()
    }

    /// Why the daemon is not healthy, for `/healthz` and the log.
    pub fn reason(&self) -> Option<String> {
        let mut why = Vec::new();
        if let Err(e) = &self.database {
            why.push(format!("database: {e}"));
        }
        if let Err(e) = &self.integrity {
            why.push(format!("database integrity: {e}"));
        }
        if let Err(e) = &self.recording {
            why.push(format!("cannot record: {e}"));
        }
        for w in &self.dead_workers {
            why.push(format!("worker {w}"));
        }
        if self.shutting_down {
            why.push("shutting down".to_string());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

impl Health {
    /// A check over `engine` with no workers registered yet.
    pub fn new(engine: Engine) -> Health {
        Health {
            engine,
            workers: Arc::new(Mutex::new(Vec::new())),
            probe: Arc::default(),
            integrity: Arc::new(Mutex::new(Ok(()))),
        }
    }

    /// Runs `PRAGMA quick_check` now and keeps its result for the next checks.
    pub async fn check_integrity(&self) -> Result<(), String> {
        let r = self.engine.store().quick_check().await;
        if let Err(e) = &r {
            tracing::error!(problems = %e, "the database failed its integrity check; restore it from a backup");
        }
        *self.integrity.lock().unwrap_or_else(|p| p.into_inner()) = r.clone();
        r
    }

    /// Runs [`Health::check_integrity`] every `every` until `token` is cancelled.
    pub async fn integrity_checks(self, every: Duration, token: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = token.cancelled() => return,
            }
            let _ = self.check_integrity().await;
        }
    }

    /// The read and the write probe, or the last result if it is younger than
    /// [`PROBE_REUSE`]. Concurrent callers share one probe.
    async fn database(&self) -> Result<(), String> {
        let mut last = self.probe.lock().await;
        if let Some((at, r)) = &*last {
            if at.elapsed() < PROBE_REUSE {
                return r.clone();
            }
        }
        let store = self.engine.store().clone();
        let now = self.engine.now_ms();
        let probe = async {
            store.read(|c| Ok(notifications::ping(c)?)).await?;
            integrity::probe_write(&store, now).await
        };
        let r = match tokio::time::timeout(DB_DEADLINE, probe).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no commit within {DB_DEADLINE:?}")),
        };
        *last = Some((Instant::now(), r.clone()));
        r
    }

    /// Registers a worker probe under `name`.
    pub fn add_worker(&self, name: impl Into<String>, probe: WorkerProbe) {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.into(), probe));
    }

    /// Registers a spawned task: it is dead once it has finished (tasks here run until
    /// shutdown, so finishing early means it failed or panicked).
    pub fn add_task(&self, name: impl Into<String>, task: tokio::task::AbortHandle) {
        let name = name.into();
        let shown = name.clone();
        self.add_worker(
            name,
            Arc::new(move || {
                if task.is_finished() {
                    Err(format!("{shown} has stopped"))
                } else {
                    Ok(())
                }
            }),
        );
    }

    /// Runs the check.
    pub async fn check(&self) -> Report {
        let database = self.database().await;
        let integrity = self
            .integrity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let dead_workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(name, probe)| probe().err().map(|why| format!("{name}: {why}")))
            .collect();
        let recording = match self.engine.recording_fault() {
            None => Ok(()),
            Some(f) => Err(format!(
                "{} payment(s) wait with an unrecorded answer{} since {}: {}",
                f.payments.len(),
                if f.queue {
                    ", and the reversal queue cannot settle"
                } else {
                    ""
                },
                chrono::DateTime::from_timestamp_millis(f.since_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
                f.error
            )),
        };
        Report {
            database,
            integrity,
            recording,
            shutting_down: self.engine.is_shutting_down(),
            dead_workers,
            active_payment_tasks: self.engine.active_drivers(),
        }
    }
}

/// Sends `WATCHDOG=1` every `interval` while the check passes (systemd's `WatchdogSec`:
/// pass half of it). A failing check sends nothing, so systemd restarts a wedged daemon.
pub async fn watchdog(health: Health, interval: Duration, token: CancellationToken) {
    loop {
        let report = health.check().await;
        if report.alive() {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            }
        } else {
            tracing::error!(reason = %report.reason().unwrap_or_default(), "health check failed; not pinging the watchdog");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = token.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineSettings;
    use crate::gateway::{Answer, Gateway, Inquiry, PayOrder, RefundOrder, Reply};
    use crate::store::Store;

    struct Nothing;

    #[async_trait::async_trait]
    impl Gateway for Nothing {
        async fn pay(&self, _: &PayOrder) -> Reply<Answer> {
            Reply::<Answer>::unknown("test")
        }
        async fn inquiry_payment(&self, _: &str) -> Reply<Inquiry> {
            Reply::<Inquiry>::unknown("test")
        }
        async fn cancel(&self, _: &str) -> Reply<Answer> {
            Reply::<Answer>::unknown("test")
        }
        async fn refund(&self, _: &RefundOrder) -> Reply<Answer> {
            Reply::<Answer>::unknown("test")
        }
        async fn inquiry_refund(&self, _: &RefundOrder) -> Reply<Answer> {
            Reply::<Answer>::unknown("test")
        }
    }

    fn engine() -> Engine {
        engine_on(Store::open_in_memory().unwrap())
    }

    fn engine_on(store: Store) -> Engine {
        let text = include_str!("../config.toml");
        let cfg = crate::config::Config::parse(text, "config.toml".as_ref(), ".".as_ref())
            .expect("the example config parses");
        Engine::new(store, Arc::new(Nothing), EngineSettings::from_config(&cfg))
    }

    /// A health check over a store in a fresh file, past the probe's reuse window.
    async fn on_file() -> (tempfile::TempDir, Store, Health) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.sqlite3")).unwrap();
        let health = Health::new(engine_on(store.clone()));
        let r = health.check().await;
        assert!(r.healthy(), "a fresh store is healthy: {r:?}");
        (dir, store, health)
    }

    /// Lets the next check probe again instead of reusing the last result.
    async fn forget_probe(h: &Health) {
        *h.probe.lock().await = None;
    }

    #[tokio::test]
    async fn the_probe_really_commits_a_row() {
        let (_dir, store, health) = on_file().await;
        let at: i64 = store
            .read(|c| Ok(c.query_row("SELECT at FROM health_probe", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert!(at > 0);
        // Within the reuse window no second commit happens.
        health.check().await;
        let again: i64 = store
            .read(|c| Ok(c.query_row("SELECT at FROM health_probe", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(at, again);
    }

    #[tokio::test]
    async fn a_read_only_database_is_not_healthy() {
        let (_dir, store, health) = on_file().await;
        // What SQLite answers when the file or its filesystem turned read-only (root ignores
        // file modes, so the fault is injected on the writer connection).
        store
            .call(|c| {
                c.pragma_update(None, "query_only", true)?;
                Ok(())
            })
            .await
            .unwrap();
        forget_probe(&health).await;
        let r = health.check().await;
        assert!(!r.alive() && !r.healthy(), "{r:?}");
        assert!(r.reason().unwrap().contains("readonly"), "{r:?}");
    }

    /// A small tmpfs mounted on a temp directory (root only), unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().ok()?;
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(Tmpfs(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    #[tokio::test]
    async fn a_full_disk_is_not_healthy() {
        let Some(fs) = Tmpfs::mount("2m") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "this test needs to mount a tmpfs (root with CAP_SYS_ADMIN) under CI"
            );
            eprintln!("cannot mount a tmpfs here; the full-disk test needs root");
            return;
        };
        let db = fs.0.path().join("posd.sqlite3");
        let store = Store::open(&db).unwrap();
        let health = Health::new(engine_on(store.clone()));
        assert!(health.check().await.healthy());
        // Fill the filesystem to the last byte.
        let mut filler = std::fs::File::create(fs.0.path().join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        drop(filler);
        forget_probe(&health).await;
        let r = health.check().await;
        assert!(!r.alive() && !r.healthy(), "{r:?}");
        assert!(r.reason().unwrap().starts_with("database:"), "{r:?}");
        // Space back: healthy again by itself.
        std::fs::remove_file(fs.0.path().join("filler")).unwrap();
        forget_probe(&health).await;
        let r = health.check().await;
        assert!(r.healthy(), "{r:?}");
        drop(store);
        drop(health);
    }

    #[tokio::test]
    async fn a_payment_that_cannot_record_its_answer_makes_health_fail() {
        let (_dir, store, health) = on_file().await;
        let engine = health.engine.clone();
        let code = crate::domain::code::PaymentCode::parse(
            "281234567890123456",
            &crate::domain::code::CodeRules::default(),
        )
        .unwrap();
        engine
            .start_sale(crate::engine::SaleRequest {
                amount: crate::domain::money::Amount::parse("1.00", engine_currency()).unwrap(),
                order_ref: None,
                code: Some(code),
            })
            .await
            .unwrap();
        // From now on every commit fails: the driver cannot record the pay's answer.
        store
            .call(|c| {
                c.pragma_update(None, "query_only", true)?;
                Ok(())
            })
            .await
            .unwrap();
        let mut flagged = None;
        // The example config's timings: the first answer to record comes within seconds.
        for _ in 0..750 {
            if let Some(f) = engine.recording_fault() {
                flagged = Some(f);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(flagged.is_some(), "the driver flags the failing commit");
        let r = health.check().await;
        assert!(!r.alive() && !r.healthy(), "{r:?}");
        assert!(r.recording.is_err(), "{r:?}");
        assert!(r.reason().unwrap().contains("cannot record"), "{r:?}");
        store
            .call(|c| {
                c.pragma_update(None, "query_only", false)?;
                Ok(())
            })
            .await
            .ok();
        engine.shutdown(Duration::from_millis(50)).await;
    }

    fn engine_currency() -> crate::domain::money::Currency {
        crate::domain::money::Currency::from_code("CNY").unwrap()
    }

    #[tokio::test]
    async fn a_write_lock_held_past_the_deadline_is_not_healthy_until_released() {
        let (dir, _store, health) = on_file().await;
        let lock =
            crate::store::integrity::tests::WriteLock::take(&dir.path().join("posd.sqlite3"));
        forget_probe(&health).await;
        let r = health.check().await;
        assert!(!r.alive() && !r.healthy(), "{r:?}");
        assert!(r.reason().unwrap().contains("no commit within"), "{r:?}");
        drop(lock);
        let mut healthy = false;
        for _ in 0..100 {
            forget_probe(&health).await;
            if health.check().await.healthy() {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(healthy, "healthy again by itself once the lock is gone");
    }

    #[tokio::test]
    async fn the_periodic_integrity_check_notices_corruption_by_itself() {
        let (dir, store, health) = on_file().await;
        store.checkpoint().unwrap();
        let token = CancellationToken::new();
        tokio::spawn(
            health
                .clone()
                .integrity_checks(Duration::from_millis(30), token.clone()),
        );
        crate::store::integrity::tests::corrupt(&dir.path().join("posd.sqlite3"));
        let mut noticed = false;
        for _ in 0..200 {
            if health.integrity.lock().unwrap().is_err() {
                noticed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        assert!(noticed, "the periodic quick_check found the corrupt page");
        assert!(!health.check().await.alive());
    }

    #[tokio::test]
    async fn a_corrupted_page_is_noticed_by_the_integrity_check() {
        let (dir, store, health) = on_file().await;
        let db = dir.path().join("posd.sqlite3");
        assert_eq!(health.check_integrity().await, Ok(()));
        // Every page in the file itself, none only in the WAL.
        store.checkpoint().unwrap();
        crate::store::integrity::tests::corrupt(&db);
        assert!(health.check_integrity().await.is_err());
        let r = health.check().await;
        assert!(!r.alive() && !r.healthy(), "{r:?}");
        assert!(r.reason().unwrap().contains("database integrity"), "{r:?}");
    }

    #[tokio::test]
    async fn healthy_until_a_worker_dies_or_shutdown_begins() {
        let engine = engine();
        let health = Health::new(engine.clone());
        let r = health.check().await;
        assert!(r.healthy() && r.alive(), "{r:?}");
        assert_eq!(r.reason(), None);

        let task = tokio::spawn(async {});
        let handle = task.abort_handle();
        task.await.unwrap();
        health.add_task("queue", handle);
        let r = health.check().await;
        assert!(!r.alive() && !r.healthy());
        assert!(r.reason().unwrap().contains("queue has stopped"), "{r:?}");
    }

    #[tokio::test]
    async fn a_drain_is_not_healthy_but_still_alive_for_the_watchdog() {
        let engine = engine();
        let health = Health::new(engine.clone());
        assert!(engine.shutdown(Duration::from_millis(10)).await);
        let r = health.check().await;
        assert!(r.alive() && !r.healthy(), "{r:?}");
        assert_eq!(r.reason().as_deref(), Some("shutting down"));
    }
}
