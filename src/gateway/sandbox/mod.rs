//! The sandbox gateway: a local AMS-compatible HTTP server that behaves like the real gateway,
//! including its slow and broken moments, so the daemon runs with no gateway account.
//!
//! The last two digits of the payment code choose the scenario (docs/design.md "Sandbox gateway";
//! the rules live in [`scenario`]). Requests are verified with the merchant's public key and
//! answers signed with the sandbox's own key, so the real client's signing, HTTP and
//! verification are exercised exactly as in production. Payments live in the sandbox's own
//! SQLite file ([`store`]) and survive restarts.
//!
//! It speaks both dialects over the same rules and store: AMS on `/ams/…` ([`server`],
//! [`ops`]) and the mainland `alipay.trade.*` on `/gateway.do` ([`mainland`]). Sticky,
//! time-boxed scenario overrides and delayed approvals ([`overrides`], `/sandbox/override`)
//! apply to both.

pub mod mainland;
pub mod notify;
pub mod ops;
pub mod overrides;
pub mod scenario;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::sign::{self, PrivateKey, PublicKey};
use ops::Op;

/// Scenario 86's default cancel outage (`[sandbox] cancel_outage`).
pub const DEFAULT_CANCEL_OUTAGE: Duration = Duration::from_secs(90);
/// How long "no answer" holds a request by default; the client's own deadline cuts it.
pub const DEFAULT_NO_ANSWER_STALL: Duration = Duration::from_secs(3600);
/// File name of the sandbox's private key in its key directory.
pub const GATEWAY_PRIVATE_KEY_FILE: &str = "sandbox_gateway_private.pem";
/// File name of the sandbox's public key (what the client verifies answers with).
pub const GATEWAY_PUBLIC_KEY_FILE: &str = "sandbox_gateway_public.pem";

/// How to run a sandbox.
#[derive(Debug)]
pub struct SandboxSettings {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The sandbox's SQLite file.
    pub db_path: PathBuf,
    /// Signs answers and notifications.
    pub gateway_key: PrivateKey,
    /// Verifies requests.
    pub merchant_key: PublicKey,
    /// Scenario 86: cancels go unanswered this long after the pay.
    pub cancel_outage: Duration,
    /// How long "no answer" holds a request open.
    pub no_answer_stall: Duration,
}

impl SandboxSettings {
    /// Settings with the default outage and stall.
    pub fn new(
        listen: SocketAddr,
        db_path: PathBuf,
        gateway_key: PrivateKey,
        merchant_key: PublicKey,
    ) -> Self {
        SandboxSettings {
            listen,
            db_path,
            gateway_key,
            merchant_key,
            cancel_outage: DEFAULT_CANCEL_OUTAGE,
            no_answer_stall: DEFAULT_NO_ANSWER_STALL,
        }
    }
}

/// Live request counters (every request that reached an operation, signed or not).
#[derive(Debug, Default)]
pub struct Counters {
    pay: AtomicU64,
    inquiry_payment: AtomicU64,
    cancel: AtomicU64,
    refund: AtomicU64,
    inquiry_refund: AtomicU64,
    rejected: AtomicU64,
    notifications: AtomicU64,
    notifications_acked: AtomicU64,
}

impl Counters {
    fn count(&self, op: Op) {
        let c = match op {
            Op::Pay => &self.pay,
            Op::InquiryPayment => &self.inquiry_payment,
            Op::Cancel => &self.cancel,
            Op::Refund => &self.refund,
            Op::InquiryRefund => &self.inquiry_refund,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RequestCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            pay: g(&self.pay),
            inquiry_payment: g(&self.inquiry_payment),
            cancel: g(&self.cancel),
            refund: g(&self.refund),
            inquiry_refund: g(&self.inquiry_refund),
            rejected: g(&self.rejected),
            notifications: g(&self.notifications),
            notifications_acked: g(&self.notifications_acked),
        }
    }
}

