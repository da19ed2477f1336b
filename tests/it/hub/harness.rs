//! The pieces of a hub test: the sandbox as upstream (in process, its own SQLite), hub
//! instances as real `posd hub run` processes, terminals as real `posd run` processes pointed
//! at a hub, and a raw AMS client that signs as a terminal (for refusals and races).

#![allow(dead_code, reason = "each hub test uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use posd::gateway::sandbox::{RequestCounts, Sandbox, SandboxHandle, SandboxSettings};
use posd::gateway::sign::{Message, PrivateKey, PublicKey};
use posd::hub::registry::{self, NewTerminal};
use serde_json::Value;

use super::super::daemon::{free_port, TestDaemon};
use super::super::support::{gateway_key, keys_dir, merchant_public};
use super::pg::TestDb;

/// A key file in `tests/keys/hub/`.
pub fn hub_key_path(name: &str) -> PathBuf {
    keys_dir().join("hub").join(name)
}

/// A private key from `tests/keys/hub/`.
pub fn hub_private(name: &str) -> PrivateKey {
    PrivateKey::from_text(&std::fs::read_to_string(hub_key_path(name)).unwrap(), name).unwrap()
}

/// A public key from `tests/keys/hub/`.
pub fn hub_public(name: &str) -> PublicKey {
    PublicKey::from_text(&std::fs::read_to_string(hub_key_path(name)).unwrap(), name).unwrap()
}

