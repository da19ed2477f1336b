//! `hub.toml`: the hub's own config schema (unknown keys rejected, durations as strings) and
//! its validation, above all the timeout rule `active_cancel_after > terminal_decision_time`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::validate::{ms, secs, within, Bounds};
use crate::config::{check_base_url, Dur, Secret};

/// The whole `hub.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// `[hub]`
    pub hub: HubSection,
    /// `[database]`
    #[serde(default)]
    pub database: DatabaseSection,
    /// `[upstream]`
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// `[flow]`
    #[serde(default)]
    pub flow: HubFlowSection,
    /// `[notify]`
    #[serde(default)]
    pub notify: HubNotifySection,
    /// `[api]`
    #[serde(default)]
    pub api: HubApiSection,
    /// `[log]`
    #[serde(default)]
    pub log: crate::config::LogConfig,
}

/// `[hub]`: the terminal-facing listener and the hub's own rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// Where terminals connect.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP, allowed only on a loopback listen address.
    #[serde(default)]
    pub insecure_http: bool,
    /// Signs the hub's answers to terminals (mode 0600).
    pub hub_private_key: PathBuf,
    /// `keyVersion` of the hub's answer signatures.
    #[serde(default = "default_key_version")]
    pub key_version: String,
    /// How far a request's `Request-Time` may be from the hub's clock.
    #[serde(default = "default_replay_window")]
    pub replay_window: Dur,
    /// How long after a pay arrived the hub cancels it on its own (if not approved and no
    /// cancel came from the terminal).
    #[serde(default = "default_active_cancel_after")]
    pub active_cancel_after: Dur,
    /// The terminals' own decision time (pay timeout + inquiries).
    #[serde(default = "default_terminal_decision_time")]
    pub terminal_decision_time: Dur,
    /// The seed's "switch": answer a terminal's cancel `S` once it is durably queued.
    #[serde(default)]
    pub reversal_advice: bool,
    /// This instance's name in leases and the journal [hostname + pid].
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `postgres://…`.
    #[serde(default = "default_db_url")]
    pub url: String,
    /// Connections per instance.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection {
            url: default_db_url(),
            pool_size: default_pool_size(),
        }
    }
}

/// Where the hub's upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// The sandbox gateway (`posd sandbox`) at `base_url`.
    #[default]
    Sandbox,
    /// The real Alipay+ gateway.
    AlipayPlus,
    /// The Alipay mainland open API (`alipay.trade.*`): terminals keep speaking AMS to the
    /// hub, which converts each request (the real gateway, or the sandbox's `/gateway.do`).
    AlipayCn,
}

/// `[upstream]`: the gateway the hub forwards to, with the merchant key only the hub holds.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `sandbox`, `alipay_plus` or `alipay_cn`.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// The gateway's base URL (`alipay_cn`: the full gateway URL, default
    /// `https://openapi.alipay.com/gateway.do`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The merchant's client id at the gateway (AMS upstreams).
    #[serde(default)]
    pub client_id: Option<String>,
    /// `alipay_cn`: the open platform application's `app_id`.
    #[serde(default)]
    pub app_id: Option<String>,
    /// `alipay_cn` ISV mode: `app_auth_token`.
    #[serde(default)]
    pub app_auth_token: Option<Secret>,
    /// `keyVersion` of the merchant signature.
    #[serde(default)]
    pub key_version: Option<String>,
    /// The merchant private key (mode 0600).
    #[serde(default)]
    pub merchant_private_key: Option<PathBuf>,
    /// The gateway's public key (`alipay_cn`: the Alipay public key, 支付宝公钥).
    #[serde(default)]
    pub gateway_public_key: Option<PathBuf>,
    /// `paymentNotifyUrl` put into every forwarded pay (the hub's notify listener).
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Allows `http://` to a loopback upstream.
    #[serde(default)]
    pub insecure_http: bool,
    /// Extra trusted root for the upstream's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Deadline of a forwarded pay.
    #[serde(default)]
    pub pay_timeout: Option<Dur>,
    /// Deadline of every other call.
    #[serde(default)]
    pub call_timeout: Option<Dur>,
}

