//! Keys and the AMS signature scheme (docs/protocol.md, "Signing and verification"): loading keys
//! in every merchant form, signing with aws-lc-rs (constant-time), verifying responses and
//! notifications.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature as lc;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::{RsaPrivateKey, RsaPublicKey};

/// Why a key could not be loaded or a signature could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "private key file {path} is readable by group or others (mode {mode:o}); \
         run `chmod 600 {path}` and start again"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{what} is not an RSA key in a known form (PKCS#8 PEM, PKCS#1 PEM, or bare Base64 of either)")]
    Format { what: String },
    #[error("{what} is a {bits}-bit RSA key; the gateway requires 2048 bits or more")]
    TooShort { what: String, bits: usize },
    #[error("signature header is malformed: {0}")]
    Header(&'static str),
    #[error("signature does not verify")]
    Mismatch,
    #[error("key directory {0}: {1}")]
    Generate(String, String),
}

/// The merchant private key. Signing goes through aws-lc-rs, whose RSA private-key operation
/// is constant-time and blinded (the pure-Rust `rsa` crate carries RUSTSEC-2023-0071);
/// `rsa` is kept only to read every key encoding merchants have. `Debug` never prints the key.
pub struct PrivateKey {
    pair: lc::RsaKeyPair,
    public: PublicKey,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(MASKED)")
    }
}

impl PrivateKey {
    /// Loads a private key file, refusing one that group or others can read (rule 9).
    pub fn load(path: &Path) -> Result<PrivateKey, SignError> {
        check_private_permissions(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| SignError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PrivateKey::from_text(&text, &path.display().to_string())
    }

    /// Parses PKCS#8 PEM, PKCS#1 PEM, or bare Base64 of PKCS#8 or PKCS#1 DER.
    pub fn from_text(text: &str, what: &str) -> Result<PrivateKey, SignError> {
        let fmt_err = || SignError::Format {
            what: what.to_string(),
        };
        let s = text.trim();
        let key = if s.contains("BEGIN PRIVATE KEY") {
            RsaPrivateKey::from_pkcs8_pem(s).map_err(|_| fmt_err())?
        } else if s.contains("BEGIN RSA PRIVATE KEY") {
            RsaPrivateKey::from_pkcs1_pem(s).map_err(|_| fmt_err())?
        } else {
            let der = bare_base64(s).ok_or_else(fmt_err)?;
            RsaPrivateKey::from_pkcs8_der(&der)
                .or_else(|_| RsaPrivateKey::from_pkcs1_der(&der))
                .map_err(|_| fmt_err())?
        };
        PrivateKey::from_rsa(key, what)
    }

    fn from_rsa(key: RsaPrivateKey, what: &str) -> Result<PrivateKey, SignError> {
        use rsa::traits::PublicKeyParts;
        let bits = key.size() * 8;
        if bits < 2048 {
            return Err(SignError::TooShort {
                what: what.to_string(),
                bits,
            });
        }
        let fmt_err = || SignError::Format {
            what: what.to_string(),
        };
        let der = key.to_pkcs8_der().map_err(|_| fmt_err())?;
        let pair = lc::RsaKeyPair::from_pkcs8(der.as_bytes()).map_err(|_| fmt_err())?;
        let public = PublicKey::from_rsa(RsaPublicKey::from(&key), what)?;
        Ok(PrivateKey { pair, public })
    }

    /// Signs `content` with SHA256withRSA (PKCS#1 v1.5) and returns the raw signature.
    pub fn sign(&self, content: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        // aws-lc only fails here for a buffer of the wrong size, which cannot happen: it is
        // sized from the key itself.
        self.pair
            .sign(
                &lc::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                content,
                &mut sig,
            )
            .expect("signature buffer is sized from the key");
        sig
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Generates a fresh RSA-2048 key pair (the sandbox's own key, tests).
    pub fn generate() -> Result<(PrivateKey, String), SignError> {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .map_err(|e| SignError::Generate("memory".into(), e.to_string()))?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| SignError::Generate("memory".into(), e.to_string()))?
            .to_string();
        Ok((PrivateKey::from_rsa(key, "generated key")?, pem))
    }

    /// Signs the AMS content for a message and returns the whole `Signature` header value.
    pub fn sign_header(&self, key_version: &str, message: &Message<'_>) -> String {
        signature_header(key_version, &self.sign(&message.content()))
    }
}

/// A public key: the gateway's (to verify its answers and notifications) or the merchant's
/// (the sandbox verifies requests with it).
#[derive(Clone)]
pub struct PublicKey {
    pkcs1_der: Vec<u8>,
    spki_der: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bytes)", self.spki_der.len())
    }
}

