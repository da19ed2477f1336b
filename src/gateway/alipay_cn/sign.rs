//! The mainland RSA2 scheme: the sorted `k=v` sign content, SHA256withRSA in Base64, and the
//! signed `…_response` object found in the raw answer bytes (never re-serialized).
//!
//! Keys load through the shared [`PrivateKey`] / [`PublicKey`] (PKCS#8, PKCS#1, bare Base64),
//! and signing goes through the same constant-time aws-lc-rs path as the AMS dialect.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;

use crate::gateway::sign::{PrivateKey, PublicKey};

/// The string that is signed: every parameter but `skip`, sorted by key (byte order, as the
/// SDKs' `TreeMap`/`sorted`), joined `k=v` with `&`, values raw (not URL-encoded). Empty
/// values are left out when `skip_empty` (the Java SDK's rule; posd never sends one).
pub fn sign_content<'a, I>(params: I, skip: &[&str], skip_empty: bool) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pairs: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(k, v)| {
            let dropped = skip.contains(k) || k.is_empty() || (skip_empty && v.is_empty());
            !dropped
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// `sign` for a request: SHA256withRSA over the UTF-8 content, standard Base64.
pub fn sign_rsa2(key: &PrivateKey, content: &str) -> String {
    B64.encode(key.sign(content.as_bytes()))
}

/// Checks a Base64 RSA2 signature over `content`.
pub fn verify_rsa2(key: &PublicKey, content: &[u8], sign_b64: &str) -> bool {
    // Signatures in form posts may arrive with spaces where a `+` was not encoded.
    let cleaned: String = sign_b64.chars().filter(|c| !c.is_whitespace()).collect();
    match B64.decode(cleaned.as_bytes()) {
        Ok(sig) => key.verify(content, &sig),
        Err(_) => false,
    }
}

/// What [`extract`] found in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted<'a> {
    /// The top-level key that held the answer: `<method>_response` or `error_response`.
    pub key: String,
    /// The exact bytes of its JSON object, as sent: what the gateway signed.
    pub content: &'a str,
    /// The sibling `sign`, when present.
    pub sign: Option<String>,
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("answer is not a JSON object: {0}")]
    NotJson(String),
    #[error("answer holds no {0} object")]
    Missing(String),
    #[error("answer repeats the key {0:?}")]
    Duplicate(String),
    #[error("answer's {0} is not a JSON object")]
    NotObject(String),
}

/// Finds the `<response_key>` object (or `error_response`, which the gateway sends for
/// protocol errors) and its `sign` in the raw answer. The object's text is taken byte for
/// byte from the input by a real JSON parser, so `}` or `\/` inside strings cannot cut it
/// short or change it, and a repeated top-level key is refused rather than guessed at.
pub fn extract<'a>(body: &'a str, response_key: &str) -> Result<Extracted<'a>, ExtractError> {
    let entries = top_level(body)?;
    let mut found: Option<(&str, &'a RawValue)> = None;
    let mut sign = None;
    for (k, v) in &entries {
        if k == "sign" {
            sign = Some(
                serde_json::from_str::<String>(v.get())
                    .map_err(|_| ExtractError::NotObject("sign".into()))?,
            );
        } else if (k == response_key || k == "error_response") && found.is_none() {
            found = Some((k.as_str(), v));
        }
    }
    let (key, raw) = found.ok_or_else(|| ExtractError::Missing(response_key.to_string()))?;
    if !raw.get().starts_with('{') {
        return Err(ExtractError::NotObject(key.to_string()));
    }
    Ok(Extracted {
        key: key.to_string(),
        content: raw.get(),
        sign,
    })
}

/// Verifies an extracted answer with the gateway key. Like the Java SDK, a text that does
/// not verify as sent is tried once more with `\/` read as `/` (the gateway signs some
/// answers before escaping slashes).
pub fn verify_extracted(key: &PublicKey, e: &Extracted<'_>) -> Option<bool> {
    let sign = e.sign.as_deref()?;
    if verify_rsa2(key, e.content.as_bytes(), sign) {
        return Some(true);
    }
    if e.content.contains("\\/") {
        let unescaped = e.content.replace("\\/", "/");
        return Some(verify_rsa2(key, unescaped.as_bytes(), sign));
    }
    Some(false)
}

/// The top-level members of a JSON object, in order, each value as its raw text. Refuses
/// a key seen twice: a second, unsigned copy of the answer must not be read instead.
fn top_level(body: &str) -> Result<Vec<(String, &RawValue)>, ExtractError> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, &'de RawValue)> = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                if out.iter().any(|(seen, _)| *seen == k) {
                    return Err(de::Error::custom(format!("duplicate key {k:?}")));
                }
                let v: &'de RawValue = map.next_value()?;
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(body);
    let members = de.deserialize_map(Members).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("duplicate key ") {
            Some(rest) => ExtractError::Duplicate(
                rest.split(" at line")
                    .next()
                    .unwrap_or(rest)
                    .trim_matches('"')
                    .to_string(),
            ),
            None => ExtractError::NotJson(msg),
        }
    })?;
    de.end().map_err(|e| ExtractError::NotJson(e.to_string()))?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sorts_and_skips() {
        let p = [("b", "2"), ("sign", "x"), ("a", "1"), ("c", "")];
        assert_eq!(sign_content(p, &["sign"], true), "a=1&b=2");
        assert_eq!(sign_content(p, &["sign"], false), "a=1&b=2&c=");
    }

    #[test]
    fn extraction_keeps_the_raw_text() {
        let body = r#"{"alipay_trade_pay_response" : {"code":"10000","s":"}\/{"} , "sign":"abc"}"#;
        let e = extract(body, "alipay_trade_pay_response").unwrap();
        assert_eq!(e.content, r#"{"code":"10000","s":"}\/{"}"#);
        assert_eq!(e.sign.as_deref(), Some("abc"));
    }

    #[test]
    fn error_response_is_found_and_duplicates_refused() {
        let e = extract(
            r#"{"error_response":{"code":"40002"}}"#,
            "alipay_trade_pay_response",
        )
        .unwrap();
        assert_eq!(e.key, "error_response");
        assert_eq!(e.sign, None);
        let dup = r#"{"alipay_trade_pay_response":{"code":"40004"},"alipay_trade_pay_response":{"code":"10000"},"sign":"x"}"#;
        assert!(matches!(
            extract(dup, "alipay_trade_pay_response"),
            Err(ExtractError::Duplicate(_))
        ));
        assert!(matches!(
            extract("<html>502</html>", "alipay_trade_pay_response"),
            Err(ExtractError::NotJson(_))
        ));
        assert!(matches!(
            extract(r#"{"sign":"x"}"#, "alipay_trade_pay_response"),
            Err(ExtractError::Missing(_))
        ));
        assert!(matches!(
            extract(
                r#"{"alipay_trade_pay_response":"10000"}"#,
                "alipay_trade_pay_response"
            ),
            Err(ExtractError::NotObject(_))
        ));
    }
}
