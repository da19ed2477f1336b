//! Crash points for tests: `POSD_FAILPOINT=name` makes the daemon SIGKILL itself when the
//! money path reaches that point. Off unless the variable is set; the check is one string
//! comparison.

use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            std::env::var("POSD_FAILPOINT")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .as_deref()
}

/// Whether any failpoint is configured (lets callers skip work that only feeds failpoints).
pub fn enabled() -> bool {
    configured().is_some()
}

/// Kills this process with SIGKILL if `name` is the configured failpoint: no destructor,
/// no flush, no graceful anything — exactly what a power cut or `kill -9` does.
pub fn hit(name: &str) {
    if configured() == Some(name) {
        tracing::warn!(failpoint = name, "failpoint reached: killing the process");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        // `kill` should not return; if it could not run, abort is the next best thing.
        std::process::abort();
    }
}
