//! Entry points for the fuzz targets in `fuzz/` and for the stable test that replays their
//! corpora (`tests/it/fuzz_corpus.rs`): one function per target, taking raw bytes, calling
//! the daemon's own parsers and checking what must hold for every input. A panic here is a
//! bug in the parser (or a broken invariant), never in the harness.
//!
//! Not part of the daemon's API: hidden from the docs and unused by the binary.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::devices::profile::Profile;
use crate::devices::scanner::{Frame, FrameAssembler, ScanEvent, ScanFilter};
use crate::domain::code::{CodeRules, PaymentCode};
use crate::domain::money::{Amount, Currency};
use crate::gateway::ams::client::{AmsClient, ClientSettings, MerchantIdentity, Operation};
use crate::gateway::sign::{self, Message, PrivateKey};

/// One target's entry point: raw bytes in, a panic on a broken invariant.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its corpus directory (`fuzz/corpus/<name>/`).
pub const TARGETS: &[(&str, Entry)] = &[
    ("payment_code", payment_code),
    ("amount", amount),
    ("signature_header", signature_header),
    ("ams_response", ams_response),
    ("notification", notification),
    ("config", config),
    ("scanner_framing", scanner_framing),
    ("printer_profile", printer_profile),
    ("mainland_response", mainland_response),
    ("mainland_notify", mainland_notify),
    ("statement", statement),
    ("hub_request", hub_request),
    ("hub_config", hub_config),
];

/// Splits off the first `n` bytes (fewer if the input is shorter).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

/// The next `\n`-terminated field (the rest of the input if there is no `\n`).
fn field(data: &mut &[u8]) -> String {
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let s = String::from_utf8_lossy(&data[..end]).into_owned();
    *data = &data[(end + 1).min(data.len())..];
    s
}

/// Payment codes: the default rules and a stricter variant. An accepted code is digits only,
/// within the length bounds, starts with an allowed prefix, and its masked form never shows
/// more than its first and last four digits.
pub fn payment_code(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    for rules in [
        CodeRules::default(),
        CodeRules {
            min_len: 18,
            max_len: 24,
            prefixes: vec!["28".into()],
        },
    ] {
        let Ok(code) = PaymentCode::parse(&raw, &rules) else {
            continue;
        };
        let c = code.expose();
        assert!(c.bytes().all(|b| b.is_ascii_digit()), "non-digit accepted");
        assert!(
            (rules.min_len..=rules.max_len).contains(&c.len()),
            "length {} accepted",
            c.len()
        );
        assert!(rules.prefixes.iter().any(|p| c.starts_with(p.as_str())));
        let masked = code.masked();
        assert!(
            !masked.contains(&c[4..c.len() - 4]),
            "mask shows the middle"
        );
        assert!(!format!("{code:?}").contains(c), "Debug shows the code");
        assert!(!code.to_string().contains(c), "Display shows the code");
    }
}

/// Amounts typed by a person and amounts from the wire, in every currency: an accepted amount
/// is positive, and printing then parsing it again gives the same amount.
pub fn amount(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    for currency in Currency::all() {
        if let Ok(a) = Amount::parse(&raw, currency) {
            assert!(a.minor() > 0, "{raw:?} parsed to {}", a.minor());
            assert_eq!(Amount::parse(&a.to_decimal(), currency).ok(), Some(a));
            assert_eq!(
                Amount::from_wire(&a.to_wire(), currency.code()).ok(),
                Some(a)
            );
        }
        if let Ok(a) = Amount::from_wire(&raw, currency.code()) {
            assert!(a.minor() >= 0);
            assert_eq!(
                Amount::from_wire(&a.to_wire(), currency.code()).ok(),
                Some(a)
            );
        }
    }
    // The currency code itself comes from the wire too.
    if let Some((value, code)) = raw.split_once(' ') {
        if let Ok(a) = Amount::from_wire(value, code) {
            assert_eq!(
                a.currency().code(),
                code.trim().to_ascii_uppercase().as_str()
            );
        }
    }
}

/// Keys made once per process: the merchant's (signs) and the gateway's (its public half
/// verifies answers and notifications; the harness signs with its private half).
struct Keys {
    gateway: PrivateKey,
    client: AmsClient,
}