impl UpstreamSection {
    /// Deadline of a forwarded pay [5s].
    pub fn pay_timeout(&self) -> Duration {
        self.pay_timeout.map_or(Duration::from_secs(5), |d| d.0)
    }
    /// Deadline of every other call [3s].
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout.map_or(Duration::from_secs(3), |d| d.0)
    }
}

/// `[flow]`: the hub's own retry timings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFlowSection {
    /// How often the active-cancel sweep and the queue look for work.
    #[serde(default = "default_inquiry_interval")]
    pub inquiry_interval: Dur,
    /// Kept for symmetry with the terminal's `[flow]`; the queue owns every retry.
    #[serde(default = "default_cancel_retry_window")]
    pub cancel_retry_window: Dur,
    /// Smallest jittered resend gap of the queue's first retries.
    #[serde(default = "default_cancel_retry_min")]
    pub cancel_retry_min: Dur,
    /// Largest jittered resend gap of the queue's first retries.
    #[serde(default = "default_cancel_retry_max")]
    pub cancel_retry_max: Dur,
    /// Queue backoff after the retry window.
    #[serde(default = "default_queue_backoff_initial")]
    pub queue_backoff_initial: Dur,
    /// Queue backoff ceiling.
    #[serde(default = "default_queue_backoff_max")]
    pub queue_backoff_max: Dur,
    /// Attempts after which a queue item is a dead letter (`NEEDS_ATTENTION`).
    #[serde(default = "default_queue_max_attempts")]
    pub queue_max_attempts: u32,
    /// How long an instance holds leased work (a queue item, an active-cancel decision)
    /// before another instance may take it over.
    #[serde(default = "default_lease")]
    pub lease: Dur,
    /// Added to a forwarded pay's `paymentExpiryTime` before "no such payment" upstream
    /// means "never charged".
    #[serde(default = "default_expiry_margin")]
    pub payment_expiry_margin: Dur,
}

impl Default for HubFlowSection {
    fn default() -> Self {
        HubFlowSection {
            inquiry_interval: default_inquiry_interval(),
            cancel_retry_window: default_cancel_retry_window(),
            cancel_retry_min: default_cancel_retry_min(),
            cancel_retry_max: default_cancel_retry_max(),
            queue_backoff_initial: default_queue_backoff_initial(),
            queue_backoff_max: default_queue_backoff_max(),
            queue_max_attempts: default_queue_max_attempts(),
            lease: default_lease(),
            payment_expiry_margin: default_expiry_margin(),
        }
    }
}

/// `[notify]`: where the upstream's notifyPayment arrives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubNotifySection {
    /// Open the listener.
    #[serde(default)]
    pub enabled: bool,
    /// Its address.
    #[serde(default = "default_notify_listen")]
    pub listen: SocketAddr,
    /// Its path (part of the signature).
    #[serde(default = "default_notify_path")]
    pub path: String,
}

impl Default for HubNotifySection {
    fn default() -> Self {
        HubNotifySection {
            enabled: false,
            listen: default_notify_listen(),
            path: default_notify_path(),
        }
    }
}

/// `[api]`: `/healthz` and `/metrics` (the estate back office lives here later).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubApiSection {
    /// Its address.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Bearer token for everything but `/healthz`.
    #[serde(default)]
    pub token: Option<Secret>,
}

