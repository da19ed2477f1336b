//! The one harness for the real `posd run` binary: a temp state directory with the test keys,
//! the repository's config with short flow timings and a free API port (sections a test
//! passes replace the repository's), an optional bearer token, start (with the environment
//! systemd would give) / signals / SIGKILL / restart, the API calls the tests need, and the
//! daemon's log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Flow timings short enough to run every scenario in well under a second.
pub const FAST_FLOW: &str = r#"
[flow]
pay_timeout = "300ms"
inquiry_interval = "20ms"
inquiry_timeout = "200ms"
inquiry_max = 10
cancel_timeout = "200ms"
cancel_retry_window = "400ms"
cancel_retry_min = "20ms"
cancel_retry_max = "50ms"
queue_backoff_initial = "30s"
queue_backoff_max = "10m"
"#;

/// A free loopback port for a process under test to listen on (bound then released; the
/// process binds it right after, and again at each restart). It is taken below the kernel's
/// ephemeral range: a port from that range can be handed to any outgoing connection (a
/// pool's connection to PostgreSQL, a client's to the sandbox) while a killed daemon or hub
/// instance is down, and its restart would then find its own port taken. Within a process
/// ports are handed out in turn, so two tests never get the same one; each process starts
/// from its own place in the range, and a port another process holds fails the bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};

    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free loopback port between {LOW} and {high}")
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`), 32768 when
/// unreadable.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn copy_key(from: &str, to: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(super::support::keys_dir().join(from), to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A daemon under test.
pub struct TestDaemon {
    /// Keeps the state directory alive.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Option<Child>,
    http: reqwest::Client,
    starts: u32,
    /// `[api] token`, sent as a bearer token on every API call.
    token: Option<String>,
    /// The config's scanner reads standard input: the process gets a pipe ([`Self::scan`]).
    scanner_stdin: bool,
    stdin: Option<std::process::ChildStdin>,
}

impl TestDaemon {
    /// Writes a config (the repository's `config.toml` with `extra` appended sections
    /// replacing its own) and the test keys; does not start the process.
    pub fn new(extra: &str) -> TestDaemon {
        TestDaemon::with_token(extra, None)
    }

    /// As [`Self::new`], with `[api] token` set and sent on every API call.
    pub fn with_token(extra: &str, token: Option<&str>) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let state = dir.path().join("var");
        copy_key(
            "merchant_private_pkcs8.pem",
            &state.join("keys/merchant_private.pem"),
            0o600,
        );
        copy_key(
            "merchant_public.pem",
            &state.join("keys/merchant_public.pem"),
            0o644,
        );
        copy_key(
            "gateway_private_pkcs8.pem",
            &state
                .join("sandbox-keys")
                .join(posd::gateway::sandbox::GATEWAY_PRIVATE_KEY_FILE),
            0o600,
        );
        copy_key(
            "gateway_public.pem",
            &state
                .join("sandbox-keys")
                .join(posd::gateway::sandbox::GATEWAY_PUBLIC_KEY_FILE),
            0o644,
        );
        let repo_config = include_str!("../../config.toml");
        let overridden: Vec<&str> = extra
            .lines()
            .filter(|l| l.starts_with('['))
            .chain(["[api]", "[scanner]", "[flow]"])
            .collect();
        let mut config = drop_sections(repo_config, &overridden);
        config.push_str(&format!("\n[api]\nlisten = \"127.0.0.1:{port}\"\n"));
        if let Some(t) = token {
            config.push_str(&format!("token = \"{t}\"\n"));
        }
        if !extra.contains("[scanner]") {
            config.push_str("[scanner]\nkind = \"none\"\n");
        }
        if !extra.contains("[flow]") {
            config.push_str(FAST_FLOW);
        }
        config.push_str(extra);
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        TestDaemon {
            dir,
            config: path,
            base: format!("http://127.0.0.1:{port}"),
            child: None,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            starts: 0,
            token: token.map(str::to_string),
            scanner_stdin: extra.contains("kind = \"stdin\""),
            stdin: None,
        }
    }

    /// Writes one scan (a line) to the daemon's standard input, its stdin scanner.
    pub fn scan(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self
            .stdin
            .as_mut()
            .expect("a running daemon with a stdin scanner");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The state directory (`var/` beside the config).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("var")
    }

    /// Starts `posd run`, with `POSD_FAILPOINT` set when given, and waits until the API answers.
    /// Returns false when the crash point fired during start-up (recovery reached it before
    /// `/healthz` answered): the process is gone, as after a SIGKILL, and the caller starts
    /// it again. Without a crash point, an exit during start-up panics with the log.
    pub async fn start(&mut self, failpoint: Option<&str>) -> bool {
        let env: Vec<(&str, String)> = failpoint
            .map(|f| ("POSD_FAILPOINT", f.to_string()))
            .into_iter()
            .collect();
        self.spawn(&env);
        if failpoint.is_none() {
            self.wait_healthy().await;
            return true;
        }
        match self.wait_healthy_or_exit().await {
            None => true,
            Some(status) => {
                use std::os::unix::process::ExitStatusExt as _;
                assert!(
                    status.signal() == Some(9),
                    "posd exited during start-up ({status}), not killed by its crash point:\n{}",
                    self.log()
                );
                self.child = None;
                self.stdin = None;
                false
            }
        }
    }

    /// Starts `posd run` with `env` added to a clean environment (no systemd or posd
    /// variables of the test runner's), without waiting.
    pub fn spawn(&mut self, env: &[(&str, String)]) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("daemon-{}.log", self.starts)))
                .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posd"));
        cmd.arg("--config")
            .arg(&self.config)
            .arg("run")
            .current_dir(self.dir.path())
            .env_remove("POSD_FAILPOINT")
            .env_remove("POSD_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdin(if self.scanner_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        self.stdin = child.stdin.take();
        self.child = Some(child);
    }

    /// Waits until `/healthz` answers 200; panics with the log if the process exits first.
    pub async fn wait_healthy(&mut self) {
        if let Some(status) = self.wait_healthy_or_exit().await {
            panic!("posd exited during start-up ({status}):\n{}", self.log());
        }
    }

    /// Waits until `/healthz` answers 200 (`None`) or the process exits (its status).
    pub async fn wait_healthy_or_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.base)).send().await {
                if r.status().is_success() {
                    return None;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(status);
            }
            assert!(
                Instant::now() < deadline,
                "posd did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, …) to the running process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An HTTP client without the token (for checking the guard itself).
    pub fn client(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// A request to the API, with the bearer token when the daemon has one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Polls until the payment is in one of `states` (panics after `within`).
    pub async fn wait_state(&self, id: &str, states: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let p = self.get(id).await;
            if states.contains(&p["state"].as_str().unwrap_or("")) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never reached {states:?}; last {p}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Every log line the daemon wrote so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("daemon-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Waits for the process to exit by itself (a failpoint killed it) and returns its status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "posd did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status if the process has exited (it is then gone, as after [`Self::kill`]).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        self.stdin = None;
        Some(status)
    }

    /// Whether a process was started and not yet killed or seen exited.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// POST /v1/payments; returns (status, body).
    pub async fn create(&self, body: Value) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::POST, "/v1/payments")
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Starts a sale with a code and returns its id.
    pub async fn pay(&self, code: &str, amount: &str) -> String {
        let (status, body) = self
            .create(serde_json::json!({"amount": amount, "code": code}))
            .await;
        assert_eq!(status, 202, "{body}");
        body["payment_request_id"].as_str().unwrap().to_string()
    }

    /// GET /v1/payments/{id}.
    pub async fn get(&self, id: &str) -> Value {
        self.request(reqwest::Method::GET, &format!("/v1/payments/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Long-polls until the payment is final (panics after `within`).
    pub async fn wait_final(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v: Value = self
                .request(reqwest::Method::GET, &format!("/v1/payments/{id}?wait=5"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["is_final"] == Value::Bool(true) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not final: {v}\n{}",
                self.log()
            );
        }
    }

    /// The sandbox's own record of a payment: (status, refunded total), `None` if it never saw it.
    pub fn sandbox_record(&self, id: &str) -> Option<(String, i64)> {
        let c = rusqlite::Connection::open(self.state().join("sandbox.sqlite3")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        use rusqlite::OptionalExtension;
        c.query_row(
            "SELECT p.status, (SELECT ifnull(sum(r.amount_minor),0) FROM refunds r WHERE r.payment_id = p.payment_id) \
             FROM payments p WHERE p.payment_request_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .unwrap()
    }

    /// How many payment records the sandbox holds in all.
    pub fn sandbox_payments(&self) -> i64 {
        let c = rusqlite::Connection::open(self.state().join("sandbox.sqlite3")).unwrap();
        c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0))
            .unwrap()
    }

    /// Pending queue items of a payment in the daemon's database.
    pub fn queued(&self, id: &str) -> i64 {
        let c = rusqlite::Connection::open(self.state().join("posd.sqlite3")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.query_row(
            "SELECT count(*) FROM reversal_queue WHERE payment_request_id = ?1 AND status = 'PENDING'",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes whole `[section]`s from a TOML text.
fn drop_sections(text: &str, sections: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            skipping = sections.contains(&t);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