const CLIENT_ID: &str = "SANDBOX_FUZZ";

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        // Fixed test keys (generating two RSA-2048 pairs per fuzzing process took longer
        // than libFuzzer's per-input timeout).
        let merchant = PrivateKey::from_text(
            include_str!("../tests/keys/merchant_private_pkcs8.pem"),
            "the merchant test key",
        )
        .expect("the merchant test key parses");
        let gateway = PrivateKey::from_text(
            include_str!("../tests/keys/hub/terminal_b_private.pem"),
            "the gateway test key",
        )
        .expect("the gateway test key parses");
        let t = Duration::from_secs(1);
        let settings = ClientSettings {
            base_url: "http://127.0.0.1:9".into(),
            client_id: CLIENT_ID.into(),
            key_version: "1".into(),
            merchant_key: Arc::new(merchant),
            gateway_key: gateway.public_key().clone(),
            notify_url: None,
            agent_token: None,
            insecure_http: true,
            connect_timeout: t,
            pay_timeout: t,
            inquiry_timeout: t,
            cancel_timeout: t,
            merchant: MerchantIdentity {
                merchant_id: "M".into(),
                merchant_name: "M".into(),
                merchant_mcc: "5812".into(),
                store_id: "S".into(),
                store_name: "S".into(),
                store_mcc: "5812".into(),
                terminal_id: "T".into(),
            },
        };
        let client = AmsClient::new(settings).expect("a client for a loopback URL");
        Keys { gateway, client }
    })
}

/// `Signature` header values: parsing never panics, and verifying an arbitrary header
/// against arbitrary content never succeeds.
pub fn signature_header(data: &[u8]) {
    let mut d = data;
    let header = field(&mut d);
    let _ = sign::parse_signature_header(&header);
    let msg = Message {
        method: "POST",
        uri: "/ams/api/v1/payments/pay",
        client_id: CLIENT_ID,
        time: "1",
        body: d,
    };
    assert!(
        keys()
            .gateway
            .public_key()
            .verify_header(&msg, &header)
            .is_err(),
        "an unsigned header verified"
    );
}

/// Raw gateway answers through the client's own interpretation. Layout: operation byte,
/// flags byte (bit 0: HTTP 200 else the next two bytes are the status; bits 1–3: the
/// signature, response-time and client-id headers are present, one `\n`-terminated field
/// each; `0xFF`: the harness signs the body with the gateway key), then the body. Only a
/// correctly signed answer may ever be a success; any other status than 200 is unknown.
pub fn ams_response(data: &[u8]) {
    let mut d = data;
    let op = match take(&mut d, 1).first().copied().unwrap_or(0) % 5 {
        0 => Operation::Pay,
        1 => Operation::InquiryPayment,
        2 => Operation::Cancel,
        3 => Operation::Refund,
        _ => Operation::InquiryRefund,
    };
    let flags = take(&mut d, 1).first().copied().unwrap_or(0);
    let status = if flags & 1 == 1 {
        200
    } else {
        let s = take(&mut d, 2);
        u16::from_le_bytes([
            s.first().copied().unwrap_or(0),
            s.get(1).copied().unwrap_or(0),
        ])
    };
    let sign_it = flags == 0xFF;
    let mut signature = (flags & 2 != 0).then(|| field(&mut d));
    let response_time = (flags & 4 != 0).then(|| field(&mut d));
    let client_id = (flags & 8 != 0).then(|| field(&mut d));
    let k = keys();
    if sign_it {
        let path = k.client.request_path(op);
        let msg = Message {
            method: "POST",
            uri: path,
            client_id: client_id.as_deref().unwrap_or(CLIENT_ID),
            time: response_time.as_deref().unwrap_or(""),
            body: d,
        };
        signature = Some(k.gateway.sign_header("1", &msg));
    }
    let (label, code) = crate::gateway::ams::client::fuzz_entry::interpret(
        &k.client,
        op,
        status,
        signature,
        response_time.clone(),
        client_id,
        d.to_vec(),
    );
    if status != 200 {
        assert_eq!(label, "unknown", "HTTP {status} was {label}");
    }
    if label == "success" {
        assert!(sign_it && response_time.is_some(), "an unverified success");
    }
    if label == "failed" {
        assert!(code.is_some(), "a failure without a result code");
    }
}

