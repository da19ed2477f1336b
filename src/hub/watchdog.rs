//! The hub's systemd watchdog: `WATCHDOG=1` every half `WatchdogSec`, sent only while the
//! database pool answers a query in time. A hub whose PostgreSQL stopped answering sends
//! nothing, so systemd restarts it (and the load balancer's `/healthz` has already moved
//! terminals to the other instances). `READY=1` is sent by the server once migrations ran and
//! the listeners are bound; no ping comes before it.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

/// Whether the pool hands out a connection that answers `SELECT 1` within `within`.
pub async fn db_answers(pool: &Pool, within: Duration) -> Result<(), String> {
    let probe = async {
        let c = pool
            .get()
            .await
            .map_err(|e| format!("no connection: {e}"))?;
        c.query_one("SELECT 1", &[])
            .await
            .map_err(|e| format!("query failed: {e}"))?;
        Ok(())
    };
    match tokio::time::timeout(within, probe).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(within)
        )),
    }
}

/// Pings every `interval` while the database answers (each probe bounded by `interval`),
/// until `stop` fires.
pub async fn run(pool: Pool, interval: Duration, stop: CancellationToken) {
    loop {
        match db_answers(&pool, interval).await {
            Ok(()) => {
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                    tracing::warn!(error = %e, "cannot ping the systemd watchdog");
                }
            }
            Err(why) => tracing::error!(
                why = why.as_str(),
                "the database does not answer; not pinging the watchdog"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}
