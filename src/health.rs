//! Liveness: one health check (the database answers a query within a deadline, the engine is
//! not shutting down, every registered worker task is still running) used by `GET /healthz`
//! and by the systemd watchdog, which pings only after a passing check — so a wedged database
//! or a dead worker makes systemd restart the daemon.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::store::notifications;

/// How long the database may take to answer the health query.
pub const DB_DEADLINE: Duration = Duration::from_secs(2);

/// Says whether a worker is alive: `Err(reason)` when it is not.
pub type WorkerProbe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The health check, cheap to clone.
#[derive(Clone)]
pub struct Health {
    engine: Engine,
    workers: Arc<Mutex<Vec<(String, WorkerProbe)>>>,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The database answered in time.
    pub database: Result<(), String>,
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
        self.database.is_ok() && self.dead_workers.is_empty()
    }

    /// Why the daemon is not healthy, for `/healthz` and the log.
    pub fn reason(&self) -> Option<String> {
        let mut why = Vec::new();
        if let Err(e) = &self.database {
            why.push(format!("database: {e}"));
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
        }
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
        let db = tokio::time::timeout(
            DB_DEADLINE,
            self.engine.store().call(|c| Ok(notifications::ping(c)?)),
        )
        .await;
        let database = match db {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no answer within {DB_DEADLINE:?}")),
        };
        let dead_workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(name, probe)| probe().err().map(|why| format!("{name}: {why}")))
            .collect();
        Report {
            database,
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
        async fn inquiry_refund(&self, _: &str) -> Reply<Answer> {
            Reply::<Answer>::unknown("test")
        }
    }

    fn engine() -> Engine {
        let text = include_str!("../config.toml");
        let cfg = crate::config::Config::parse(text, "config.toml".as_ref(), ".".as_ref())
            .expect("the example config parses");
        Engine::new(
            Store::open_in_memory().unwrap(),
            Arc::new(Nothing),
            EngineSettings::from_config(&cfg),
        )
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
