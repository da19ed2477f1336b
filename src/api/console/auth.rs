//! The console's login: the API token, typed once into a form, becomes a signed session cookie
//! (HttpOnly, Secure, SameSite=Strict, 12 hours); every form carries a CSRF token derived from
//! that session. Both are HMAC-SHA256 under a key drawn when the daemon starts (a restart logs
//! everybody out) and bound to the token's hash (a new token invalidates old sessions).

use aws_lc_rs::hmac;
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::guard::token_matches;
use crate::config::Secret;

/// The session cookie's name.
pub const COOKIE: &str = "posd_console";
/// How long a login lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// Signs and checks sessions and CSRF tokens.
pub struct Auth {
    token_sha256: Option<[u8; 32]>,
    key: hmac::Key,
}

impl Auth {
    /// For the configured API token (`None`: the console is off and says how to turn it on).
    pub fn new(token: Option<&Secret>) -> Auth {
        let seed: [u8; 32] = rand::random();
        Auth {
            token_sha256: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            key: hmac::Key::new(hmac::HMAC_SHA256, &seed),
        }
    }

    /// Whether a token is configured.
    pub fn enabled(&self) -> bool {
        self.token_sha256.is_some()
    }

    /// Whether `given` is the API token.
    pub fn token_ok(&self, given: &str) -> bool {
        self.token_sha256
            .as_ref()
            .is_some_and(|t| token_matches(t, given.trim()))
    }

    fn mac(&self, what: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(what.as_bytes());
        if let Some(t) = &self.token_sha256 {
            ctx.update(t);
        }
        hex(ctx.sign().as_ref())
    }

    /// A new session value, valid until `now + SESSION_MS`.
    pub fn new_session(&self, now: i64) -> String {
        let nonce: [u8; 16] = rand::random();
        let body = format!("v1.{}.{}", now + SESSION_MS, hex(&nonce));
        let mac = self.mac(&format!("session|{body}"));
        format!("{body}.{mac}")
    }

    /// Whether a session value is one of ours and not expired.
    pub fn session_ok(&self, value: &str, now: i64) -> bool {
        if !self.enabled() {
            return false;
        }
        let Some((body, mac)) = value.rsplit_once('.') else {
            return false;
        };
        let mut parts = body.split('.');
        let (Some("v1"), Some(expiry), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let fresh = expiry.parse::<i64>().is_ok_and(|e| e > now);
        let want = self.mac(&format!("session|{body}"));
        fresh && bool::from(want.as_bytes().ct_eq(mac.as_bytes()))
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session: &str) -> String {
        self.mac(&format!("csrf|{session}"))
    }

    /// Whether `given` is the CSRF token of `session`.
    pub fn csrf_ok(&self, session: &str, given: &str) -> bool {
        !given.is_empty() && bool::from(self.csrf(session).as_bytes().ct_eq(given.as_bytes()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The session cookie's value in a request, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` value that logs in.
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/console; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        SESSION_MS / 1000
    )
}

/// The `Set-Cookie` value that logs out.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        toml::from_str::<std::collections::HashMap<String, Secret>>(&format!("t = {s:?}"))
            .unwrap()
            .remove("t")
            .unwrap()
    }

    #[test]
    fn sessions_and_csrf_tokens_are_ours_and_expire() {
        let a = Auth::new(Some(&secret("s3cret")));
        assert!(a.token_ok("s3cret") && !a.token_ok("s3cre"));
        let s = a.new_session(1_000);
        assert!(a.session_ok(&s, 2_000));
        assert!(!a.session_ok(&s, 1_000 + SESSION_MS), "expired");
        let forged = s.replace("v1.", "v1.9");
        assert!(!a.session_ok(&forged, 2_000));
        assert!(!a.session_ok("v1.99999999999999.00.00", 2_000));
        // Another daemon (another key) does not accept it.
        assert!(!Auth::new(Some(&secret("s3cret"))).session_ok(&s, 2_000));
        let c = a.csrf(&s);
        assert!(a.csrf_ok(&s, &c));
        assert!(!a.csrf_ok(&s, ""));
        assert!(
            !a.csrf_ok(&a.new_session(1_000), &c),
            "bound to its session"
        );
        // No token configured: nothing is accepted.
        let off = Auth::new(None);
        assert!(!off.enabled() && !off.token_ok("") && !off.session_ok(&s, 2_000));
    }

    #[test]
    fn the_cookie_is_http_only_secure_and_strict() {
        let c = set_cookie("v");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
            assert!(c.contains(attr), "{c}");
        }
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; posd_console=xyz; b=2".parse().unwrap());
        assert_eq!(session_cookie(&h).as_deref(), Some("xyz"));
    }
}