/// Notifications through the endpoint's own checks. Layout: flags byte (`0xFF`: the harness
/// signs the body with the gateway key), the content-type, client-id, request-time and
/// signature header values (one `\n`-terminated field each, an empty one absent), then the
/// body. Only a correctly signed notification for our client id gets past the checks, and
/// what would be recorded is exactly the body received.
pub fn notification(data: &[u8]) {
    use axum::http::{HeaderMap, HeaderValue};
    let mut d = data;
    let sign_it = take(&mut d, 1).first() == Some(&0xFF);
    let mut headers = HeaderMap::new();
    let mut client_id = None;
    for name in ["content-type", "client-id", "request-time", "signature"] {
        let v = field(&mut d);
        if name == "client-id" {
            client_id = Some(v.clone());
        }
        if v.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(name, v);
        }
    }
    let path = "/alipay/notify";
    let k = keys();
    if sign_it {
        let time = headers
            .get("request-time")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string();
        let cid = client_id.unwrap_or_default();
        let msg = Message {
            method: "POST",
            uri: path,
            client_id: cid.trim(),
            time: &time,
            body: d,
        };
        let header = k.gateway.sign_header("1", &msg);
        headers.insert("signature", HeaderValue::from_str(&header).expect("ASCII"));
    }
    let result = crate::api::notify::fuzz_entry::verify(
        k.gateway.public_key(),
        CLIENT_ID,
        path,
        &headers,
        d,
    );
    if let Ok((n, _)) = result {
        assert!(sign_it, "an unsigned notification got through");
        assert_eq!(
            n.body.as_bytes(),
            d,
            "recorded body differs from the one received"
        );
    }
}

/// `config.toml` text through the loader (parse and validate).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(text, Path::new("fuzz.toml"), Path::new("/nonexistent")) {
        let _ = cfg.code_rules();
        let _ = cfg.timezone();
        let _ = cfg.store_path();
    }
}

/// The scanner's byte stream: the input is cut into chunks at `0xFF` (as reads deliver
/// them) and fed through the frame assembler and the code filter. A frame never exceeds its
/// bound, chunking never changes the frames, and a rejected scan never shows a whole code.
pub fn scanner_framing(data: &[u8]) {
    const MAX: usize = 64;
    let mut chunked = FrameAssembler::new(MAX);
    let mut whole = FrameAssembler::new(MAX);
    let mut frames = Vec::new();
    for chunk in data.split(|&b| b == 0xFF) {
        chunked.push(chunk, &mut frames);
    }
    let mut expected = Vec::new();
    let joined: Vec<u8> = data.iter().copied().filter(|&b| b != 0xFF).collect();
    whole.push(&joined, &mut expected);
    assert_eq!(frames, expected, "chunking changed the frames");
    let _ = chunked.reset();
    let mut filter = ScanFilter::new(CodeRules::default(), Duration::from_millis(250), MAX);
    let t0 = Instant::now();
    for (i, frame) in frames.into_iter().enumerate() {
        if let Frame::Data(bytes) = &frame {
            assert!(
                !bytes.is_empty() && bytes.len() <= MAX,
                "frame of {}",
                bytes.len()
            );
        }
        let at = t0 + Duration::from_millis(100 * i as u64);
        if let Some(ScanEvent::Rejected { masked, .. }) = filter.frame(frame.clone(), at) {
            if let Frame::Data(bytes) = &frame {
                // The masked form keeps at most the first and last 4 characters of the trimmed
                // input; everything between is `*`. (An input may itself be a masked code, so
                // "the input does not appear in the mask" would be a false alarm.)
                let text = String::from_utf8_lossy(bytes);
                let n = text.trim().chars().count();
                let m: Vec<char> = masked.chars().collect();
                assert_eq!(m.len(), n, "the mask has the input's length");
                let middle = if n > 8 { &m[4..n - 4] } else { &m[..] };
                assert!(
                    middle.iter().all(|&c| c == '*'),
                    "a rejected scan shows its middle"
                );
            }
        }
    }
}

/// Printer profile TOML through the profile parser (what `[printer] profile` loads).
pub fn printer_profile(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Profile::parse(text, "fuzz");
    }
}