impl Default for HubApiSection {
    fn default() -> Self {
        HubApiSection {
            listen: default_api_listen(),
            token: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8443".parse().expect("valid")
}
fn default_key_version() -> String {
    "1".into()
}
fn default_replay_window() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_active_cancel_after() -> Dur {
    Dur(Duration::from_secs(120))
}
fn default_terminal_decision_time() -> Dur {
    Dur(Duration::from_secs(40))
}
fn default_db_url() -> String {
    "postgres://postgres@127.0.0.1:5432/posd_hub".into()
}
fn default_pool_size() -> usize {
    16
}
fn default_inquiry_interval() -> Dur {
    Dur(Duration::from_secs(3))
}
fn default_cancel_retry_window() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_cancel_retry_min() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_cancel_retry_max() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_queue_backoff_initial() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_queue_backoff_max() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_queue_max_attempts() -> u32 {
    200
}
fn default_expiry_margin() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_lease() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_notify_listen() -> SocketAddr {
    "0.0.0.0:8428".parse().expect("valid")
}
fn default_notify_path() -> String {
    "/alipay/notify".into()
}
fn default_api_listen() -> SocketAddr {
    "127.0.0.1:8427".parse().expect("valid")
}

/// The inclusive bounds of every duration key of `hub.toml`. The lower bounds let tests run
/// the hub with timings of 10 ms to 2 s; the upper bounds refuse values that would wedge a
/// payment (an upstream deadline of an hour, a lease of a day) or overflow what is derived
/// from them.
pub const HUB_DURATION_BOUNDS: &Bounds = &[
    ("hub.replay_window", secs(1), secs(3600)),
    ("hub.active_cancel_after", ms(100), secs(3600)),
    ("hub.terminal_decision_time", ms(50), secs(600)),
    ("upstream.pay_timeout", ms(50), secs(60)),
    ("upstream.call_timeout", ms(50), secs(60)),
    ("flow.inquiry_interval", ms(10), secs(60)),
    ("flow.cancel_retry_window", ms(100), secs(600)),
    ("flow.cancel_retry_min", ms(10), secs(300)),
    ("flow.cancel_retry_max", ms(10), secs(600)),
    ("flow.queue_backoff_initial", ms(50), secs(3600)),
    ("flow.queue_backoff_max", ms(100), secs(86_400)),
    ("flow.lease", ms(100), secs(3600)),
    ("flow.payment_expiry_margin", ms(0), secs(600)),
];

/// Why `hub.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HubConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl HubConfig {
    /// Reads, parses and validates `hub.toml`; relative paths resolve against its directory.
    pub fn load(path: &Path) -> Result<HubConfig, HubConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| HubConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = HubConfig::parse(&text).map_err(|message| HubConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        config.validate().map_err(HubConfigError::Invalid)?;
        Ok(config)
    }

    /// Parses the TOML text (no validation).
    pub fn parse(text: &str) -> Result<HubConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.hub.hub_private_key);
        for p in [&mut self.hub.tls_cert, &mut self.hub.tls_key]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        let u = &mut self.upstream;
        for p in [
            &mut u.merchant_private_key,
            &mut u.gateway_public_key,
            &mut u.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// Every duration key with its value, by the names of [`HUB_DURATION_BOUNDS`].
    fn durations(&self) -> [(&'static str, Duration); 13] {
        let (h, u, f) = (&self.hub, &self.upstream, &self.flow);
        [
            ("hub.replay_window", h.replay_window.0),
            ("hub.active_cancel_after", h.active_cancel_after.0),
            ("hub.terminal_decision_time", h.terminal_decision_time.0),
            ("upstream.pay_timeout", u.pay_timeout()),
            ("upstream.call_timeout", u.call_timeout()),
            ("flow.inquiry_interval", f.inquiry_interval.0),
            ("flow.cancel_retry_window", f.cancel_retry_window.0),
            ("flow.cancel_retry_min", f.cancel_retry_min.0),
            ("flow.cancel_retry_max", f.cancel_retry_max.0),
            ("flow.queue_backoff_initial", f.queue_backoff_initial.0),
            ("flow.queue_backoff_max", f.queue_backoff_max.0),
            ("flow.lease", f.lease.0),
            ("flow.payment_expiry_margin", f.payment_expiry_margin.0),
        ]
    }

    /// The rules a config must meet; each error names the key and what would be valid.
    pub fn validate(&self) -> Result<(), String> {
        for (key, d) in self.durations() {
            within(HUB_DURATION_BOUNDS, key, d).map_err(|e| format!("{key}: {e}"))?;
        }
        let h = &self.hub;
        if h.active_cancel_after.0 <= h.terminal_decision_time.0 {
            return Err(format!(
                "hub.active_cancel_after ({}) must be longer than hub.terminal_decision_time ({}): \
                 the hub would cancel payments its terminals are still deciding; raise \
                 active_cancel_after (default 120s) above the terminals' pay timeout + inquiries",
                humantime::format_duration(h.active_cancel_after.0),
                humantime::format_duration(h.terminal_decision_time.0)
            ));
        }
        if h.replay_window.0.is_zero() {
            return Err("hub.replay_window must be longer than 0s (default 5m)".into());
        }
        match (&h.tls_cert, &h.tls_key, h.insecure_http) {
            (Some(_), Some(_), _) => {}
            (None, None, true) => {
                if !h.listen.ip().is_loopback() {
                    return Err(format!(
                        "hub.insecure_http is allowed only on a loopback hub.listen, not {}; \
                         set hub.tls_cert and hub.tls_key",
                        h.listen
                    ));
                }
            }
            (None, None, false) => {
                return Err(
                    "hub.tls_cert and hub.tls_key are required (PEM files); plain HTTP only \
                     with hub.insecure_http = true on a loopback hub.listen"
                        .into(),
                )
            }
            _ => return Err("hub.tls_cert and hub.tls_key must be set together".into()),
        }
        if !(1..=1000).contains(&self.database.pool_size) {
            return Err(format!(
                "database.pool_size = {} is outside 1..=1000 (default 16; PostgreSQL's own \
                 max_connections is 100 unless raised)",
                self.database.pool_size
            ));
        }
        if self.flow.queue_max_attempts == 0 {
            return Err("flow.queue_max_attempts must be at least 1 (default 200)".into());
        }
        let u = &self.upstream;
        let base = match (u.kind, u.base_url.as_deref()) {
            (_, Some(b)) => b,
            (UpstreamKind::AlipayCn, None) => crate::config::MAINLAND_GATEWAY_URL,
            (_, None) => {
                return Err(
                    "upstream.base_url is required (the gateway the hub forwards to)".into(),
                )
            }
        };
        check_base_url(base, u.insecure_http).map_err(|e| format!("upstream.base_url: {e}"))?;
        if u.kind == UpstreamKind::AlipayCn {
            match u.app_id.as_deref() {
                Some(id)
                    if !id.is_empty()
                        && id.len() <= 32
                        && id.bytes().all(|b| b.is_ascii_digit()) => {}
                Some(id) => {
                    return Err(format!(
                    "upstream.app_id {id:?} is not an app_id (digits, e.g. \"2021000000000001\")"
                ))
                }
                None => {
                    return Err(
                        "upstream.app_id is required when upstream.kind = \"alipay_cn\" \
                         (the APPID of the open platform application)"
                            .into(),
                    )
                }
            }
            if u.client_id.is_some() {
                return Err(
                    "upstream.client_id is for AMS upstreams; with kind = \"alipay_cn\" \
                     the application is named by upstream.app_id"
                        .into(),
                );
            }
        } else {
            if u.client_id.as_deref().is_none_or(str::is_empty) {
                return Err(
                    "upstream.client_id is required (the merchant's id at the gateway)".into(),
                );
            }
            if u.app_id.is_some() || u.app_auth_token.is_some() {
                return Err("upstream.app_id and upstream.app_auth_token are for \
                     kind = \"alipay_cn\" only"
                    .into());
            }
        }
        if u.merchant_private_key.is_none() {
            return Err("upstream.merchant_private_key is required (PEM, mode 0600)".into());
        }
        if u.gateway_public_key.is_none() {
            return Err(
                "upstream.gateway_public_key is required (the gateway's public key)".into(),
            );
        }
        if u.pay_timeout().is_zero() || u.call_timeout().is_zero() {
            return Err("upstream.pay_timeout and upstream.call_timeout must be above 0s".into());
        }
        let f = &self.flow;
        if f.cancel_retry_min.0 > f.cancel_retry_max.0 {
            return Err("flow.cancel_retry_min must not exceed flow.cancel_retry_max".into());
        }
        if f.queue_backoff_initial.0 > f.queue_backoff_max.0 {
            return Err("flow.queue_backoff_initial must not exceed flow.queue_backoff_max".into());
        }
        if f.lease.0 <= u.pay_timeout().max(u.call_timeout()) {
            return Err(format!(
                "flow.lease ({}) must be longer than the longest upstream call ({}): a lease \
                 must outlive the call made under it",
                humantime::format_duration(f.lease.0),
                humantime::format_duration(u.pay_timeout().max(u.call_timeout()))
            ));
        }
        if f.inquiry_interval.0.is_zero() {
            return Err("flow.inquiry_interval must be above 0s".into());
        }
        if !self.notify.path.starts_with('/') {
            return Err(format!(
                "notify.path {:?} must start with '/'",
                self.notify.path
            ));
        }
        Ok(())
    }

    /// The name this instance writes into leases and the journal.
    pub fn instance_id(&self) -> String {
        self.hub.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "hub".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[hub]
listen = "127.0.0.1:8443"
insecure_http = true
hub_private_key = "keys/hub_private.pem"
[upstream]
base_url = "http://127.0.0.1:8419"
insecure_http = true
client_id = "SANDBOX_HUB"
merchant_private_key = "keys/merchant_private.pem"
gateway_public_key = "keys/gateway_public.pem"
"#;

    #[test]
    fn a_minimal_config_validates_with_the_documented_defaults() {
        let c = HubConfig::parse(MIN).unwrap();
        c.validate().unwrap();
        assert_eq!(c.hub.active_cancel_after.0, Duration::from_secs(120));
        assert_eq!(c.hub.terminal_decision_time.0, Duration::from_secs(40));
        assert_eq!(c.hub.replay_window.0, Duration::from_secs(300));
        assert!(!c.hub.reversal_advice);
        assert_eq!(c.database.pool_size, 16);
        assert_eq!(c.upstream.pay_timeout(), Duration::from_secs(5));
        assert_eq!(c.upstream.call_timeout(), Duration::from_secs(3));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = MIN.replace("[hub]\n", "[hub]\nactive_cancel = \"1s\"\n");
        let e = HubConfig::parse(&text).unwrap_err();
        assert!(e.contains("active_cancel"), "{e}");
        let e = HubConfig::parse(&format!("{MIN}\n[extra]\nx = 1\n")).unwrap_err();
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn active_cancel_must_outlast_the_terminal_decision() {
        for (after, decision) in [("40s", "40s"), ("30s", "40s")] {
            let text = MIN.replace(
                "[hub]\n",
                &format!(
                    "[hub]\nactive_cancel_after = \"{after}\"\nterminal_decision_time = \"{decision}\"\n"
                ),
            );
            let e = HubConfig::parse(&text).unwrap().validate().unwrap_err();
            assert!(e.contains("active_cancel_after"), "{e}");
        }
        let ok = MIN.replace("[hub]\n", "[hub]\nactive_cancel_after = \"41s\"\n");
        HubConfig::parse(&ok).unwrap().validate().unwrap();
    }

    #[test]
    fn plain_http_only_on_loopback_and_tls_files_go_together() {
        let public = MIN.replace("127.0.0.1:8443", "0.0.0.0:8443");
        let e = HubConfig::parse(&public).unwrap().validate().unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        let no_tls = MIN.replace("insecure_http = true\nhub_private_key", "hub_private_key");
        let e = HubConfig::parse(&no_tls).unwrap().validate().unwrap_err();
        assert!(e.contains("tls_cert"), "{e}");
        let half = no_tls.replace("[hub]\n", "[hub]\ntls_cert = \"c.pem\"\n");
        let e = HubConfig::parse(&half).unwrap().validate().unwrap_err();
        assert!(e.contains("together"), "{e}");
    }

    #[test]
    fn the_upstream_must_be_https_unless_loopback_and_allowed() {
        let text = MIN.replace(
            "base_url = \"http://127.0.0.1:8419\"\ninsecure_http = true",
            "base_url = \"http://127.0.0.1:8419\"",
        );
        let e = HubConfig::parse(&text).unwrap().validate().unwrap_err();
        assert!(e.contains("upstream.base_url"), "{e}");
    }

    #[test]
    fn a_mainland_upstream_is_named_by_its_app_id() {
        let cn = MIN.replace(
            "base_url = \"http://127.0.0.1:8419\"\ninsecure_http = true\nclient_id = \"SANDBOX_HUB\"",
            "kind = \"alipay_cn\"\napp_id = \"2021000000000001\"",
        );
        let c = HubConfig::parse(&cn).unwrap();
        c.validate().unwrap();
        assert_eq!(c.upstream.kind, UpstreamKind::AlipayCn);
        assert!(
            c.upstream.base_url.is_none(),
            "defaults to the mainland gateway"
        );
        let err = |text: &str| HubConfig::parse(text).unwrap().validate().unwrap_err();
        let e = err(&cn.replace("app_id = \"2021000000000001\"\n", ""));
        assert!(e.contains("upstream.app_id is required"), "{e}");
        let e = err(&cn.replace("2021000000000001", "my-app"));
        assert!(e.contains("not an app_id"), "{e}");
        let e = err(&cn.replace("[upstream]\n", "[upstream]\nclient_id = \"X\"\n"));
        assert!(e.contains("upstream.client_id is for AMS"), "{e}");
        let e = err(&MIN.replace(
            "[upstream]\n",
            "[upstream]\napp_id = \"2021000000000001\"\n",
        ));
        assert!(e.contains("alipay_cn"), "{e}");
        // A plain-http mainland URL needs insecure_http and loopback, as for AMS.
        let e = err(&cn.replace(
            "[upstream]\n",
            "[upstream]\nbase_url = \"http://gw.example.com/gateway.do\"\n",
        ));
        assert!(e.contains("upstream.base_url"), "{e}");
    }

    #[test]
    fn every_duration_has_bounds_and_a_value_outside_them_is_refused() {
        let c = HubConfig::parse(MIN).unwrap();
        let keys: Vec<&str> = c.durations().iter().map(|(k, _)| *k).collect();
        let bounded: Vec<&str> = HUB_DURATION_BOUNDS.iter().map(|(k, _, _)| *k).collect();
        assert_eq!(keys, bounded, "one list, in the same order");
        for (key, lo, hi) in HUB_DURATION_BOUNDS {
            let with = |d: Duration| {
                let (section, name) = key.split_once('.').unwrap();
                let line = format!("{name} = \"{}\"\n", humantime::format_duration(d));
                let header = format!("[{section}]\n");
                let text = if MIN.contains(&header) {
                    MIN.replacen(&header, &format!("{header}{line}"), 1)
                } else {
                    format!("{MIN}\n{header}{line}")
                };
                HubConfig::parse(&text).unwrap().validate()
            };
            let e = with(*hi + Duration::from_millis(1)).unwrap_err();
            assert!(e.starts_with(key) && e.contains("outside"), "{key}: {e}");
            if let Some(below) = lo.checked_sub(Duration::from_millis(1)) {
                let e = with(below).unwrap_err();
                assert!(e.starts_with(key) && e.contains("outside"), "{key}: {e}");
            }
        }
        // An overflowing value is refused the same way, not wrapped or panicking later.
        let huge = MIN.replacen("[hub]\n", "[hub]\nreplay_window = \"500000000years\"\n", 1);
        let e = HubConfig::parse(&huge).unwrap().validate().unwrap_err();
        assert!(e.starts_with("hub.replay_window"), "{e}");
    }

    #[test]
    fn pool_size_and_max_attempts_are_bounded() {
        let e = HubConfig::parse(&format!("{MIN}\n[database]\npool_size = 5000\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.contains("database.pool_size"), "{e}");
        let e = HubConfig::parse(&format!("{MIN}\n[flow]\nqueue_max_attempts = 0\n"))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.contains("flow.queue_max_attempts"), "{e}");
    }

    #[test]
    fn the_example_hub_toml_parses() {
        let c = HubConfig::parse(include_str!("../../hub.toml")).unwrap();
        c.validate().unwrap();
    }
}
