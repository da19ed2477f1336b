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

/// `posd run` on a database it could open only read-only (a read-only filesystem; without
/// mount rights, file modes) exits 2 naming the cause, and changes no file.
#[tokio::test]
async fn posd_run_refuses_a_database_it_can_only_read() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new("");
    // A used store, stopped cleanly.
    let (running, token) = site.start().await;
    token.cancel();
    drop(running);
    assert!(site.db().exists());
    // The store moves to its own filesystem; keys stay where they are.
    let ro = site.dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&ro)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    for name in ["posd.sqlite3", posd::store::integrity::MARKER_FILE] {
        std::fs::copy(site.var().join(name), ro.join(name)).unwrap();
    }
    std::fs::create_dir(ro.join("keys")).unwrap();
    std::fs::copy(
        site.var().join("keys/merchant_private.pem"),
        ro.join("keys/merchant_private.pem"),
    )
    .unwrap();
    support::set_mode(&ro.join("keys/merchant_private.pem"), 0o600);
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(
        &site.config,
        text.replace("var/posd.sqlite3", "ro/posd.sqlite3"),
    )
    .unwrap();
    if mounted {
        let ok = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&ro)
            .status()
            .unwrap();
        assert!(ok.success());
    } else {
        std::fs::set_permissions(
            ro.join("posd.sqlite3"),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    let before = std::fs::read(ro.join("posd.sqlite3")).unwrap();
    let refused = site.posd(&["run"]);
    let msg = stderr(&refused);
    let after = std::fs::read(ro.join("posd.sqlite3")).unwrap();
    if mounted {
        let _ = Command::new("umount").arg("-l").arg(&ro).status();
    } else {
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    assert_eq!(refused.status.code(), Some(2), "{msg}");
    assert!(
        msg.contains("read-only") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert!(
        !msg.contains("--init-store"),
        "the store is not empty: {msg}"
    );
    assert!(after == before, "refusing changed the database file");
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

/// Short slow-client limits on both listeners.
const SLOW_LIMITS: &str = "[api]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"300ms\"\nbody_timeout = \"300ms\"\nmax_connections_per_peer = 100\n\
[notify]\nenabled = true\nlisten = \"127.0.0.1:0\"\npath = \"/alipay/notify\"\nheader_timeout = \"300ms\"\nbody_timeout = \"300ms\"\nmax_connections_per_peer = 100\n";

/// A TCP connection to `to` from the loopback address `from` (so attackers and the probe are
/// different peers).
async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((std::net::Ipv4Addr::from(from), 0).into()).unwrap();
    s.connect(to).await.unwrap()
}

/// Opens `n` connections from `from` that send a POST's headers and part of its body.
async fn partial_bodies(
    n: usize,
    from: [u8; 4],
    to: std::net::SocketAddr,
    path: &str,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = connect_from(from, to).await;
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"amount\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        held.push(s);
    }
    held
}

/// Reads what the server sends until it closes (or 5 s pass).
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn partial_bodies_hold_no_slot_and_are_cut_at_the_body_deadline() {
    let site = Site::new(SLOW_LIMITS);
    let (running, token) = site.start().await;
    let api = running.api_addr;
    // More half-sent bodies than the API has handler slots (64).
    let mut held = partial_bodies(70, [127, 0, 0, 2], api, "/v1/payments").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://{api}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        200,
        "health answers while slow clients are connected"
    );
    let sale = http
        .post(format!("http://{api}/v1/payments"))
        .json(&serde_json::json!({"amount": "1.00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        sale.status(),
        202,
        "a sale starts: {}",
        sale.text().await.unwrap()
    );
    // Each slow client gets a 408 with the JSON error body, then the connection closes.
    for s in held.iter_mut().take(5) {
        let answer = read_to_close(s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"request_timeout\""), "{answer}");
    }
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn idle_and_header_trickling_connections_are_closed_at_the_header_deadline() {
    use tokio::io::AsyncWriteExt;
    let site = Site::new(SLOW_LIMITS);
    let (running, token) = site.start().await;
    for addr in [running.api_addr, running.notify_addr.unwrap()] {
        let mut idle = connect_from([127, 0, 0, 2], addr).await;
        let mut partial = connect_from([127, 0, 0, 2], addr).await;
        partial
            .write_all(b"GET /healthz HTTP/1.1\r\nho")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        read_to_close(&mut idle).await;
        read_to_close(&mut partial).await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{addr}: closed after {:?}",
            started.elapsed()
        );
    }
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_peer_over_its_connection_limit_gets_a_json_503_and_others_are_served() {
    let site = Site::new(
        "[api]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_peer = 4\n\
         [notify]\nenabled = true\nlisten = \"127.0.0.1:0\"\nmax_connections_per_peer = 4\n",
    );
    let (running, token) = site.start().await;
    for addr in [running.api_addr, running.notify_addr.unwrap()] {
        let _held: Vec<_> = futures_connect(4, [127, 0, 0, 3], addr).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut extra = connect_from([127, 0, 0, 3], addr).await;
        let answer = read_to_close(&mut extra).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{addr}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let (code, _) = error_of(503, body);
        assert_eq!(code, "too_many_connections");
        // Another peer is served meanwhile.
        let r = reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 503, "{addr}");
    }
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}

async fn futures_connect(
    n: usize,
    from: [u8; 4],
    to: std::net::SocketAddr,
) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(connect_from(from, to).await);
    }
    v
}

