//! The one clock: the only place posd's core reads the time. Wall time is injected as a
//! [`Clock`] (`SystemClock` in the daemon, a clock that follows tokio's pausable time or one
//! set by hand in tests) for the engine, the queue and the print worker; [`now_ms`] is the
//! system's wall time for callers that hold no injected clock; [`instant`] is the timer clock
//! (tokio's, paused in tests); [`local_time`] / [`local_at`] give terminal-local time. Every
//! persisted time (`created_at`, `next_attempt_at`, leases, the health probe) comes from here;
//! `tests/it/tidy.rs` fails on a second clock in the core.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, FixedOffset, Offset, TimeZone};

/// The system's wall time in Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Now on the timer clock (tokio's: it stands still in paused-time tests).
pub fn instant() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// A source of wall time in Unix epoch milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Now, epoch ms.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Wall time that starts at the system's and then advances with tokio's clock, so tests with
/// paused time see persisted times move in step with their timers.
#[derive(Debug)]
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts now.
    pub fn new() -> TokioClock {
        TokioClock {
            base_ms: now_ms(),
            start: instant(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

/// A clock set by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock showing `ms`.
    pub fn at(ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(ms))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Local time in `tz` (or the system's zone) with its offset.
pub fn local_time(
    tz: Option<crate::config::Tz>,
    utc: DateTime<chrono::Utc>,
) -> DateTime<FixedOffset> {
    match tz {
        Some(tz) => {
            let t = tz.from_utc_datetime(&utc.naive_utc());
            t.with_timezone(&t.offset().fix())
        }
        None => {
            let t = utc.with_timezone(&chrono::Local);
            t.with_timezone(t.offset())
        }
    }
}

/// Local time in `tz` (or the system's zone) at `ms` (epoch ms), with its offset.
pub fn local_at(tz: Option<crate::config::Tz>, ms: i64) -> DateTime<FixedOffset> {
    local_time(
        tz,
        chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default(),
    )
}