impl PublicKey {
    /// Loads a public key file (SPKI PEM, PKCS#1 PEM, or bare Base64 of either).
    pub fn load(path: &Path) -> Result<PublicKey, SignError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        PublicKey::from_text(&text, &path.display().to_string())
    }

    /// Parses SPKI PEM (`BEGIN PUBLIC KEY`), PKCS#1 PEM (`BEGIN RSA PUBLIC KEY`) or bare Base64.
    pub fn from_text(text: &str, what: &str) -> Result<PublicKey, SignError> {
        let fmt_err = || SignError::Format {
            what: what.to_string(),
        };
        let s = text.trim();
        let key = if s.contains("BEGIN PUBLIC KEY") {
            RsaPublicKey::from_public_key_pem(s).map_err(|_| fmt_err())?
        } else if s.contains("BEGIN RSA PUBLIC KEY") {
            RsaPublicKey::from_pkcs1_pem(s).map_err(|_| fmt_err())?
        } else {
            let der = bare_base64(s).ok_or_else(fmt_err)?;
            RsaPublicKey::from_public_key_der(&der)
                .or_else(|_| RsaPublicKey::from_pkcs1_der(&der))
                .map_err(|_| fmt_err())?
        };
        PublicKey::from_rsa(key, what)
    }

    fn from_rsa(key: RsaPublicKey, what: &str) -> Result<PublicKey, SignError> {
        let fmt_err = || SignError::Format {
            what: what.to_string(),
        };
        Ok(PublicKey {
            pkcs1_der: key.to_pkcs1_der().map_err(|_| fmt_err())?.into_vec(),
            spki_der: key.to_public_key_der().map_err(|_| fmt_err())?.into_vec(),
        })
    }

    /// Checks a raw SHA256withRSA signature over `content`.
    pub fn verify(&self, content: &[u8], signature: &[u8]) -> bool {
        lc::UnparsedPublicKey::new(&lc::RSA_PKCS1_2048_8192_SHA256, &self.pkcs1_der)
            .verify(content, signature)
            .is_ok()
    }

    /// Checks a `Signature` header value for a message.
    pub fn verify_header(&self, message: &Message<'_>, header: &str) -> Result<(), SignError> {
        let sig = parse_signature_header(header)?;
        if self.verify(&message.content(), &sig) {
            Ok(())
        } else {
            Err(SignError::Mismatch)
        }
    }

    /// The one-line Base64 of the SPKI DER: the form the gateway's dashboard takes.
    pub fn to_base64(&self) -> String {
        B64.encode(&self.spki_der)
    }

    /// SPKI PEM.
    pub fn to_pem(&self) -> String {
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for chunk in self.to_base64().as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        out
    }
}

/// What an AMS signature covers: `METHOD URI\nclient-id.request-time.body`.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// HTTP method, `POST` for every AMS call.
    pub method: &'a str,
    /// The path actually requested (the sandbox rewrite included).
    pub uri: &'a str,
    /// The `Client-Id`.
    pub client_id: &'a str,
    /// The `Request-Time` / `Response-Time` header value, byte for byte.
    pub time: &'a str,
    /// The raw body bytes as sent or received.
    pub body: &'a [u8],
}

impl Message<'_> {
    /// The exact bytes that are signed.
    pub fn content(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            self.method.len()
                + self.uri.len()
                + self.client_id.len()
                + self.time.len()
                + self.body.len()
                + 4,
        );
        v.extend_from_slice(self.method.as_bytes());
        v.push(b' ');
        v.extend_from_slice(self.uri.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(self.client_id.as_bytes());
        v.push(b'.');
        v.extend_from_slice(self.time.as_bytes());
        v.push(b'.');
        v.extend_from_slice(self.body);
        v
    }
}

/// Form-encoding of Base64 as the official SDKs do it: `+ / =` become `%2B %2F %3D`.
const SIG_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'*');

/// Builds `algorithm=RSA256,keyVersion=N,signature=<url-encoded base64>`.
pub fn signature_header(key_version: &str, signature: &[u8]) -> String {
    let b64 = B64.encode(signature);
    format!(
        "algorithm=RSA256,keyVersion={key_version},signature={}",
        utf8_percent_encode(&b64, SIG_ENCODE)
    )
}

