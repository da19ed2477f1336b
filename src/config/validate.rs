//! The rules a config must meet, each failure naming the key and what would be valid: every
//! duration within its bounds, addresses, tokens, codes, URLs, log directives. The values that
//! validation parses (currency, time zone) come out typed, so nothing re-parses them later.

use std::net::SocketAddr;
use std::time::Duration;

use super::{
    check_base_url, d_prefixes, Dur, GatewayKind, RawConfig, PAYMENT_EXPIRY_BOUNDS,
    PAYMENT_EXPIRY_MARGIN_MAX,
};
use crate::domain::money::Currency;
use crate::domain::request_id::valid_terminal_id;

/// What validation parsed, kept typed.
pub(super) struct Typed {
    pub(super) currency: Currency,
    pub(super) timezone: Option<super::tz::Tz>,
}

/// `n` milliseconds, for bounds tables.
pub(crate) const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
/// `n` seconds, for bounds tables.
pub(crate) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A table of duration keys with their inclusive bounds.
pub type Bounds = [(&'static str, Duration, Duration)];

/// The inclusive bounds of every duration key. The lower bounds let tests run the whole flow
/// with timings of 10–250 ms; the upper bounds refuse values that would wedge a sale or the
/// queue (a pay deadline of a day, an inquiry every hour).
pub const DURATION_BOUNDS: &Bounds = &[
    ("gateway.connect_timeout", ms(50), secs(30)),
    ("flow.pay_timeout", ms(50), secs(60)),
    ("flow.inquiry_interval", ms(10), secs(30)),
    ("flow.inquiry_timeout", ms(50), secs(60)),
    ("flow.cancel_timeout", ms(50), secs(60)),
    ("flow.cancel_retry_window", ms(100), secs(600)),
    ("flow.cancel_retry_min", ms(10), secs(300)),
    ("flow.cancel_retry_max", ms(10), secs(600)),
    ("flow.queue_backoff_initial", ms(50), secs(3600)),
    ("flow.queue_backoff_max", ms(100), secs(86_400)),
    ("api.header_timeout", ms(50), secs(300)),
    ("api.body_timeout", ms(50), secs(300)),
    ("notify.header_timeout", ms(50), secs(300)),
    ("notify.body_timeout", ms(50), secs(300)),
    ("sandbox.cancel_outage", ms(0), secs(3600)),
];

/// Checks `d` against its key's [`DURATION_BOUNDS`].
pub(super) fn check_bounds(key: &'static str, d: Dur) -> Result<(), (&'static str, String)> {
    within(DURATION_BOUNDS, key, d.0).map_err(|e| (key, e))
}

/// Checks `d` against `key`'s bounds in `table`; the error says the value and the range.
pub(crate) fn within(table: &Bounds, key: &str, d: Duration) -> Result<(), String> {
    let Some((_, lo, hi)) = table.iter().find(|(k, _, _)| *k == key) else {
        return Err("has no bounds (a bug: add it to its bounds table)".into());
    };
    if d < *lo || d > *hi {
        return Err(format!(
            "{} is outside {}..={}",
            humantime::format_duration(d),
            humantime::format_duration(*lo),
            humantime::format_duration(*hi)
        ));
    }
    Ok(())
}

/// The level names `log.level` accepts, alone or after `target=`.
const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `log.level`: a level name, or comma-separated `target=level` directives.
fn check_log_level(s: &str) -> Result<(), String> {
    let is_level = |l: &str| LOG_LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let ok = !s.trim().is_empty()
        && s.split(',').all(|part| match part.split_once('=') {
            None => is_level(part),
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
        });
    if !ok {
        return Err(format!(
            "{s:?}: use error, warn, info, debug or trace, or directives like \"info,posd=debug\""
        ));
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(())
}

/// Whether two listen addresses would collide (same port on the same or a wildcard address).
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks `gateway.notify_url`: an absolute `https://` URL with a host (`http://` only with
/// `gateway.insecure_http`).
pub fn check_notify_url(url: &str, insecure_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        format!("{url:?} is not a URL ({e}); give the public https URL the gateway posts to, e.g. \"https://pos.example.com/alipay/notify\"")
    })?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if insecure_http => Ok(()),
        "http" => Err(format!(
            "{url:?} is plain http: the gateway posts notifications over https"
        )),
        other => Err(format!(
            "{url:?}: scheme {other:?} is not supported, use https"
        )),
    }
}

pub(super) fn validate(raw: &RawConfig) -> Result<Typed, (&'static str, String)> {
    let t = &raw.terminal;
    if !valid_terminal_id(&t.id) {
        return Err((
            "terminal.id",
            format!("{:?} {}", t.id, crate::domain::request_id::TERMINAL_ID_RULE),
        ));
    }
    for (key, v) in [
        ("terminal.merchant_id", &t.merchant_id),
        ("terminal.merchant_name", &t.merchant_name),
        ("terminal.merchant_mcc", &t.merchant_mcc),
        ("terminal.store_id", &t.store_id),
        ("terminal.store_name", &t.store_name),
        ("terminal.store_mcc", &t.store_mcc),
    ] {
        if v.trim().is_empty() {
            return Err((key, "must not be empty".into()));
        }
    }
    for (key, v) in [
        ("terminal.merchant_mcc", &t.merchant_mcc),
        ("terminal.store_mcc", &t.store_mcc),
    ] {
        if v.len() != 4 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err((
                key,
                format!("{v:?} must be a 4-digit merchant category code such as \"5812\""),
            ));
        }
    }
    let currency =
        Currency::from_code(&t.currency).map_err(|e| ("terminal.currency", e.to_string()))?;
    let timezone = match &t.timezone {
        None => None,
        Some(tz) => Some(super::tz::Tz::named(tz).map_err(|e| ("terminal.timezone", e))?),
    };
    let g = &raw.gateway;
    super::validate_mainland(g)?;
    if g.kind == GatewayKind::AlipayPlus {
        let url = g.base_url.as_deref().ok_or((
            "gateway.base_url",
            "required when gateway.kind = \"alipay_plus\" (e.g. \"https://open-sea-global.alipay.com\")".to_string(),
        ))?;
        check_base_url(url, g.insecure_http).map_err(|m| ("gateway.base_url", m))?;
        if g.client_id.as_deref().is_none_or(str::is_empty) {
            return Err((
                "gateway.client_id",
                "required when gateway.kind = \"alipay_plus\"".into(),
            ));
        }
        if g.merchant_private_key.is_none() {
            return Err((
                "gateway.merchant_private_key",
                "required: path of the merchant private key (posd keys generate --out DIR makes one)".into(),
            ));
        }
        if g.gateway_public_key.is_none() {
            return Err((
                "gateway.gateway_public_key",
                "required: path of the gateway public key from the dashboard".into(),
            ));
        }
    }
    if let Some(url) = &g.notify_url {
        check_notify_url(url, g.insecure_http).map_err(|m| ("gateway.notify_url", m))?;
    }
    if g.key_version.trim().is_empty() || !g.key_version.bytes().all(|b| b.is_ascii_digit()) {
        return Err((
            "gateway.key_version",
            "must be a number such as \"1\"".into(),
        ));
    }
    let f = &raw.flow;
    if !(10..=20).contains(&f.inquiry_max) {
        return Err((
            "flow.inquiry_max",
            format!("{} is outside 10..=20 (the best practice)", f.inquiry_max),
        ));
    }
    for (key, d) in [
        ("gateway.connect_timeout", g.connect_timeout),
        ("flow.pay_timeout", f.pay_timeout),
        ("flow.inquiry_interval", f.inquiry_interval),
        ("flow.inquiry_timeout", f.inquiry_timeout),
        ("flow.cancel_timeout", f.cancel_timeout),
        ("flow.cancel_retry_window", f.cancel_retry_window),
        ("flow.cancel_retry_min", f.cancel_retry_min),
        ("flow.cancel_retry_max", f.cancel_retry_max),
        ("flow.queue_backoff_initial", f.queue_backoff_initial),
        ("flow.queue_backoff_max", f.queue_backoff_max),
        ("api.header_timeout", raw.api.header_timeout),
        ("api.body_timeout", raw.api.body_timeout),
        ("notify.header_timeout", raw.notify.header_timeout),
        ("notify.body_timeout", raw.notify.body_timeout),
        ("sandbox.cancel_outage", raw.sandbox.cancel_outage),
    ] {
        check_bounds(key, d)?;
    }
    if f.cancel_retry_min.0 > f.cancel_retry_max.0 {
        return Err((
            "flow.cancel_retry_min",
            "must not be greater than flow.cancel_retry_max".into(),
        ));
    }
    let (lo, hi) = PAYMENT_EXPIRY_BOUNDS;
    if f.payment_expiry.0 < lo || f.payment_expiry.0 > hi {
        return Err((
            "flow.payment_expiry",
            format!(
                "{} is outside 1s..=30m; the gateway's usual default is \"3m\"",
                humantime::format_duration(f.payment_expiry.0)
            ),
        ));
    }
    if f.payment_expiry.0 < f.pay_timeout.0 {
        return Err((
            "flow.payment_expiry",
            "must not be shorter than flow.pay_timeout (a pay in time would expire in flight)"
                .into(),
        ));
    }
    if f.payment_expiry_margin.0 > PAYMENT_EXPIRY_MARGIN_MAX {
        return Err((
            "flow.payment_expiry_margin",
            format!(
                "{} is more than 10m; a few seconds cover a clock that is off",
                humantime::format_duration(f.payment_expiry_margin.0)
            ),
        ));
    }
    for (key, v, hi, default) in [
        (
            "flow.queue_batch",
            f.queue_batch,
            1000,
            super::d_queue_batch(),
        ),
        (
            "flow.queue_concurrency",
            f.queue_concurrency,
            256,
            super::d_queue_concurrency(),
        ),
    ] {
        if !(1..=hi).contains(&v) {
            return Err((
                key,
                format!("{v} is outside 1..={hi}; the default {default} suits a terminal"),
            ));
        }
    }
    if f.queue_backoff_initial.0 > f.queue_backoff_max.0 {
        return Err((
            "flow.queue_backoff_initial",
            "must not be greater than flow.queue_backoff_max".into(),
        ));
    }
    let c = &raw.codes;
    let (min_len, max_len) = super::code_lengths(c, super::is_mainland(g));
    if min_len == 0 || min_len > max_len || max_len > 64 {
        return Err((
            "codes.min_len",
            format!("min_len {min_len} / max_len {max_len}: need 1 ≤ min_len ≤ max_len ≤ 64"),
        ));
    }
    if c.prefixes.is_empty() {
        return Err((
            "codes.prefixes",
            format!(
                "must list at least one prefix (an empty list would accept any digits); the standard is {:?}",
                d_prefixes()
            ),
        ));
    }
    if c.prefixes
        .iter()
        .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err((
            "codes.prefixes",
            "every prefix must be digits, e.g. \"28\"".into(),
        ));
    }
    if !raw.notify.path.starts_with('/') {
        return Err(("notify.path", "must start with '/'".into()));
    }
    let a = &raw.api;
    if let Some(token) = &a.token {
        let tok = token.expose();
        if tok.is_empty() || !tok.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "api.token",
                "must be a non-empty string of printable ASCII without spaces (e.g. 32 random hex digits); remove the key to run without a token on loopback".into(),
            ));
        }
    } else if !a.listen.ip().is_loopback() {
        return Err((
            "api.listen",
            format!(
                "{} is reachable from the network: set api.token to a long random string, or listen on 127.0.0.1",
                a.listen
            ),
        ));
    }
    for (key, n) in [
        ("api.max_connections_per_peer", a.max_connections_per_peer),
        (
            "notify.max_connections_per_peer",
            raw.notify.max_connections_per_peer,
        ),
    ] {
        if !(1..=1024).contains(&n) {
            return Err((key, format!("{n} is outside 1..=1024")));
        }
    }
    if raw.notify.enabled && same_listener(raw.notify.listen, a.listen) {
        return Err((
            "notify.listen",
            format!(
                "{} collides with api.listen {}: the notification endpoint needs its own port",
                raw.notify.listen, a.listen
            ),
        ));
    }
    raw.scanner
        .validate()
        .map_err(|e| ("scanner", e.to_string()))?;
    raw.printer
        .validate()
        .map_err(|e| ("printer", e.to_string()))?;
    if !["text", "json", "journald"].contains(&raw.log.format.as_str()) {
        return Err((
            "log.format",
            format!(
                "{:?}: use \"text\", \"json\" or \"journald\"",
                raw.log.format
            ),
        ));
    }
    check_log_level(&raw.log.level).map_err(|m| ("log.level", m))?;
    Ok(Typed { currency, timezone })
}