fn copy_private(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The sandbox gateway as the hub's upstream.
pub struct Upstream {
    /// Keeps the database alive.
    pub dir: tempfile::TempDir,
    /// The running sandbox.
    pub handle: SandboxHandle,
}

impl Upstream {
    /// Starts a sandbox: `cancel_outage` for row 86, "no answer" held for 30 s.
    pub async fn start(cancel_outage: Duration) -> Upstream {
        Upstream::start_with(cancel_outage, Duration::from_secs(30)).await
    }

    /// Starts a sandbox: `cancel_outage` for row 86, "no answer" (row 84) held for `stall`.
    pub async fn start_with(cancel_outage: Duration, stall: Duration) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SandboxSettings::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("sandbox.sqlite3"),
            gateway_key(),
            merchant_public(),
        );
        s.cancel_outage = cancel_outage;
        s.no_answer_stall = stall;
        let handle = Sandbox::start(s).await.unwrap();
        Upstream { dir, handle }
    }

    /// The base URL.
    pub fn base_url(&self) -> String {
        self.handle.base_url()
    }

    /// Request counters.
    pub fn counts(&self) -> RequestCounts {
        self.handle.counts()
    }

    /// The sandbox's record: (status, refunded minor units).
    pub fn record(&self, id: &str) -> Option<(String, i64)> {
        use rusqlite::OptionalExtension;
        let c = rusqlite::Connection::open(self.dir.path().join("sandbox.sqlite3")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.query_row(
            "SELECT p.status, (SELECT ifnull(sum(r.amount_minor),0) FROM refunds r WHERE r.payment_id = p.payment_id) \
             FROM payments p WHERE p.payment_request_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .unwrap()
    }

    /// The sandbox's whole record: request id -> (status, amount, refunded minor units,
    /// whether it took the money by its own rule, `scenario::charged`: scenario 87's charge
    /// goes through while its status stays PROCESSING).
    pub fn records(&self) -> std::collections::HashMap<String, (String, i64, i64, bool)> {
        let c = rusqlite::Connection::open(self.dir.path().join("sandbox.sqlite3")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut st = c
            .prepare(
                "SELECT p.payment_request_id, p.status, p.amount_minor, \
                 (SELECT ifnull(sum(r.amount_minor),0) FROM refunds r WHERE r.payment_id = p.payment_id) \
                 FROM payments p",
            )
            .unwrap();
        let rows: Vec<(String, (String, i64, i64))> = st
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.into_iter()
            .map(|(id, (status, amount, refunded))| {
                let took = super::super::chaos_kit::sandbox_took(&c, &id);
                (id, (status, amount, refunded, took))
            })
            .collect()
    }

    /// Who the sandbox says sent the pay: the AMS `client-id` or the mainland `app_id`.
    pub fn sender(&self, id: &str) -> Option<String> {
        use rusqlite::OptionalExtension;
        let c = rusqlite::Connection::open(self.dir.path().join("sandbox.sqlite3")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.query_row(
            "SELECT client_id FROM payments WHERE payment_request_id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    }

    /// How many payments the sandbox holds.
    pub fn payments(&self) -> i64 {
        let c = rusqlite::Connection::open(self.dir.path().join("sandbox.sqlite3")).unwrap();
        c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0))
            .unwrap()
    }
}

/// The hub's `app_id` at the mainland sandbox.
pub const MAINLAND_APP_ID: &str = "9021000000000001";

/// Short hub timings for tests.
pub const FAST_HUB: &str = r#"
[flow]
inquiry_interval = "100ms"
cancel_retry_window = "1s"
cancel_retry_min = "50ms"
cancel_retry_max = "100ms"
queue_backoff_initial = "200ms"
queue_backoff_max = "1s"
lease = "2s"
payment_expiry_margin = "0s"
"#;

/// The `[notify]` section of an instance listening for the upstream's notifications on
/// `port`, at `/alipay/notify`.
pub fn notify_section(port: u16) -> String {
    format!("[notify]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\npath = \"/alipay/notify\"\n")
}

/// One hub instance as a real process.
pub struct TestHub {
    /// Its directory (config, keys, logs).
    pub dir: tempfile::TempDir,
    /// hub.toml.
    pub config: PathBuf,
    /// Terminal-facing base URL.
    pub base: String,
    /// `/healthz` / `/metrics` base URL.
    pub api: String,
    child: Option<Child>,
    starts: u32,
    http: reqwest::Client,
}

impl TestHub {
    /// Has every pay tell the upstream to send its notifications to `url` (`[upstream]
    /// notify_url`); takes effect at the next start.
    pub fn notify_url(&self, url: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap().replacen(
            "[upstream]\n",
            &format!("[upstream]\nnotify_url = \"{url}\"\n"),
            1,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Writes a hub.toml for `db` and `upstream`; `hub_extra` lines go into `[hub]`, `extra`
    /// sections are appended (a `[flow]` there replaces [`FAST_HUB`]).
    pub fn new(db: &TestDb, upstream: &str, hub_extra: &str, extra: &str) -> TestHub {
        let section = format!("base_url = \"{upstream}\"\nclient_id = \"SANDBOX_HUB\"\n");
        TestHub::with_upstream(db, &section, hub_extra, extra)
    }

    /// The sandbox's mainland dialect (`/gateway.do` of the sandbox at `sandbox`) as the
    /// hub's `alipay_cn` upstream: terminals keep speaking AMS, the hub converts.
    pub fn mainland(db: &TestDb, sandbox: &str, hub_extra: &str, extra: &str) -> TestHub {
        let section = format!(
            "kind = \"alipay_cn\"\nbase_url = \"{sandbox}/gateway.do\"\napp_id = \"{MAINLAND_APP_ID}\"\n"
        );
        TestHub::with_upstream(db, &section, hub_extra, extra)
    }

    /// Like [`TestHub::new`] with `upstream` lines (kind, base URL, the hub's name there)
    /// at the top of `[upstream]`.
    pub fn with_upstream(db: &TestDb, upstream: &str, hub_extra: &str, extra: &str) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let api_port = free_port();
        copy_private(
            &hub_key_path("hub_private.pem"),
            &dir.path().join("keys/hub_private.pem"),
        );
        copy_private(
            &keys_dir().join("merchant_private_pkcs8.pem"),
            &dir.path().join("keys/merchant_private.pem"),
        );
        std::fs::copy(
            keys_dir().join("gateway_public.pem"),
            dir.path().join("keys/gateway_public.pem"),
        )
        .unwrap();
        let flow = if extra.contains("[flow]") {
            ""
        } else {
            FAST_HUB
        };
        // `[hub]`: these defaults, each replaced by the same key in `hub_extra`.
        let mut hub: Vec<(String, String)> = [
            ("listen", format!("\"127.0.0.1:{port}\"")),
            ("insecure_http", "true".to_string()),
            ("hub_private_key", "\"keys/hub_private.pem\"".to_string()),
            ("active_cancel_after", "\"60s\"".to_string()),
            ("terminal_decision_time", "\"10s\"".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for line in hub_extra.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let (k, v) = (k.trim().to_string(), v.trim().to_string());
                match hub.iter_mut().find(|(key, _)| *key == k) {
                    Some(entry) => entry.1 = v,
                    None => hub.push((k, v)),
                }
            }
        }
        let hub_section: String = hub.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let text = format!(
            r#"
[hub]
{hub_section}
[database]
url = "{url}"
pool_size = 8
[upstream]
{upstream}insecure_http = true
merchant_private_key = "keys/merchant_private.pem"
gateway_public_key = "keys/gateway_public.pem"
pay_timeout = "1500ms"
call_timeout = "700ms"
[api]
listen = "127.0.0.1:{api_port}"
{flow}
{extra}
"#,
            url = db.url
        );
        let config = dir.path().join("hub.toml");
        std::fs::write(&config, text).unwrap();
        TestHub {
            dir,
            config,
            base: format!("http://127.0.0.1:{port}"),
            api: format!("http://127.0.0.1:{api_port}"),
            child: None,
            starts: 0,
            http: reqwest::Client::new(),
        }
    }

    /// Starts `posd hub run` (with `POSD_FAILPOINT` when given) and waits for `/healthz`.
    pub async fn start(&mut self, failpoint: Option<&str>) {
        self.start_with_env(failpoint, &[]).await
    }

    /// [`TestHub::start`] with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub async fn start_with_env(&mut self, failpoint: Option<&str>, env: &[(&str, String)]) {
        if !self.start_or_killed(failpoint, env).await {
            panic!("posd hub exited during start-up:\n{}", self.log());
        }
    }

    /// Starts as [`TestHub::start_with_env`]; false when the process was SIGKILLed before
    /// `/healthz` answered (its crash point fired in the first worker pass): it is gone, as
    /// after [`TestHub::kill`]. Any other exit during start-up panics with the log.
    pub async fn start_or_killed(
        &mut self,
        failpoint: Option<&str>,
        env: &[(&str, String)],
    ) -> bool {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("hub-{}.log", self.starts)))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_posd"));
        cmd.args(["hub", "run", "--config"])
            .arg(&self.config)
            .env_remove("POSD_FAILPOINT")
            .env_remove("POSD_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(f) = failpoint {
            cmd.env("POSD_FAILPOINT", f);
        }
        cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.api)).send().await {
                if r.status().is_success() {
                    return true;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt as _;
                if failpoint.is_some() && status.signal() == Some(9) {
                    self.child = None;
                    return false;
                }
                panic!(
                    "posd hub exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "posd hub did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("hub-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Whether the process has exited (a failpoint killed it).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait().unwrap()) {
            Some(Some(_)) => {
                self.child = None;
                true
            }
            Some(None) => false,
            None => true,
        }
    }

    /// Waits until the process exits by itself.
    pub async fn wait_exit(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.exited() {
            assert!(
                Instant::now() < deadline,
                "posd hub did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// GET /metrics.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Registers terminal `client_id` with `key` (`terminal_a` / `terminal_b`) for merchant
/// M0001, store S01, terminal id T0001 (the repository config's terminal).
pub async fn register(db: &TestDb, client_id: &str, key: &str) {
    let pool = db.pool().await;
    posd::hub::db::migrate(&pool).await.unwrap();
    registry::add(
        &pool,
        &NewTerminal {
            client_id: client_id.into(),
            name: Some(format!("test {client_id}")),
            public_key: hub_public(&format!("{key}_public.pem")),
            merchant_id: "M0001".into(),
            store_id: "S01".into(),
            terminal_id: Some("T0001".into()),
            max_amount_minor: Some(1_000_000),
        },
    )
    .await
    .unwrap();
}

/// Terminal timings for hub tests: longer than the hub's upstream deadlines (two hops in a
/// debug build), still seconds for the whole flow.
pub const TERMINAL_FLOW: &str = r#"
[flow]
pay_timeout = "2s"
inquiry_interval = "50ms"
inquiry_timeout = "1s"
inquiry_max = 10
cancel_timeout = "1s"
cancel_retry_window = "5s"
cancel_retry_min = "50ms"
cancel_retry_max = "100ms"
queue_backoff_initial = "30s"
queue_backoff_max = "10m"
payment_expiry = "3s"
payment_expiry_margin = "0s"
"#;

/// A terminal `posd run` whose gateway is the hub at `hub_base`, signing as `client_id` with
/// `key`; `extra` sections are appended (e.g. a `[flow]`).
pub fn terminal(hub_base: &str, client_id: &str, key: &str, extra: &str) -> TestDaemon {
    let gateway = format!(
        "[gateway]\nkind = \"alipay_plus\"\nbase_url = \"{hub_base}\"\ninsecure_http = {}\n\
         client_id = \"{client_id}\"\nmerchant_private_key = \"var/keys/merchant_private.pem\"\n\
         gateway_public_key = \"{}\"\n{extra}",
        !hub_base.starts_with("https://"),
        hub_key_path("hub_public.pem").display()
    );
    let flow = if extra.contains("[flow]") {
        ""
    } else {
        TERMINAL_FLOW
    };
    let d = TestDaemon::new(&format!("{gateway}{flow}"));
    // The terminal signs with its own key, not the merchant's (only the hub holds that).
    let private = d.state().join("keys/merchant_private.pem");
    std::fs::remove_file(&private).unwrap();
    copy_private(&hub_key_path(&format!("{key}_private.pem")), &private);
    d
}

/// A raw AMS request signed as a terminal.
pub struct Signer {
    /// Client id sent.
    pub client_id: String,
    /// Signing key.
    pub key: PrivateKey,
    http: reqwest::Client,
}

/// An answer from the hub.
#[derive(Debug)]
pub struct HubAnswer {
    /// The JSON body.
    pub body: Value,
    /// Whether it carried a signature that verifies with the hub's key.
    pub signed: bool,
}

impl HubAnswer {
    /// `result.resultStatus`.
    pub fn status(&self) -> &str {
        self.body["result"]["resultStatus"].as_str().unwrap_or("")
    }
    /// `result.resultCode`.
    pub fn code(&self) -> &str {
        self.body["result"]["resultCode"].as_str().unwrap_or("")
    }
}

impl Signer {
    /// Signs as `client_id` with `tests/keys/hub/<key>_private.pem`.
    pub fn new(client_id: &str, key: &str) -> Signer {
        Signer {
            client_id: client_id.into(),
            key: hub_private(&format!("{key}_private.pem")),
            http: reqwest::Client::new(),
        }
    }

    /// POSTs `body` to `<base>/ams/api/v1/payments/<op>` with `Request-Time` = now + `skew_ms`.
    pub async fn send(&self, base: &str, op: &str, body: &Value, skew_ms: i64) -> HubAnswer {
        let path = format!("/ams/api/v1/payments/{op}");
        let bytes = serde_json::to_vec(body).unwrap();
        let time = (posd::hub::service::now_ms() + skew_ms).to_string();
        let sig = self.key.sign_header(
            "1",
            &Message {
                method: "POST",
                uri: &path,
                client_id: &self.client_id,
                time: &time,
                body: &bytes,
            },
        );
        let r = self
            .http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json; charset=UTF-8")
            .header("client-id", &self.client_id)
            .header("request-time", &time)
            .header("signature", sig)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let headers = r.headers().clone();
        let raw = r.bytes().await.unwrap();
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let signed = match (h("signature"), h("response-time"), h("client-id")) {
            (Some(sig), Some(time), Some(cid)) => hub_public("hub_public.pem")
                .verify_header(
                    &Message {
                        method: "POST",
                        uri: &path,
                        client_id: &cid,
                        time: &time,
                        body: &raw,
                    },
                    &sig,
                )
                .is_ok(),
            _ => false,
        };
        HubAnswer {
            body: serde_json::from_slice(&raw).unwrap(),
            signed,
        }
    }
}

/// A pay body as a terminal sends it (CNY 12.34, the given code), merchant/store/terminal as registered.
pub fn pay_body(id: &str, code: &str) -> Value {
    serde_json::json!({
        "productCode": "IN_STORE_PAYMENT",
        "paymentRequestId": id,
        "paymentAmount": {"currency": "CNY", "value": "1234"},
        "paymentMethod": {"paymentMethodType": "CONNECT_WALLET", "paymentMethodId": code},
        "paymentFactor": {"inStorePaymentScenario": "PaymentCode"},
        "order": {
            "referenceOrderId": id,
            "orderDescription": "Coffee",
            "orderAmount": {"currency": "CNY", "value": "1234"},
            "merchant": {"referenceMerchantId": "M0001", "merchantMCC": "5812", "merchantName": "Demo Cafe",
                "store": {"referenceStoreId": "S01", "storeName": "Demo Cafe Central", "storeMCC": "5812"}},
            "env": {"storeTerminalId": "T0001", "storeTerminalRequestTime": "2026-11-21T10:15:30+08:00"}
        }
    })
}

/// A code ending in the two given digits.
pub fn code(last2: &str) -> String {
    format!("2812345678901234{last2}")
}

/// The hub's record of a payment: state, or `None`.
pub async fn hub_state(db: &TestDb, id: &str) -> Option<String> {
    let pool = db.pool().await;
    let c = pool.get().await.unwrap();
    c.query_opt(
        "SELECT state FROM hub_payments WHERE payment_request_id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// A TCP balancer in front of hub instances (what an estate runs before its hubs): each new
/// connection goes to the first backend that accepts it, so a terminal's retry after an
/// instance died reaches the next one.
pub struct Balancer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free port in front of `backends` (base URLs).
    pub async fn start(backends: &[&str]) -> Balancer {
        Balancer::listen(backends, false).await
    }

    /// Like [`Balancer::start`], but each new connection tries the backends starting from
    /// the next one in turn, so every instance takes terminal traffic.
    pub async fn round_robin(backends: &[&str]) -> Balancer {
        Balancer::listen(backends, true).await
    }

    async fn listen(backends: &[&str], rotate: bool) -> Balancer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let backends: Vec<String> = backends
            .iter()
            .map(|b| b.trim_start_matches("http://").to_string())
            .collect();
        let task = tokio::spawn(async move {
            let mut turn = 0;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut backends = backends.clone();
                if rotate {
                    let n = backends.len();
                    backends.rotate_left(turn % n);
                    turn += 1;
                }
                tokio::spawn(async move {
                    for b in &backends {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(b).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { base, task }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A hub whose upstream, the sandbox, is reached through the fault proxy of `chaos_kit`, with
/// a scenario-87 pay (charged, too late to cancel) that lost the upstream's paymentId.
pub struct LostPaymentId {
    pub db: TestDb,
    pub up: Upstream,
    pub proxy: super::super::chaos_kit::Proxy,
    pub hub: TestHub,
    /// Terminal `T_A`'s signer.
    pub t: Signer,
}

impl LostPaymentId {
    /// Starts the hub (`hub_extra` in `[hub]`), pays `id` through it from `T_A` (answered U),
    /// forgets the paymentId that answer carried, as if it had been lost, and takes the
    /// upstream's `inquiryPayment` down, so the hub cannot learn the id yet.
    pub async fn start(hub_extra: &str, id: &str) -> LostPaymentId {
        let db = TestDb::new().await;
        let up = Upstream::start(Duration::from_secs(60)).await;
        let proxy = super::super::chaos_kit::Proxy::start(up.base_url()).await;
        register(&db, "T_A", "terminal_a").await;
        let mut hub = TestHub::new(&db, &format!("http://{}", proxy.addr), hub_extra, "");
        hub.start(None).await;
        let t = Signer::new("T_A", "terminal_a");
        let r = t
            .send(&hub.base, "pay", &pay_body(id, &code("87")), 0)
            .await;
        assert_eq!(r.status(), "U", "{:?}", r.body);
        let n = db
            .execute(&format!(
                "UPDATE hub_payments SET payment_id = NULL WHERE payment_request_id = '{id}'"
            ))
            .await;
        assert_eq!(n, 1);
        proxy
            .state
            .lock()
            .unwrap()
            .down
            .push("inquiryPayment".into());
        LostPaymentId {
            db,
            up,
            proxy,
            hub,
            t,
        }
    }

    /// The upstream's inquiries answer again.
    pub fn inquiries_back(&self) {
        self.proxy.state.lock().unwrap().down.clear();
    }
}

/// Waits until the hub's record of `id` is `want` (panics with the journal after `within`).
pub async fn wait_hub_state(db: &TestDb, id: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = hub_state(db, id).await;
        if s.as_deref() == Some(want) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{id}: hub state {s:?}, want {want}; journal:\n{}",
                journal(db, id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hub's journal of one payment, one line per event.
pub async fn journal(db: &TestDb, id: &str) -> String {
    let pool = db.pool().await;
    let c = pool.get().await.unwrap();
    c.query(
        "SELECT instance, kind, coalesce(from_state,''), coalesce(to_state,''), coalesce(result_code,''), \
         coalesce(detail,'') FROM hub_events WHERE payment_request_id = $1 ORDER BY id",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (0..6)
            .map(|i| r.get::<_, String>(i))
            .collect::<Vec<_>>()
            .join(" | ")
    })
    .collect::<Vec<_>>()
    .join("\n")
}

/// A TCP proxy in front of the upstream that can hold its answers: while closed, bytes
/// coming back from the upstream wait in the proxy (the upstream has answered, the hub has
/// not heard yet), so a test acts at that exact point and then lets them through.
pub struct Gate {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    open: tokio::sync::watch::Sender<bool>,
    held: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Listens on a free port in front of `target` (a base URL), open.
    pub async fn start(target: &str) -> Gate {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let target = target.trim_start_matches("http://").to_string();
        let (open, rx) = tokio::sync::watch::channel(true);
        let held = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = held.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(out) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut in_r, mut in_w) = inbound.into_split();
                let (mut out_r, mut out_w) = out.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut in_r, &mut out_w).await;
                });
                let mut rx = rx.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match out_r.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !*rx.borrow() {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if rx.wait_for(|open| *open).await.is_err() {
                                return;
                            }
                        }
                        if in_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Gate {
            base,
            open,
            held,
            task,
        }
    }

    /// Holds the upstream's answers from now on.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Lets held and later answers through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until an answer is held.
    pub async fn wait_held(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no upstream answer was held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Locks the hub's row of payment `id` in a transaction of its own, as a busy instance would,
/// until `release` completes; `locked` hears whether there was a row to lock. An error (the
/// session ended under it) ends it quietly, with `false` if nothing was locked yet.
pub async fn lock_row_until(
    pool: deadpool_postgres::Pool,
    id: String,
    locked: tokio::sync::oneshot::Sender<bool>,
    release: impl std::future::Future<Output = ()>,
) {
    let Ok(mut client) = pool.get().await else {
        let _ = locked.send(false);
        return;
    };
    let Ok(tx) = client.transaction().await else {
        let _ = locked.send(false);
        return;
    };
    let rows = tx
        .execute(
            "SELECT 1 FROM hub_payments WHERE payment_request_id = $1 FOR UPDATE",
            &[&id],
        )
        .await;
    let held = rows.is_ok_and(|n| n == 1);
    let _ = locked.send(held);
    if held {
        release.await;
    }
    let _ = tx.rollback().await;
}

/// Takes the payment's row lock (which must exist) as [`lock_row_until`] does, and keeps it
/// until the returned sender is used (or dropped).
pub async fn hold_row_lock(db: &TestDb, id: &str) -> tokio::sync::oneshot::Sender<()> {
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(lock_row_until(
        db.pool().await,
        id.to_string(),
        locked_tx,
        async {
            let _ = released.await;
        },
    ));
    assert!(
        locked.await.unwrap(),
        "the payment's row exists and is locked"
    );
    release
}

/// The outcomes the hub recorded for the payment's notifications, in name order.
pub async fn notifications_of(db: &TestDb, id: &str) -> Vec<String> {
    let pool = db.pool().await;
    let c = pool.get().await.unwrap();
    c.query(
        "SELECT outcome FROM hub_notifications WHERE payment_request_id = $1 ORDER BY outcome",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A hub (its upstream AMS, or mainland with `mainland`) listening for notifications on a port
/// of its own, with terminal `T_A` registered; the sandbox sends its own notifications there
/// when `upstream_notifies`. Returns the listener's base URL beside the rest.
pub async fn listening_hub(
    mainland: bool,
    upstream_notifies: bool,
) -> (TestDb, Upstream, TestHub, String) {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut hub = match mainland {
        true => TestHub::mainland(&db, &up.base_url(), "", &notify_section(port)),
        false => TestHub::new(&db, &up.base_url(), "", &notify_section(port)),
    };
    if upstream_notifies {
        // The upstream sends its notifications where the pay said (`paymentNotifyUrl`, or
        // the mainland form's `notify_url`).
        hub.notify_url(&format!("{url}/alipay/notify"));
    }
    hub.start(None).await;
    (db, up, hub, url)
}
