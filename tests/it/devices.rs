//! Devices: the serial scanner over pseudo-terminals, receipt bytes per profile
//! (snapshots, GB18030 decoding, the CODE128 payload, emupos rendering + zbarimg), and the
//! print journal with the print worker (offline at sale time, paper out vs unknown, reprint),
//! and a scanned slip looked up through the real binary.

mod printing;
mod receipts;
mod scanning;
mod slips;

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it holds or `limit` passes; panics with `what` on timeout.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A tool an external-tool test needs: the env var's value, or `None` (skip) outside CI.
/// In CI (`CI` set) a missing tool fails the test, so CI always runs it.
pub fn external_tool(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set: CI must provide {what} (.ci/run builds it)")
        }
        _ => {
            eprintln!("skipping: set {var} to run this test ({what})");
            None
        }
    }
}