/// How many requests of each kind arrived since the sandbox started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `payments/pay` requests.
    pub pay: u64,
    /// `payments/inquiryPayment` requests.
    pub inquiry_payment: u64,
    /// `payments/cancel` requests.
    pub cancel: u64,
    /// `payments/refund` requests.
    pub refund: u64,
    /// `payments/inquiryRefund` requests.
    pub inquiry_refund: u64,
    /// Requests refused for a missing or wrong signature (also counted above).
    pub rejected: u64,
    /// notifyPayment sends (each retry counts).
    pub notifications: u64,
    /// Notifications the merchant acknowledged.
    pub notifications_acked: u64,
}

/// The sandbox gateway.
pub struct Sandbox;

impl Sandbox {
    /// Opens the database, binds `listen` and serves on a tokio task until shut down.
    pub async fn start(settings: SandboxSettings) -> anyhow::Result<SandboxHandle> {
        let db_path = settings.db_path.clone();
        let store = tokio::task::spawn_blocking(move || store::Store::open(&db_path))
            .await
            .context("opening the sandbox database panicked")?
            .with_context(|| {
                format!(
                    "cannot open the sandbox database {}",
                    settings.db_path.display()
                )
            })?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("sandbox cannot listen on {}", settings.listen))?;
        let addr = listener
            .local_addr()
            .context("sandbox listener has no address")?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("cannot build the sandbox's notification client")?;
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let counters = Arc::new(Counters::default());
        let app = Arc::new(server::App {
            store: Arc::new(store),
            gateway_key: Arc::new(settings.gateway_key),
            merchant_key: settings.merchant_key,
            cancel_outage: settings.cancel_outage,
            no_answer_stall: settings.no_answer_stall,
            counters: counters.clone(),
            token: token.clone(),
            tracker: tracker.clone(),
            http,
        });
        let shutdown = token.clone();
        let served = axum::serve(listener, server::router(app))
            .with_graceful_shutdown(shutdown.cancelled_owned());
        tracker.spawn(async move {
            if let Err(e) = served.await {
                tracing::error!(error = %e, "sandbox gateway stopped");
            }
        });
        tracing::info!(%addr, db = %settings.db_path.display(), "sandbox gateway listening");
        Ok(SandboxHandle {
            addr,
            token,
            tracker,
            counters,
        })
    }
}

/// A running sandbox. Dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct SandboxHandle {
    addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
    counters: Arc<Counters>,
}

impl SandboxHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` (no trailing slash); a client appends `/ams/...`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request counters now.
    pub fn counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// Stops accepting, ends held requests and pending notifications, waits for all of it.
    pub async fn shutdown(self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        tracing::info!(addr = %self.addr, "sandbox gateway stopped");
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Loads the sandbox's own key pair from `dir`, generating it on first use (private key
/// PKCS#8 PEM with mode 0600, public key SPKI PEM). Returns the private key (signs answers)
/// and its public key (the client verifies answers with it).
pub fn load_or_create_keys(dir: &Path) -> anyhow::Result<(PrivateKey, PublicKey)> {
    let private_path = dir.join(GATEWAY_PRIVATE_KEY_FILE);
    let public_path = dir.join(GATEWAY_PUBLIC_KEY_FILE);
    let key = if private_path.exists() {
        PrivateKey::load(&private_path)?
    } else {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create key directory {}", dir.display()))?;
        let (key, pem) = PrivateKey::generate()?;
        sign::write_new(&private_path, pem.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", private_path.display()))?;
        tracing::info!(path = %private_path.display(), "sandbox gateway key generated");
        key
    };
    let public = key.public_key().clone();
    if !public_path.exists() {
        sign::write_new(&public_path, public.to_pem().as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", public_path.display()))?;
    }
    Ok((key, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let (k1, p1) = load_or_create_keys(&keys).unwrap();
        let (_k2, p2) = load_or_create_keys(&keys).unwrap();
        assert_eq!(p1.to_base64(), p2.to_base64());
        let sig = k1.sign(b"x");
        assert!(p2.verify(b"x", &sig));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys.join(GATEWAY_PRIVATE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let on_disk = PublicKey::load(&keys.join(GATEWAY_PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(on_disk.to_base64(), p1.to_base64());
    }
}
