//! Operations hardening, end to end: `posd config check` and `posd run` refuse the same
//! configs (exit 2), the empty-store guard and `--init-store`, `posd backup` while the daemon
//! runs, the WAL checkpoint on clean shutdown, every error reply's JSON body, slow clients
//! against both listeners, and idempotent creating POSTs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use posd::config::Config;
use posd::daemon::{self, Running};
use tokio_util::sync::CancellationToken;

use crate::support;

/// A state directory with the test keys and a config with short timings.
pub struct Site {
    /// Keeps everything alive.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
}

const BASE: &str = r#"
[terminal]
id = "T0001"
merchant_id = "M0001"
merchant_name = "Demo Cafe"
merchant_mcc = "5812"
store_id = "S01"
store_name = "Demo Cafe Central"
store_mcc = "5812"

[flow]
pay_timeout = "300ms"
inquiry_interval = "20ms"
inquiry_timeout = "200ms"
cancel_timeout = "200ms"
cancel_retry_window = "400ms"
cancel_retry_min = "20ms"
cancel_retry_max = "50ms"

[store]
path = "var/posd.sqlite3"

[scanner]
kind = "none"

[printer]
kind = "none"

[log]
level = "warn"
"#;

impl Site {
    /// `extra` is appended (whole sections); `[api]` defaults to an ephemeral loopback port
    /// unless `extra` has its own.
    pub fn new(extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let var = dir.path().join("var");
        let put = |from: &str, to: PathBuf, mode: u32| {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(&to, support::key_text(from)).unwrap();
            support::set_mode(&to, mode);
        };
        put(
            "merchant_private_pkcs8.pem",
            var.join("keys/merchant_private.pem"),
            0o600,
        );
        put(
            "gateway_private_pkcs8.pem",
            var.join("sandbox-keys")
                .join(posd::gateway::sandbox::GATEWAY_PRIVATE_KEY_FILE),
            0o600,
        );
        put(
            "gateway_public.pem",
            var.join("sandbox-keys")
                .join(posd::gateway::sandbox::GATEWAY_PUBLIC_KEY_FILE),
            0o644,
        );
        let mut text = BASE.to_string();
        if !extra.contains("[api]") {
            text.push_str("\n[api]\nlisten = \"127.0.0.1:0\"\n");
        }
        text.push_str(extra);
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        Site { dir, config }
    }

    /// The state directory.
    pub fn var(&self) -> PathBuf {
        self.dir.path().join("var")
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.var().join("posd.sqlite3")
    }

    /// The parsed config.
    pub fn cfg(&self) -> Config {
        Config::load(&self.config).unwrap()
    }