/// Mainland (`alipay.trade.*`) answers: the `…_response` object found in the raw text, its
/// signature, the fields. Layout: method byte, flags byte (`0xFF`: the rest is the response
/// object, which the harness wraps and signs with the gateway key as the gateway would), then
/// the body. Only a signed answer may say the pay succeeded.
pub fn mainland_response(data: &[u8]) {
    use crate::domain::machine::Answer;
    use crate::gateway::alipay_cn::{answer, client, sign as cn_sign, wire::Method};
    let mut d = data;
    let method =
        Method::ALL[usize::from(take(&mut d, 1).first().copied().unwrap_or(0)) % Method::ALL.len()];
    let sign_it = take(&mut d, 1).first() == Some(&0xFF);
    let k = keys();
    let body = if sign_it {
        let Ok(content) = std::str::from_utf8(d) else {
            return;
        };
        let sig = cn_sign::sign_rsa2(&k.gateway, content);
        format!(
            r#"{{"{}":{content},"sign":"{sig}"}}"#,
            method.response_key()
        )
        .into_bytes()
    } else {
        d.to_vec()
    };
    if let Ok(text) = std::str::from_utf8(&body) {
        let _ = cn_sign::extract(text, &method.response_key());
    }
    let reading = client::read_answer(k.gateway.public_key(), method, 200, &body);
    if method == Method::Pay && answer::pay(&reading).answer == Answer::Success {
        assert!(sign_it, "an unsigned mainland answer was taken as paid");
    }
    let _ = answer::query(&reading);
    let _ = answer::cancel(&reading);
    let _ = answer::refund(&reading);
    let _ = answer::refund_query(&reading);
}

/// Mainland notifications: the form body through its parser and verification. Layout: flags
/// byte (`0xFF`: the harness signs the parsed form with the gateway key), then the body. Only
/// a signed notification for our app id verifies.
pub fn mainland_notify(data: &[u8]) {
    use crate::gateway::alipay_cn::{notify, sign as cn_sign, wire::Params};
    let mut d = data;
    let sign_it = take(&mut d, 1).first() == Some(&0xFF);
    let k = keys();
    let mut body = d.to_vec();
    if sign_it {
        let Some(params) = Params::parse_form(d) else {
            return;
        };
        let content = notify::content(&params, true);
        let sig = cn_sign::sign_rsa2(&k.gateway, &content);
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (key, v) in params.iter() {
            if key != "sign" {
                form.append_pair(key, v);
            }
        }
        form.append_pair("sign", &sig);
        body = form.finish().into_bytes();
    }
    if let Ok(n) = notify::verify(k.gateway.public_key(), CLIENT_ID, &body) {
        assert!(sign_it, "an unsigned mainland notification verified");
        let _ = crate::api::notify_cn::to_record(&n, &body);
        let _ = crate::api::notify_cn::notified(&n);
    }
}

/// Settlement statement files (Transaction Items CSV) through the reconciliation parser.
/// Layout: the first line is the file name, the rest the file. A parsed file has rows whose
/// amounts read as minor units or decimals without a panic.
pub fn statement(data: &[u8]) {
    use crate::backoffice::reconcile::statement;
    let mut d = data;
    let name = field(&mut d);
    let _ = statement::date_from_name(&name);
    if let Ok(file) = statement::parse(&name, d) {
        for row in &file.rows {
            let _ = row.amount.as_minor_units();
            let _ = row.amount.as_decimal(row.currency);
        }
    }
}

