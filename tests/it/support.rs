//! Shared test helpers: the test keys in `tests/keys/`, private key files with mode 0600,
//! sample orders, and a payment whose cancel waits in a store's queue. Other test modules
//! may reuse these.

#![allow(
    dead_code,
    reason = "each test module uses a different subset of the helpers"
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, FixedOffset};
use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::money::{Amount, Currency};
use posd::gateway::sign::{PrivateKey, PublicKey};
use posd::gateway::PayOrder;

/// The payment code used by sample orders (ends in 56: the sandbox's plain success).
pub const CODE: &str = "281234567890123456";

/// `tests/keys/`.
pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// The text of a file in `tests/keys/`.
pub fn key_text(name: &str) -> String {
    let path = keys_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The merchant private key (signs requests).
pub fn merchant_key() -> Arc<PrivateKey> {
    Arc::new(
        PrivateKey::from_text(&key_text("merchant_private_pkcs8.pem"), "merchant")
            .expect("merchant test key"),
    )
}

/// The merchant public key (the gateway verifies requests with it).
pub fn merchant_public() -> PublicKey {
    PublicKey::from_text(&key_text("merchant_public.pem"), "merchant public")
        .expect("merchant public test key")
}

/// The gateway private key (the fake gateway signs its answers with it).
pub fn gateway_key() -> PrivateKey {
    PrivateKey::from_text(&key_text("gateway_private_pkcs8.pem"), "gateway")
        .expect("gateway test key")
}

/// The gateway public key (the client verifies answers with it).
pub fn gateway_public() -> PublicKey {
    PublicKey::from_text(&key_text("gateway_public.pem"), "gateway public")
        .expect("gateway public test key")
}

/// A copy of `tests/keys/<name>` in a fresh temp dir with `mode` (git does not keep file
/// modes, so the checked-in files cannot be loaded as private keys directly).
pub fn key_file_with_mode(name: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, key_text(name)).expect("write key copy");
    set_mode(&path, mode);
    (dir, path)
}

/// A 0600 copy of a private key file in a fresh temp dir (keep the `TempDir` alive).
pub fn private_key_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    key_file_with_mode(name, 0o600)
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A file's permission bits.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// CNY.
pub fn cny() -> Currency {
    Currency::from_code("CNY").expect("CNY is known")
}

/// A sample pay order: CNY 12.34 with [`CODE`], order `A-1001`, terminal time 10:15:30 +08:00.
pub fn pay_order(payment_request_id: &str) -> PayOrder {
    PayOrder {
        payment_request_id: payment_request_id.to_string(),
        amount: Amount::parse("12.34", cny()).expect("valid amount"),
        code: PaymentCode::parse(CODE, &CodeRules::default()).expect("valid code"),
        order_ref: Some("A-1001".into()),
        description: "Coffee".into(),
        terminal_time: terminal_time(),
        expires_at: None,
    }
}

/// 2026-11-21T10:15:30+08:00.
pub fn terminal_time() -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339("2026-11-21T10:15:30+08:00").expect("valid time")
}

/// Everything the library logs (all levels, all tests of this binary) from the first call of
/// [`capture_logs`] on. A process-wide subscriber, because a thread-scoped one misses events
/// whose callsites other test threads registered first.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    /// The captured text so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

/// Installs (once) a global subscriber for posd's own events (all levels; dependencies are
/// left out so the buffer stays small) writing into a shared buffer, and returns the buffer.
pub fn capture_logs() -> LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("posd=trace"))
            .with_writer(buf.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in tests");
        buf
    })
    .clone()
}

/// Writes a CANCEL_QUEUED payment `id` with its cancel queued (due at `next_attempt_at`, ms
/// since the epoch) into the store at `path`; returns the queue item's id.
pub fn queue_cancel(path: &Path, id: &str, next_attempt_at: i64) -> i64 {
    use posd::domain::machine::State;
    use posd::engine::queue::{Payload, PAYLOAD_VERSION};
    use posd::store::payments::{self, Change, NewPayment, NewQueueItem};
    use posd::store::queue::{self, ItemKind};

    let store = posd::store::Store::open(path).unwrap();
    let id = id.to_string();
    store
        .call_blocking(move |c| {
            let new = NewPayment {
                order_ref: None,
                amount: Amount::parse("12.34", cny()).unwrap(),
                state: State::Cancelling,
                code_masked: None,
                terminal_time: "2026-11-21T10:15:30+08:00".into(),
                pay_expires_at: None,
            };
            payments::create(c, &new, 1, |_| id.clone())?;
            let ch = Change {
                to: Some(State::CancelQueued),
                cause: "queued".into(),
                enqueue: Some(NewQueueItem {
                    kind: ItemKind::Cancel,
                    refund_request_id: None,
                    payload_version: PAYLOAD_VERSION,
                    payload: Payload::Cancel {
                        payment_request_id: id.clone(),
                    }
                    .encode(),
                    next_attempt_at,
                }),
                ..Default::default()
            };
            payments::apply(c, &id, State::Cancelling, &ch, 2)?.unwrap();
            Ok(queue::of_payment(c, &id)?[0].id)
        })
        .unwrap()
}