    /// Runs the binary with `--config` and `args`, waiting at most 60 s.
    pub fn posd(&self, args: &[&str]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_posd"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("POSD_FAILPOINT")
            .env_remove("STATE_DIRECTORY")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("posd {args:?} did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    /// Starts the daemon in this process.
    pub async fn start(&self) -> (Running, CancellationToken) {
        let token = CancellationToken::new();
        let running = daemon::start(&self.cfg(), token.clone()).await.unwrap();
        (running, token)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `posd config check` and `posd run` both exit 2 with the same message for `site`.
fn both_refuse(site: &Site, key: &str) {
    let check = site.posd(&["config", "check"]);
    let run = site.posd(&["run"]);
    assert_eq!(
        check.status.code(),
        Some(2),
        "config check: {}",
        stderr(&check)
    );
    assert_eq!(run.status.code(), Some(2), "run: {}", stderr(&run));
    let first = |o: &Output| stderr(o).lines().next().unwrap_or_default().to_string();
    assert_eq!(first(&check), first(&run));
    assert!(first(&check).contains(key), "{}", first(&check));
}

#[test]
fn a_group_readable_sandbox_key_is_refused_by_config_check_and_run_alike() {
    let site = Site::new("");
    support::set_mode(
        &site
            .var()
            .join("sandbox-keys")
            .join(posd::gateway::sandbox::GATEWAY_PRIVATE_KEY_FILE),
        0o644,
    );
    both_refuse(&site, "sandbox");
}

#[test]
fn a_store_path_that_is_a_directory_is_refused_by_config_check_and_run_alike() {
    let site = Site::new("");
    std::fs::create_dir_all(site.db()).unwrap();
    both_refuse(&site, "store.path");
}

#[test]
fn a_missing_key_file_makes_run_exit_2() {
    let site = Site::new("[gateway]\nmerchant_private_key = \"keys/nope.pem\"\n");
    both_refuse(&site, "gateway.merchant_private_key");
}

#[test]
fn an_invalid_config_makes_run_and_check_exit_2() {
    let site = Site::new("[codes]\nprefixes = []\n");
    both_refuse(&site, "codes.prefixes");
}

#[test]
fn config_check_passes_what_run_accepts() {
    let site = Site::new("");
    let check = site.posd(&["config", "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
}

#[tokio::test]
async fn a_lost_database_is_refused_until_init_store_and_a_clean_stop_checkpoints() {
    let site = Site::new("");
    let cfg = site.cfg();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon::run(cfg, async move {
        let _ = stop_rx.await;
    }));
    // Wait for the store to exist, then stop cleanly.
    for _ in 0..600 {
        if site
            .var()
            .join(posd::store::integrity::MARKER_FILE)
            .exists()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    let wal = posd::store::integrity::sidecar(&site.db(), "-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "a clean stop leaves no WAL to replay"
    );
    assert!(std::fs::metadata(site.db()).unwrap().len() > 0);

    // The database is lost: a 0-byte file where it was.
    std::fs::write(site.db(), b"").unwrap();
    let _ = std::fs::remove_file(&wal);
    let refused = site.posd(&["run"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let msg = stderr(&refused);
    assert!(
        msg.contains("is empty") && msg.contains("--init-store") && msg.contains("backup"),
        "{msg}"
    );
    assert_eq!(
        std::fs::metadata(site.db()).unwrap().len(),
        0,
        "nothing changed"
    );

    // Told to, it starts afresh (and `config check` still passes).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = daemon::StartOptions { init_store: true };
    let run = tokio::spawn(daemon::run_with(site.cfg(), opts, async move {
        let _ = stop_rx.await;
    }));
    let mut started = false;
    for _ in 0..600 {
        if std::fs::metadata(site.db()).map(|m| m.len()).unwrap_or(0) > 0 {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started, "--init-store starts on an empty store");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn posd_backup_copies_the_database_while_the_daemon_runs() {
    let site = Site::new("");
    let (running, token) = site.start().await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{}/v1/payments", running.api_addr))
        .json(&serde_json::json!({"amount": "1.00", "code": "281234567890123456"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let out = site.dir.path().join("backup.sqlite3");
    let o = tokio::task::spawn_blocking({
        let out = out.clone();
        let site_config = site.config.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_posd"))
                .arg("--config")
                .arg(site_config)
                .arg("backup")
                .arg(out)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 payments"));
    assert_eq!(posd::store::integrity::quick_check(&out), Ok(()));
    assert_eq!(support::mode_of(&out) & 0o777, 0o600);
    // A second backup to the same file is refused.
    let again = site.posd(&["backup", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn state_directories_and_the_database_are_private_under_a_permissive_umask() {
    let site = Site::new("");
    std::fs::remove_dir_all(site.var().join("keys")).unwrap();
    // A fresh state directory, created by posd under umask 000.
    let var = site.var();
    let moved = site.dir.path().join("keys-elsewhere");
    std::fs::rename(var.join("sandbox-keys"), &moved).unwrap();
    std::fs::remove_dir_all(&var).unwrap();
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" --config \"$1\" run")
        .arg(env!("CARGO_BIN_EXE_posd"))
        .arg(&site.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = o.id();
    // Wait for the store to exist, then stop it.
    let mut ok = false;
    for _ in 0..3000 {
        if var.join(posd::store::integrity::MARKER_FILE).exists() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let out = o.wait_with_output().unwrap();
    assert!(ok, "posd did not start: {}", stderr(&out));
    let mode = |p: &Path| support::mode_of(p) & 0o777;
    assert_eq!(mode(&var), 0o750);
    assert_eq!(mode(&var.join("keys")), 0o700);
    assert_eq!(mode(&var.join("sandbox-keys")), 0o700);
    assert_eq!(mode(&site.db()), 0o600);
}

/// The JSON error body of a reply, asserting its shape.
pub fn error_of(status: u16, body: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {body:?}"));
    let code = v["error"]["code"].as_str();
    let message = v["error"]["message"].as_str();
    assert!(
        code.is_some_and(|c| !c.is_empty()) && message.is_some_and(|m| !m.is_empty()),
        "{status}: no {{\"error\":{{\"code\",\"message\"}}}} in {body}"
    );
    (code.unwrap().to_string(), message.unwrap().to_string())
}

/// Method, URL, optional (content type, body), expected status.
type Case<'a> = (&'a str, String, Option<(&'a str, String)>, u16);

const NOTIFY_ON: &str =
    "[notify]\nenabled = true\nlisten = \"127.0.0.1:0\"\npath = \"/alipay/notify\"\n";

#[tokio::test]
async fn every_error_reply_has_the_json_error_body() {
    let site = Site::new(NOTIFY_ON);
    let (running, token) = site.start().await;
    let api = format!("http://{}", running.api_addr);
    let notify = format!("http://{}", running.notify_addr.unwrap());
    let http = reqwest::Client::new();
    // One real payment, so paths with a known id reach their handlers.
    let r = http
        .post(format!("{api}/v1/payments"))
        .json(&serde_json::json!({"amount": "1.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["payment_request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let json = "application/json";
    let cases: Vec<Case> = vec![
        ("GET", format!("{api}/nope"), None, 404),
        ("GET", format!("{api}/v1/payments/{id}/nope"), None, 404),
        ("DELETE", format!("{api}/v1/payments/{id}"), None, 405),
        ("GET", format!("{api}/v1/payments"), None, 405),
        ("GET", format!("{api}/v1/queue/replay"), None, 405),
        ("GET", format!("{api}/v1/payments/%FF%FE"), None, 400),
        (
            "POST",
            format!("{api}/v1/payments/%FF/abort"),
            Some((json, "{}".into())),
            400,
        ),
        (
            "POST",
            format!("{api}/v1/payments/%C3%28/refunds"),
            Some((json, "{}".into())),
            400,
        ),
        (
            "POST",
            format!("{api}/v1/queue/abc/abandon"),
            Some((json, r#"{"reason":"x"}"#.into())),
            400,
        ),
        ("GET", format!("{api}/v1/queue?all=maybe"), None, 400),
        (
            "GET",
            format!("{api}/v1/notifications?unknown=perhaps"),
            None,
            400,
        ),
        (
            "GET",
            format!("{api}/v1/notifications?since=yesterday"),
            None,
            400,
        ),
        (
            "GET",
            format!("{api}/v1/payments/{id}?wait=soon"),
            None,
            400,
        ),
        (
            "GET",
            format!("{api}/v1/payments/{id}?wait=1&wait=2"),
            None,
            400,
        ),
        (
            "GET",
            format!("{api}/v1/queue?all=true&all=false"),
            None,
            400,
        ),
        (
            "POST",
            format!("{api}/v1/payments"),
            Some(("text/plain", "amount=1".into())),
            400,
        ),
        (
            "POST",
            format!("{api}/v1/payments"),
            Some((json, "{".into())),
            400,
        ),
        (
            "POST",
            format!("{api}/v1/payments"),
            Some((json, format!("{{\"amount\":\"{}\"}}", "9".repeat(20_000)))),
            413,
        ),
        ("GET", format!("{api}/v1/payments/NOPE"), None, 404),
        ("GET", format!("{notify}/elsewhere"), None, 404),
        ("GET", format!("{notify}/alipay/notify"), None, 405),
    ];
    for (method, url, body, want) in cases {
        let mut rb = http.request(method.parse().unwrap(), &url);
        if let Some((ct, b)) = body {
            rb = rb.header("content-type", ct).body(b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{method} {url}: {text}");
        assert!(ct.starts_with("application/json"), "{method} {url}: {ct}");
        error_of(status, &text);
    }
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}
