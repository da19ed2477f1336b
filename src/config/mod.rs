//! `config.toml`: its raw serde shape (unknown keys rejected, documented defaults), here;
//! the rules it must meet in [`validate`]; the validated, typed [`Config`] everyone reads in
//! [`settings`]. Errors name the key and say what would be valid.

mod settings;
pub mod tz;
pub mod validate;

pub use settings::Config;
pub use tz::Tz;
pub use validate::{check_notify_url, DURATION_BOUNDS};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::domain::code::CodeRules;

/// A secret string from the config (API token, agent token): `Debug` prints `MASKED`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The clear value, for the one place that sends or compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// A duration written as a string ("3s", "250ms", "10m").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write e.g. \"3s\", \"250ms\" or \"10m\""
            ))
        })
    }
}

/// The config file as parsed, before validation (see [`Config`] for what posd reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[terminal]`
    pub terminal: TerminalConfig,
    /// `[gateway]`
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// `[flow]`
    #[serde(default)]
    pub flow: FlowConfig,
    /// `[codes]`
    #[serde(default)]
    pub codes: CodesConfig,
    /// `[store]`
    #[serde(default)]
    pub store: StoreConfig,
    /// `[api]`
    #[serde(default)]
    pub api: ApiConfig,
    /// `[notify]`
    #[serde(default)]
    pub notify: NotifyConfig,
    /// `[scanner]`
    #[serde(default)]
    pub scanner: crate::devices::config::ScannerConfig,
    /// `[printer]`
    #[serde(default)]
    pub printer: crate::devices::config::PrinterConfig,
    /// `[log]`
    #[serde(default)]
    pub log: LogConfig,
    /// `[sandbox]`
    #[serde(default)]
    pub sandbox: SandboxConfig,
}

/// `[terminal]`: who this terminal is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalConfig {
    /// Terminal id (letters and digits, ≤ 16, 1–6 digits): its digits are part of every
    /// `paymentRequestId`.
    pub id: String,
    /// `referenceMerchantId`.
    pub merchant_id: String,
    /// Merchant name, on the slip and in the pay request.
    pub merchant_name: String,
    /// Merchant MCC.
    pub merchant_mcc: String,
    /// `referenceStoreId`.
    pub store_id: String,
    /// Store name.
    pub store_name: String,
    /// Store MCC.
    pub store_mcc: String,
    /// Default currency for sales.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// IANA time zone for request ids, `storeTerminalRequestTime` and slips; system local if unset.
    #[serde(default)]
    pub timezone: Option<String>,
}

fn default_currency() -> String {
    "CNY".into()
}

/// Which gateway posd talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GatewayKind {
    /// The embedded sandbox on a loopback port.
    #[default]
    Sandbox,
    /// The real Alipay+ / Antom AMS gateway.
    AlipayPlus,
    /// The Alipay mainland open platform (`alipay.trade.*`, face-to-face bar code).
    AlipayCn,
}

/// `[gateway] dialect`: which wire the embedded sandbox speaks with `kind = "sandbox"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// Alipay+ AMS.
    #[default]
    Ams,
    /// The mainland `alipay.trade.*` API.
    AlipayCn,
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `sandbox` or `alipay_plus`.
    #[serde(default)]
    pub kind: GatewayKind,
    /// e.g. `https://open-sea-global.alipay.com`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The client id (`SANDBOX_…` ids use the `/ams/sandbox/api/` path).
    #[serde(default)]
    pub client_id: Option<String>,
    /// `keyVersion` in the signature header.
    #[serde(default = "default_key_version")]
    pub key_version: String,
    /// Path of the merchant private key (mode 0600).
    #[serde(default)]
    pub merchant_private_key: Option<PathBuf>,
    /// Path of the gateway public key.
    #[serde(default)]
    pub gateway_public_key: Option<PathBuf>,
    /// `paymentNotifyUrl`.
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Allows `http://` for a loopback `base_url` (test gateways).
    #[serde(default)]
    pub insecure_http: bool,
    /// Extra trusted root certificates (PEM), e.g. a hub's or a private gateway's CA; both
    /// dialects' clients trust them beside the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// ISV mode: sent as `Agent-Token`.
    #[serde(default)]
    pub agent_token: Option<Secret>,
    /// Connect timeout for every call.
    #[serde(default = "d_connect")]
    pub connect_timeout: Dur,
    /// With `kind = "sandbox"`: the dialect the embedded sandbox speaks.
    #[serde(default)]
    pub dialect: Dialect,
    /// Mainland: the application's `app_id`.
    #[serde(default)]
    pub app_id: Option<String>,
    /// Mainland: path of the *Alipay* public key (支付宝公钥), not the app's own public key.
    #[serde(default)]
    pub alipay_public_key: Option<PathBuf>,
    /// Mainland: `RSA2` only (RSA/SHA1 is refused).
    #[serde(default = "d_sign_type")]
    pub sign_type: String,
    /// Mainland ISV mode: `app_auth_token`.
    #[serde(default)]
    pub app_auth_token: Option<Secret>,
}