/// Extracts the raw signature from a `Signature` header value. Tolerates spaces around the
/// items and a signature given as raw Base64 instead of URL-encoded Base64.
pub fn parse_signature_header(header: &str) -> Result<Vec<u8>, SignError> {
    let value = header
        .split(',')
        .map(str::trim)
        .find_map(|item| item.strip_prefix("signature="))
        .ok_or(SignError::Header("no signature= item"))?
        .trim();
    if value.is_empty() {
        return Err(SignError::Header("empty signature"));
    }
    // A value that still holds '+', '/' or '=' was sent as raw Base64 (as the PHP SDK accepts it);
    // percent-decoding it would be harmless, but form-decoding would turn '+' into ' '.
    let b64 = if value.contains('%') {
        percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| SignError::Header("signature is not valid percent-encoding"))?
            .into_owned()
    } else {
        value.to_string()
    };
    B64.decode(b64.trim())
        .map_err(|_| SignError::Header("signature is not valid Base64"))
}

fn bare_base64(s: &str) -> Option<Vec<u8>> {
    let joined: String = s.split_whitespace().collect();
    if joined.is_empty() {
        return None;
    }
    B64.decode(joined).ok()
}

#[cfg(unix)]
fn check_private_permissions(path: &Path) -> Result<(), SignError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| SignError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SignError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_permissions(_path: &Path) -> Result<(), SignError> {
    Ok(())
}

/// What `posd keys generate` wrote.
#[derive(Debug)]
pub struct GeneratedKeys {
    /// The private key, PKCS#8 PEM, mode 0600.
    pub private_path: PathBuf,
    /// The public key, SPKI PEM.
    pub public_path: PathBuf,
    /// The one-line Base64 public key to paste into the gateway's dashboard.
    pub public_base64: String,
}

/// File names `posd keys generate` writes into its directory.
pub const PRIVATE_KEY_FILE: &str = "merchant_private.pem";
/// See [`PRIVATE_KEY_FILE`].
pub const PUBLIC_KEY_FILE: &str = "merchant_public.pem";

/// Generates a merchant RSA-2048 key pair into `dir`. Never overwrites an existing file: the
/// private key is created with `O_EXCL` and mode 0600 from the first byte.
pub fn generate_keys(dir: &Path) -> Result<GeneratedKeys, SignError> {
    let gen_err = |e: String| SignError::Generate(dir.display().to_string(), e);
    std::fs::create_dir_all(dir).map_err(|e| gen_err(e.to_string()))?;
    let private_path = dir.join(PRIVATE_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    for p in [&private_path, &public_path] {
        if p.exists() {
            return Err(gen_err(format!(
                "{} already exists; posd never overwrites a key (move it away first)",
                p.display()
            )));
        }
    }
    let (key, pem) = PrivateKey::generate()?;
    write_new(&private_path, pem.as_bytes(), 0o600).map_err(|e| gen_err(e.to_string()))?;
    write_new(&public_path, key.public_key().to_pem().as_bytes(), 0o644)
        .map_err(|e| gen_err(e.to_string()))?;
    Ok(GeneratedKeys {
        private_path,
        public_path,
        public_base64: key.public_key().to_base64(),
    })
}

/// Writes a file that must not exist yet, with `mode` set at creation.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERCHANT: &str = include_str!("../../tests/keys/merchant_private_pkcs8.pem");
    const MERCHANT_PUB: &str = include_str!("../../tests/keys/merchant_public.pem");

    #[test]
    fn first_vector_round_trips() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/keys/signature_vectors.json")).unwrap();
        let case = &v["cases"][0];
        let key = PrivateKey::from_text(MERCHANT, "merchant").unwrap();
        let msg = Message {
            method: "POST",
            uri: case["path"].as_str().unwrap(),
            client_id: case["client_id"].as_str().unwrap(),
            time: case["time"].as_str().unwrap(),
            body: case["body"].as_str().unwrap().as_bytes(),
        };
        assert_eq!(
            msg.content(),
            case["content_to_sign"].as_str().unwrap().as_bytes()
        );
        let header = key.sign_header("1", &msg);
        assert_eq!(header, case["signature_header"].as_str().unwrap());
        let public = PublicKey::from_text(MERCHANT_PUB, "merchant public").unwrap();
        public.verify_header(&msg, &header).unwrap();
    }
}