/// A terminal's request at the hub, after its signature verified (a registered terminal may
/// still send anything): the `Request-Time` header, then the body through what the hub reads
/// before it records anything (`hub::intake`) and through the protocol conversion's readers
/// (`hub::convert`). Layout: flags byte (bit 0: the hub has a notify URL of its own), the
/// `Request-Time` line, then the body. An accepted pay is recorded with its code masked and
/// differs from the forwarded body nowhere else; a forwarded refund carries only its own
/// fields; the two readers of one body agree on its ids and amount.
pub fn hub_request(data: &[u8]) {
    use crate::hub::{convert, intake, registry::Terminal, service::parse_request_time};
    use serde_json::Value;
    let mut d = data;
    let flags = take(&mut d, 1).first().copied().unwrap_or(0);
    let time = field(&mut d);
    let _ = parse_request_time(&time);
    let terminal = Terminal {
        client_id: "T_FUZZ".into(),
        name: None,
        public_key: String::new(),
        merchant_id: "M1".into(),
        store_id: "S1".into(),
        terminal_id: "T1".into(),
        max_amount_minor: Some(1_000_000),
        enabled: true,
    };
    let notify_url = (flags & 1 == 1).then_some("https://hub.example/notify");
    let body = d;
    let from_convert = convert::pay_order(body);
    let _ = convert::payment_request_id(body);
    let _ = convert::refund_inquiry(body);
    let refund_read = convert::refund_order(body);
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        assert!(from_convert.is_err() && refund_read.is_err());
        return;
    };
    // Spacing and key order never make another body: the same body written out again (keys
    // sorted, indented) reads back to the same value and the same hash.
    let pretty = serde_json::to_vec_pretty(&v).expect("a Value serializes");
    let again: Value = serde_json::from_slice(&pretty).expect("what serde_json wrote reads back");
    assert_eq!(again, v);
    assert_eq!(intake::body_hash(&again), intake::body_hash(&v));
    if let Ok(p) = intake::pay(&v, &terminal, notify_url) {
        assert!((1..=64).contains(&p.id.len()));
        assert!(p.amount.minor() <= 1_000_000, "above the terminal's limit");
        assert_eq!(p.hash, intake::body_hash(&v));
        let code = intake::str_at(&v, &["paymentMethod", "paymentMethodId"])
            .expect("an accepted pay has its code as a string");
        let forward: Value = serde_json::from_slice(&p.forward_body).expect("forward is JSON");
        let mut recorded: Value = serde_json::from_slice(&p.recorded_body).expect("record is JSON");
        assert_eq!(
            forward
                .pointer(intake::CODE_POINTER)
                .and_then(Value::as_str),
            Some(code)
        );
        assert_eq!(
            forward.get("paymentNotifyUrl").and_then(Value::as_str),
            notify_url
        );
        let kept = recorded
            .pointer_mut(intake::CODE_POINTER)
            .expect("the record keeps the code's place");
        assert_eq!(
            kept.as_str(),
            Some(crate::domain::code::mask(code).as_str())
        );
        *kept = Value::String(code.to_string());
        assert_eq!(
            recorded, forward,
            "the record differs from the forward beyond the code"
        );
        if let Ok((order, _)) = &from_convert {
            assert_eq!(order.payment_request_id, p.id);
            assert_eq!(order.amount, p.amount);
            // The conversion trims what a scanner adds around a code, as a scan is trimmed.
            assert_eq!(
                order.code.expose(),
                code.trim_matches(|c: char| c.is_whitespace() || c == '\0')
            );
        }
    }
    if let Ok(r) = intake::refund(&v) {
        let forward: Value = serde_json::from_slice(&r.forward_body).expect("forward is JSON");
        let keys = forward.as_object().expect("an object");
        assert!(keys.keys().all(|k| [
            "refundRequestId",
            "paymentId",
            "refundAmount",
            "refundReason",
            "refundRequestTime"
        ]
        .contains(&k.as_str())));
        if let Ok(order) = &refund_read {
            assert_eq!(order.refund_request_id, r.refund_request_id);
            assert_eq!(order.payment_id, r.payment_id);
            assert_eq!(order.amount, r.amount);
        }
    }
}

/// `hub.toml` text through the hub's loader (parse and validate), and a valid config through
/// what the hub derives from it at start-up: every duration within its bounds, a request's
/// lock wait longer than any upstream call made under the lock, a lease longer than any
/// call, a worker's staleness longer than its poll.
pub fn hub_config(data: &[u8]) {
    use crate::hub::config::{HubConfig, HUB_DURATION_BOUNDS};
    use crate::hub::{service::HubRules, worker::WorkerRules};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = HubConfig::parse(text) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    let rules = HubRules::from_config(&cfg);
    let worker = WorkerRules::from_config(&cfg);
    let longest = cfg.upstream.pay_timeout().max(cfg.upstream.call_timeout());
    assert!(rules.lock_timeout > longest);
    assert!(rules.queue.lease > longest);
    assert!(worker.stale_after() > worker.poll);
    assert!(worker.active_cancel_after > cfg.hub.terminal_decision_time.0);
    let widest = HUB_DURATION_BOUNDS
        .iter()
        .map(|&(_, _, hi)| hi)
        .max()
        .expect("bounds");
    for d in [
        rules.replay_window,
        rules.queue.backoff_max,
        rules.expiry_margin,
        worker.lease,
    ] {
        assert!(d <= widest);
    }
    assert!(i64::try_from(worker.stale_after().as_millis()).is_ok());
}