fn d_sign_type() -> String {
    "RSA2".into()
}

fn default_key_version() -> String {
    "1".into()
}
fn d_connect() -> Dur {
    Dur(Duration::from_secs(3))
}

impl Default for GatewayConfig {
    fn default() -> Self {
        toml::from_str("").expect("gateway defaults parse")
    }
}

/// `[flow]`: the best-practice timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Deadline of the pay call.
    #[serde(default = "d_5s")]
    pub pay_timeout: Dur,
    /// Pause between inquiries.
    #[serde(default = "d_3s")]
    pub inquiry_interval: Dur,
    /// Deadline of each inquiry.
    #[serde(default = "d_3s")]
    pub inquiry_timeout: Dur,
    /// How many inquiries before cancelling (10..=20).
    #[serde(default = "d_inquiry_max")]
    pub inquiry_max: u32,
    /// Deadline of each cancel / refund call.
    #[serde(default = "d_3s")]
    pub cancel_timeout: Dur,
    /// How long to resend an unanswered cancel / refund before queueing it.
    #[serde(default = "d_60s")]
    pub cancel_retry_window: Dur,
    /// Shortest pause between resends.
    #[serde(default = "d_5s")]
    pub cancel_retry_min: Dur,
    /// Longest pause between resends.
    #[serde(default = "d_10s")]
    pub cancel_retry_max: Dur,
    /// First backoff of a queued reversal.
    #[serde(default = "d_30s")]
    pub queue_backoff_initial: Dur,
    /// Backoff cap of a queued reversal.
    #[serde(default = "d_10m")]
    pub queue_backoff_max: Dur,
    /// Queued reversals leased and settled together in one replay batch (1..=1000).
    #[serde(default = "d_queue_batch")]
    pub queue_batch: u32,
    /// Queued reversals in flight at once while replaying (1..=256).
    #[serde(default = "d_queue_concurrency")]
    pub queue_concurrency: u32,
    /// Sent with every pay as `paymentExpiryTime` (request time plus this): the gateway does
    /// not process a pay that reaches it later. Until then (plus the margin) a gateway with no
    /// record of the payment may still receive it.
    #[serde(default = "d_3m")]
    pub payment_expiry: Dur,
    /// Added to the pay's expiry before concluding that a payment the gateway does not know
    /// was never charged (the gateway's clock may run behind ours).
    #[serde(default = "d_30s")]
    pub payment_expiry_margin: Dur,
}

fn d_3m() -> Dur {
    Dur(Duration::from_secs(180))
}

/// The shortest and longest `flow.payment_expiry` accepted.
pub const PAYMENT_EXPIRY_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 60));

/// The longest `flow.payment_expiry_margin` accepted.
pub const PAYMENT_EXPIRY_MARGIN_MAX: Duration = Duration::from_secs(10 * 60);

