//! The web console in a real browser: `tests/browser/console.mjs` drives Debian's headless
//! Chromium through playwright-core against a real `posd run` on the sandbox gateway (log in,
//! a sale appears, partial refund, queue replay, statement upload, resolve, refused posts
//! without cookie or CSRF token, an order ref of `<script>` shown as text). Under `CI=true` a
//! missing browser, Node or `npm ci` fails the test; elsewhere it says what to install and
//! passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::daemon::TestDaemon;

const TOKEN: &str = "console-test-token-7f3a";

pub(crate) fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

pub(crate) fn chromium() -> Option<PathBuf> {
    std::env::var_os("POSD_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
        .find(|p| p.exists())
}

/// What is missing to run the browser test, if anything.
pub(crate) fn missing() -> Option<String> {
    if chromium().is_none() {
        return Some("chromium (apt-get install chromium), or set POSD_CHROMIUM".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node (apt-get install nodejs npm)".into());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core (npm ci --prefix tests/browser)".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    if let Some(what) = missing() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "the browser test needs {what}; .ci/run installs it");
        eprintln!("skipping the browser test: it needs {what}");
        return;
    }
    let mut d = TestDaemon::new("[sandbox]\ncancel_outage = \"1500ms\"\n");
    // The console is behind the API token.
    let config = std::fs::read_to_string(&d.config).unwrap();
    let config = config.replacen("[api]\n", &format!("[api]\ntoken = \"{TOKEN}\"\n"), 1);
    std::fs::write(&d.config, config).unwrap();
    d.start(None).await;
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("node")
            .arg(browser_dir().join("console.mjs"))
            .env("POSD_BASE", &d.base)
            .env("POSD_TOKEN", TOKEN)
            .env("POSD_CHROMIUM", chromium().unwrap())
            .current_dir(browser_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finished within 4 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}\n--- daemon log ---\n{}",
        d.log()
    );
    assert!(
        stdout.contains("ok - the order ref shows as text"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok - a form post without the CSRF token is refused"),
        "{stdout}"
    );
}