#[tokio::test]
async fn the_notify_listener_serves_while_slow_clients_hold_connections() {
    let site = Site::new(SLOW_LIMITS);
    let (running, token) = site.start().await;
    let notify = running.notify_addr.unwrap();
    // More half-sent notifications than the endpoint has handler slots (16).
    let mut held = partial_bodies(20, [127, 0, 0, 2], notify, "/alipay/notify").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A notification from another peer reaches the handler: it is judged (here: unsigned,
    // so refused for its missing headers), not turned away as busy.
    let r = reqwest::Client::new()
        .post(format!("http://{notify}/alipay/notify"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("PARAM_ILLEGAL"));
    let answer = read_to_close(&mut held[0]).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}

/// POST `body` to `path` with `key`; returns (status, replayed header, JSON).
async fn post_keyed(
    http: &reqwest::Client,
    url: String,
    key: &str,
    body: serde_json::Value,
) -> (u16, bool, serde_json::Value) {
    let r = http
        .post(url)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (status, replayed, r.json().await.unwrap())
}

async fn payment_rows(running: &Running) -> i64 {
    running
        .engine
        .store()
        .read(|c| Ok(c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0))?))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_payment_post_with_its_key_charges_once() {
    let site = Site::new("");
    let (running, token) = site.start().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/payments", running.api_addr);
    let body = serde_json::json!({"amount": "7.00", "code": "281234567890123456"});
    // Five retries of one timed-out POST, at once, without an order ref.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_keyed(&http, url, "retry-1", body).await
        }));
    }
    let mut ids = Vec::new();
    let mut replays = 0;
    for t in tasks {
        let (status, replayed, v) = t.await.unwrap();
        assert_eq!(status, 202, "{v}");
        replays += usize::from(replayed);
        ids.push(v["payment_request_id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one payment for one key: {ids:?}");
    assert_eq!(replays, 4);
    assert_eq!(payment_rows(&running).await, 1);
    // The same key with another body is refused and changes nothing.
    let (status, _, v) = post_keyed(
        &http,
        url.clone(),
        "retry-1",
        serde_json::json!({"amount": "8.00", "code": "281234567890123456"}),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    let (code, message) = error_of(409, &v.to_string());
    assert_eq!(code, "conflict");
    assert!(message.contains("Idempotency-Key"), "{message}");
    assert_eq!(payment_rows(&running).await, 1);
    // A bad key is refused.
    let (status, _, _) = post_keyed(&http, url, "has space", body).await;
    assert_eq!(status, 400);
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_retried_refund_post_with_its_key_refunds_once() {
    let site = Site::new("");
    let (running, token) = site.start().await;
    let http = reqwest::Client::new();
    let api = format!("http://{}", running.api_addr);
    let (status, _, v) = post_keyed(
        &http,
        format!("{api}/v1/payments"),
        "sale-1",
        serde_json::json!({"amount": "10.00", "code": "281234567890123456"}),
    )
    .await;
    assert_eq!(status, 202);
    let id = v["payment_request_id"].as_str().unwrap().to_string();
    let paid: serde_json::Value = http
        .get(format!("{api}/v1/payments/{id}?wait=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["state"], "SUCCEEDED", "{paid}");
    let url = format!("{api}/v1/payments/{id}/refunds");
    let body = serde_json::json!({"amount": "2.00", "reason": "broken cup"});
    let (s1, r1, _) = post_keyed(&http, url.clone(), "refund-1", body.clone()).await;
    let (s2, r2, v2) = post_keyed(&http, url.clone(), "refund-1", body).await;
    assert_eq!((s1, r1, s2, r2), (202, false, 202, true), "{v2}");
    assert_eq!(v2["refunds"].as_array().unwrap().len(), 1, "{v2}");
    let (s3, _, v3) = post_keyed(
        &http,
        url,
        "refund-1",
        serde_json::json!({"amount": "3.00", "reason": "broken cup"}),
    )
    .await;
    assert_eq!(s3, 409, "{v3}");
    let refunds: i64 = running
        .engine
        .store()
        .read(|c| Ok(c.query_row("SELECT count(*) FROM refunds", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(refunds, 1);
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn codes_with_control_characters_and_order_refs_with_bidi_overrides_are_refused() {
    let site = Site::new("");
    let (running, token) = site.start().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/payments", running.api_addr);
    for (body, want) in [
        (
            serde_json::json!({"amount": "1.00", "code": "281234567890123456\u{0}"}),
            "invalid_code",
        ),
        (
            serde_json::json!({"amount": "1.00", "code": "28123456789\u{7}0123456"}),
            "invalid_code",
        ),
        (
            serde_json::json!({"amount": "1.00", "order_ref": "A-1\u{202E}9-B"}),
            "invalid_order_ref",
        ),
        (
            serde_json::json!({"amount": "1.00", "order_ref": "A\u{2066}1"}),
            "invalid_order_ref",
        ),
        (
            serde_json::json!({"amount": "1.00", "order_ref": "A\u{1b}[2J"}),
            "invalid_order_ref",
        ),
    ] {
        let r = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let (code, _) = error_of(400, &r.text().await.unwrap());
        assert_eq!(code, want, "{body}");
    }
    assert_eq!(payment_rows(&running).await, 0, "nothing was created");
    token.cancel();
    running.engine.shutdown(Duration::from_secs(2)).await;
}