fn d_3s() -> Dur {
    Dur(Duration::from_secs(3))
}
fn d_5s() -> Dur {
    Dur(Duration::from_secs(5))
}
fn d_10s() -> Dur {
    Dur(Duration::from_secs(10))
}
fn d_30s() -> Dur {
    Dur(Duration::from_secs(30))
}
fn d_60s() -> Dur {
    Dur(Duration::from_secs(60))
}
fn d_90s() -> Dur {
    Dur(Duration::from_secs(90))
}
fn d_10m() -> Dur {
    Dur(Duration::from_secs(600))
}
fn d_inquiry_max() -> u32 {
    10
}
fn d_queue_batch() -> u32 {
    64
}
fn d_queue_concurrency() -> u32 {
    16
}

impl Default for FlowConfig {
    fn default() -> Self {
        toml::from_str("").expect("flow defaults parse")
    }
}

/// `[codes]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodesConfig {
    /// Fewest digits (default 17; 16 for the mainland dialect).
    #[serde(default)]
    pub min_len: Option<usize>,
    /// Most digits (default 32; 24 for the mainland dialect).
    #[serde(default)]
    pub max_len: Option<usize>,
    /// Allowed prefixes.
    #[serde(default = "d_prefixes")]
    pub prefixes: Vec<String>,
}

fn d_min_len(mainland: bool) -> usize {
    if mainland {
        16
    } else {
        17
    }
}
fn d_max_len(mainland: bool) -> usize {
    if mainland {
        24
    } else {
        32
    }
}
pub(crate) fn d_prefixes() -> Vec<String> {
    CodeRules::default().prefixes
}

impl Default for CodesConfig {
    fn default() -> Self {
        toml::from_str("").expect("codes defaults parse")
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file; default `var/posd.sqlite3`, or `$STATE_DIRECTORY/posd.sqlite3`.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address of the local HTTP API.
    #[serde(default = "d_api_listen")]
    pub listen: SocketAddr,
    /// Optional bearer token; required when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Longest wait for a request's headers (also how long an idle connection stays open).
    #[serde(default = "d_10s")]
    pub header_timeout: Dur,
    /// Longest wait for a request's whole body.
    #[serde(default = "d_10s")]
    pub body_timeout: Dur,
    /// Connections one peer address may hold open at once.
    #[serde(default = "d_api_per_peer")]
    pub max_connections_per_peer: usize,
}

fn d_api_per_peer() -> usize {
    256
}
fn d_notify_per_peer() -> usize {
    32
}

fn d_api_listen() -> SocketAddr {
    "127.0.0.1:8417".parse().expect("valid default address")
}

impl Default for ApiConfig {
    fn default() -> Self {
        toml::from_str("").expect("api defaults parse")
    }
}

/// `[notify]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Whether to listen for notifyPayment.
    #[serde(default)]
    pub enabled: bool,
    /// Listen address.
    #[serde(default = "d_notify_listen")]
    pub listen: SocketAddr,
    /// Path the gateway posts to.
    #[serde(default = "d_notify_path")]
    pub path: String,
    /// Longest wait for a notification's headers (and an idle connection).
    #[serde(default = "d_10s")]
    pub header_timeout: Dur,
    /// Longest wait for a notification's whole body.
    #[serde(default = "d_10s")]
    pub body_timeout: Dur,
    /// Connections one peer address may hold open at once.
    #[serde(default = "d_notify_per_peer")]
    pub max_connections_per_peer: usize,
}

fn d_notify_listen() -> SocketAddr {
    "0.0.0.0:8418".parse().expect("valid default address")
}
fn d_notify_path() -> String {
    "/alipay/notify".into()
}

impl Default for NotifyConfig {
    fn default() -> Self {
        toml::from_str("").expect("notify defaults parse")
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace` or an EnvFilter directive.
    #[serde(default = "d_level")]
    pub level: String,
    /// `text`, `json` or `journald`.
    #[serde(default = "d_format")]
    pub format: String,
}

fn d_level() -> String {
    "info".into()
}
fn d_format() -> String {
    "text".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        toml::from_str("").expect("log defaults parse")
    }
}

/// `[sandbox]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// How long cancels go unanswered after the pay in scenario 86.
    #[serde(default = "d_90s")]
    pub cancel_outage: Dur,
    /// The sandbox's SQLite file; default next to the store.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        toml::from_str("").expect("sandbox defaults parse")
    }
}

/// A config that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}; pass --config PATH or set POSD_CONFIG")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// `$STATE_DIRECTORY` (systemd's `StateDirectory=`), first entry.
pub fn state_directory() -> Option<PathBuf> {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .filter(|p| !p.as_os_str().is_empty())
}

/// The `[gateway]` rules of the mainland dialect.
fn validate_mainland(g: &GatewayConfig) -> Result<(), (&'static str, String)> {
    if g.sign_type != "RSA2" {
        return Err((
            "gateway.sign_type",
            format!(
                "{:?} is refused: only \"RSA2\" (SHA256withRSA); RSA/SHA1 is not safe, switch the app to RSA2 in the open platform console",
                g.sign_type
            ),
        ));
    }
    if g.dialect == Dialect::AlipayCn && g.kind == GatewayKind::AlipayPlus {
        return Err((
            "gateway.dialect",
            "is for kind = \"sandbox\" only; use kind = \"alipay_cn\" for the mainland gateway"
                .into(),
        ));
    }
    if g.kind != GatewayKind::AlipayCn {
        return Ok(());
    }
    let url = g.base_url.as_deref().unwrap_or(MAINLAND_GATEWAY_URL);
    check_base_url(url, g.insecure_http).map_err(|m| ("gateway.base_url", m))?;
    match g.app_id.as_deref() {
        Some(id) if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit()) => {}
        Some(id) => {
            return Err((
                "gateway.app_id",
                format!("{id:?} is not an app_id (digits, e.g. \"2021000000000001\")"),
            ))
        }
        None => {
            return Err((
                "gateway.app_id",
                "required when gateway.kind = \"alipay_cn\" (the APPID of the open platform application)".into(),
            ))
        }
    }
    if g.merchant_private_key.is_none() {
        return Err((
            "gateway.merchant_private_key",
            "required: path of the application private key (应用私钥; PKCS#1, PKCS#8 or bare Base64)".into(),
        ));
    }
    if g.alipay_public_key.is_none() {
        return Err((
            "gateway.alipay_public_key",
            "required: path of the Alipay public key (支付宝公钥) shown after uploading the app public key".into(),
        ));
    }
    Ok(())
}

/// Whether `[gateway]` makes posd speak the mainland dialect: `kind = "alipay_cn"`, or the
/// sandbox with `dialect = "alipay_cn"`.
fn is_mainland(g: &GatewayConfig) -> bool {
    match g.kind {
        GatewayKind::AlipayCn => true,
        GatewayKind::Sandbox => g.dialect == Dialect::AlipayCn,
        GatewayKind::AlipayPlus => false,
    }
}

/// `[codes] min_len` / `max_len`, with the dialect's defaults (mainland 16–24, AMS 17–32).
fn code_lengths(c: &CodesConfig, mainland: bool) -> (usize, usize) {
    (
        c.min_len.unwrap_or(d_min_len(mainland)),
        c.max_len.unwrap_or(d_max_len(mainland)),
    )
}

/// The mainland production gateway, `[gateway] base_url`'s default for `kind = "alipay_cn"`.
pub const MAINLAND_GATEWAY_URL: &str = "https://openapi.alipay.com/gateway.do";

/// Checks a gateway base URL: `https://`, or `http://` to a loopback host with `insecure_http`.
pub fn check_base_url(url: &str, insecure_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Ipv4(a)) => a.is_loopback(),
                Some(url::Host::Ipv6(a)) => a.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            if !insecure_http {
                Err(format!(
                    "{url:?} is plain http: the real gateway must be https (set gateway.insecure_http = true only for a loopback test gateway)"
                ))
            } else if !loopback {
                Err(format!(
                    "{url:?} is plain http to a non-loopback host: only 127.0.0.1, ::1 or localhost may use http"
                ))
            } else {
                Ok(())
            }
        }
        other => Err(format!(
            "{url:?}: scheme {other:?} is not supported, use https"
        )),
    }
}

/// Finds the config file: `--config`/`POSD_CONFIG`, else `./config.toml`, else
/// `$CONFIGURATION_DIRECTORY/config.toml`, else `/etc/posd/config.toml`.
pub fn find_config(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let local = PathBuf::from("config.toml");
    if local.exists() {
        return local;
    }
    if let Some(dir) = std::env::var_os("CONFIGURATION_DIRECTORY") {
        let p = PathBuf::from(dir).join("config.toml");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("/etc/posd/config.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[terminal]
id = "T0001"
merchant_id = "M0001"
merchant_name = "Demo Cafe"
merchant_mcc = "5812"
store_id = "S01"
store_name = "Demo Cafe Central"
store_mcc = "5812"
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("{MIN}\n{extra}"),
            Path::new("t.toml"),
            Path::new("/x"),
        )
    }

    #[test]
    fn repository_config_is_valid() {
        let text = include_str!("../../config.toml");
        let cfg = Config::parse(text, Path::new("config.toml"), Path::new(".")).unwrap();
        assert_eq!(cfg.gateway.kind, GatewayKind::Sandbox);
        assert_eq!(cfg.scanner.kind, crate::devices::config::ScannerKind::Stdin);
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse("").unwrap();
        assert_eq!(c.flow.pay_timeout.0, Duration::from_secs(5));
        assert_eq!(c.flow.inquiry_interval.0, Duration::from_secs(3));
        assert_eq!(c.flow.inquiry_max, 10);
        assert_eq!(c.flow.cancel_retry_window.0, Duration::from_secs(60));
        assert_eq!(c.flow.queue_backoff_max.0, Duration::from_secs(600));
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8417");
        assert_eq!(c.notify.path, "/alipay/notify");
        assert_eq!(c.currency().code(), "CNY");
        assert_eq!(c.sandbox.cancel_outage.0, Duration::from_secs(90));
        assert_eq!(c.resolve(Path::new("var/a")), PathBuf::from("/x/var/a"));
    }

    #[test]
    fn the_replay_batch_and_concurrency_default_and_are_bounded() {
        let c = parse("").unwrap();
        assert_eq!((c.flow.queue_batch, c.flow.queue_concurrency), (64, 16));
        let c = parse("[flow]\nqueue_batch = 1\nqueue_concurrency = 256").unwrap();
        assert_eq!((c.flow.queue_batch, c.flow.queue_concurrency), (1, 256));
        for (text, key, fix) in [
            ("queue_batch = 0", "flow.queue_batch", "1..=1000"),
            ("queue_batch = 1001", "flow.queue_batch", "1..=1000"),
            ("queue_concurrency = 0", "flow.queue_concurrency", "1..=256"),
            (
                "queue_concurrency = 257",
                "flow.queue_concurrency",
                "1..=256",
            ),
        ] {
            let e = parse(&format!("[flow]\n{text}")).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(fix), "{text}: {e}");
        }
    }

    #[test]
    fn short_timings_are_accepted() {
        let c = parse("[flow]\ninquiry_interval = \"20ms\"\npay_timeout = \"250ms\"").unwrap();
        assert_eq!(c.flow.inquiry_interval.0, Duration::from_millis(20));
    }

    #[test]
    fn payment_expiry_defaults_to_three_minutes_and_is_bounded() {
        let c = parse("").unwrap();
        assert_eq!(c.flow.payment_expiry.0, Duration::from_secs(180));
        assert_eq!(c.flow.payment_expiry_margin.0, Duration::from_secs(30));
        let c = parse("[flow]\npay_timeout = \"300ms\"\npayment_expiry = \"1s\"\npayment_expiry_margin = \"0s\"")
            .unwrap();
        assert_eq!(c.flow.payment_expiry.0, Duration::from_secs(1));
        for (text, key) in [
            ("payment_expiry = \"500ms\"", "flow.payment_expiry"),
            ("payment_expiry = \"31m\"", "flow.payment_expiry"),
            ("payment_expiry = \"3s\"", "flow.payment_expiry"),
            (
                "payment_expiry_margin = \"11m\"",
                "flow.payment_expiry_margin",
            ),
        ] {
            let e = parse(&format!("[flow]\n{text}")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = parse("[flow]\ninquiry_max = 5").unwrap_err().to_string();
        assert!(
            e.contains("flow.inquiry_max") && e.contains("10..=20"),
            "{e}"
        );
        let e = parse("[flow]\npay_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pay_timeout") && e.contains("not a duration"),
            "{e}"
        );
        let e = parse("[flow]\npay_timeout_s = 5").unwrap_err().to_string();
        assert!(
            e.contains("unknown field") && e.contains("pay_timeout_s"),
            "{e}"
        );
        let e = parse("[bogus]\nx = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[gateway]\nkind = \"alipay_plus\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway.base_url"), "{e}");
        let e = parse(
            "[gateway]\nkind = \"alipay_plus\"\nbase_url = \"http://example.com\"\nclient_id=\"x\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("https"), "{e}");
        let e = parse("[terminal.extra]").unwrap_err().to_string();
        assert!(e.contains("extra"), "{e}");
        let e = Config::parse(&MIN.replace("T0001", "T-1"), Path::new("t"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("terminal.id"), "{e}");
        let e = parse("[scanner]\nkind = \"usb\"").unwrap_err().to_string();
        assert!(e.contains("usb") && e.contains("serial"), "{e}");
        let e = parse("[printer]\nprofile = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn base_url_rules() {
        assert!(check_base_url("https://open-sea-global.alipay.com", false).is_ok());
        assert!(check_base_url("http://127.0.0.1:9000", false).is_err());
        assert!(check_base_url("http://127.0.0.1:9000", true).is_ok());
        assert!(check_base_url("http://[::1]:9000", true).is_ok());
        assert!(check_base_url("http://localhost:9000", true).is_ok());
        assert!(check_base_url("http://10.0.0.1:9000", true).is_err());
        assert!(check_base_url("ftp://x", true).is_err());
    }

    /// The error for `extra`, which must be refused and name `key`.
    fn refused(extra: &str, key: &str) -> String {
        let e = parse(extra)
            .err()
            .unwrap_or_else(|| panic!("{extra:?} must be refused"))
            .to_string();
        assert!(e.contains(key), "{extra:?}: {e}");
        e
    }

    #[test]
    fn a_pay_timeout_of_a_nanosecond_is_refused() {
        let e = refused("[flow]\npay_timeout = \"1ns\"", "flow.pay_timeout");
        assert!(e.contains("50ms") && e.contains("1m"), "{e}");
    }

    #[test]
    fn a_pay_timeout_of_a_thousand_years_is_refused() {
        refused("[flow]\npay_timeout = \"1000y\"", "flow.pay_timeout");
    }

    #[test]
    fn an_inquiry_interval_of_a_day_is_refused() {
        refused(
            "[flow]\ninquiry_interval = \"1day\"",
            "flow.inquiry_interval",
        );
    }

    #[test]
    fn every_duration_key_has_bounds_and_the_defaults_and_test_timings_fit() {
        // Defaults fit (parse("") validates them) …
        parse("").unwrap();
        // … and so do the short timings the tests run the flow with.
        parse(
            "[flow]\npay_timeout = \"50ms\"\ninquiry_interval = \"10ms\"\ninquiry_timeout = \"50ms\"\n\
             cancel_timeout = \"50ms\"\ncancel_retry_window = \"100ms\"\ncancel_retry_min = \"10ms\"\n\
             cancel_retry_max = \"50ms\"\nqueue_backoff_initial = \"100ms\"\nqueue_backoff_max = \"400ms\"\n\
             [api]\nheader_timeout = \"50ms\"\nbody_timeout = \"50ms\"\n[sandbox]\ncancel_outage = \"0s\"",
        )
        .unwrap();
        for (key, lo, hi) in DURATION_BOUNDS {
            assert!(lo <= hi, "{key}");
            let (section, name) = key.split_once('.').unwrap();
            let below = format!(
                "[{section}]\n{name} = \"{}ms\"",
                lo.as_millis().saturating_sub(1)
            );
            if !lo.is_zero() {
                refused(&below, key);
            }
            let above = format!("[{section}]\n{name} = \"{}ms\"", hi.as_millis() + 1);
            refused(&above, key);
        }
    }

    #[test]
    fn a_network_listen_without_a_token_is_refused() {
        let e = refused("[api]\nlisten = \"0.0.0.0:8417\"", "api.listen");
        assert!(e.contains("api.token"), "{e}");
        parse("[api]\nlisten = \"0.0.0.0:8417\"\ntoken = \"0123456789abcdef\"").unwrap();
        parse("[api]\nlisten = \"[::1]:8417\"").unwrap();
    }

    #[test]
    fn an_empty_token_is_refused() {
        refused("[api]\ntoken = \"\"", "api.token");
        refused("[api]\ntoken = \"has space\"", "api.token");
    }

    #[test]
    fn an_mcc_that_is_not_four_digits_is_refused() {
        let text = MIN.replace("merchant_mcc = \"5812\"", "merchant_mcc = \"ABCD\"");
        let e = Config::parse(&text, Path::new("t"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("terminal.merchant_mcc") && e.contains("4-digit"),
            "{e}"
        );
        let text = MIN.replace("store_mcc = \"5812\"", "store_mcc = \"58120\"");
        let e = Config::parse(&text, Path::new("t"), Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("terminal.store_mcc"), "{e}");
    }

    #[test]
    fn an_unknown_log_level_is_refused() {
        let e = refused("[log]\nlevel = \"loud\"", "log.level");
        assert!(e.contains("debug"), "{e}");
        refused("[log]\nlevel = \"posd=loud\"", "log.level");
        parse("[log]\nlevel = \"info,posd=debug\"").unwrap();
        parse("[log]\nlevel = \"WARN\"").unwrap();
    }

    #[test]
    fn a_notify_url_that_is_not_an_https_url_is_refused() {
        refused(
            "[gateway]\nnotify_url = \"not a url\"",
            "gateway.notify_url",
        );
        refused(
            "[gateway]\nnotify_url = \"http://pos.example.com/n\"",
            "gateway.notify_url",
        );
        refused(
            "[gateway]\nnotify_url = \"ftp://pos.example.com/n\"",
            "gateway.notify_url",
        );
        parse("[gateway]\nnotify_url = \"https://pos.example.com/alipay/notify\"").unwrap();
    }

    #[test]
    fn empty_code_prefixes_are_refused() {
        let e = refused("[codes]\nprefixes = []", "codes.prefixes");
        assert!(e.contains("at least one"), "{e}");
    }

    #[test]
    fn a_notify_listener_on_the_api_address_is_refused() {
        let e = refused(
            "[api]\nlisten = \"127.0.0.1:8417\"\n[notify]\nenabled = true\nlisten = \"127.0.0.1:8417\"",
            "notify.listen",
        );
        assert!(e.contains("own port"), "{e}");
        // A wildcard on the same port collides too.
        refused(
            "[notify]\nenabled = true\nlisten = \"0.0.0.0:8417\"",
            "notify.listen",
        );
        parse("[notify]\nenabled = true\nlisten = \"0.0.0.0:8418\"").unwrap();
    }

    #[test]
    fn a_per_peer_connection_limit_of_zero_is_refused() {
        refused(
            "[api]\nmax_connections_per_peer = 0",
            "api.max_connections_per_peer",
        );
        refused(
            "[notify]\nmax_connections_per_peer = 0",
            "notify.max_connections_per_peer",
        );
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let c = parse("[api]\ntoken = \"hunter2\"").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.api.token.unwrap().expose(), "hunter2");
    }
}
