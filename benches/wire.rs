//! Wire benchmarks: RSA-2048 signing (aws-lc-rs, with the pure-Rust `rsa` crate for
//! comparison) and verification, a full pay request built, serialized and signed without
//! network, and the two input parsers on the cashier path.
//!
//! Run with `cargo bench --bench wire`; compare `sign` with `openssl speed -seconds 3 rsa2048`
//! (the design target is within 1.5× of OpenSSL's sign time).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::money::{Amount, Currency};
use posd::gateway::client::{AmsClient, ClientSettings, MerchantIdentity, Operation};
use posd::gateway::sign::{parse_signature_header, Message, PrivateKey, PublicKey};
use posd::gateway::PayOrder;

#[path = "floor.rs"]
mod floor;

const MERCHANT_PRIVATE: &str = include_str!("../tests/keys/merchant_private_pkcs8.pem");
const MERCHANT_PUBLIC: &str = include_str!("../tests/keys/merchant_public.pem");
const GATEWAY_PUBLIC: &str = include_str!("../tests/keys/gateway_public.pem");
const CODE: &str = "281234567890123456";

/// The signed content of a realistic pay request (about 800 bytes).
fn pay_content() -> Vec<u8> {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../tests/keys/signature_vectors.json"))
            .expect("vectors parse");
    vectors["cases"][0]["content_to_sign"]
        .as_str()
        .expect("content_to_sign is a string")
        .as_bytes()
        .to_vec()
}

fn client(key: Arc<PrivateKey>) -> AmsClient {
    AmsClient::new(ClientSettings {
        base_url: "https://open-sea-global.alipay.com".into(),
        client_id: "SANDBOX_5Y3A2N2YEB3002022".into(),
        key_version: "1".into(),
        merchant_key: key,
        gateway_key: PublicKey::from_text(GATEWAY_PUBLIC, "gateway").expect("gateway key"),
        notify_url: Some("https://pos.example.com/alipay/notify".into()),
        agent_token: None,
        insecure_http: false,
        connect_timeout: Duration::from_secs(3),
        pay_timeout: Duration::from_secs(5),
        inquiry_timeout: Duration::from_secs(3),
        cancel_timeout: Duration::from_secs(3),
        merchant: MerchantIdentity {
            merchant_id: "M0001".into(),
            merchant_name: "Demo Cafe".into(),
            merchant_mcc: "5812".into(),
            store_id: "S01".into(),
            store_name: "Demo Cafe Central".into(),
            store_mcc: "5812".into(),
            terminal_id: "T0001".into(),
        },
    })
    .expect("client builds")
}

fn signing(c: &mut Criterion) {
    let key = PrivateKey::from_text(MERCHANT_PRIVATE, "merchant").expect("merchant key");
    let public = PublicKey::from_text(MERCHANT_PUBLIC, "merchant public").expect("public key");
    let content = pay_content();
    let sig = key.sign(&content);
    assert!(
        public.verify(&content, &sig),
        "benchmark inputs must verify"
    );

    let mut g = c.benchmark_group("rsa2048");
    g.bench_function("sign (aws-lc-rs)", |b| {
        b.iter(|| key.sign(black_box(&content)))
    });
    g.bench_function("verify (aws-lc-rs)", |b| {
        b.iter(|| public.verify(black_box(&content), black_box(&sig)))
    });
    {
        use rsa::pkcs1v15::SigningKey;
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::Signer;
        let rsa_key = rsa::RsaPrivateKey::from_pkcs8_pem(MERCHANT_PRIVATE).expect("rsa key");
        let signer = SigningKey::<sha2::Sha256>::new(rsa_key);
        let rsa_sig: rsa::pkcs1v15::Signature = signer.sign(&content);
        assert_eq!(
            rsa::signature::SignatureEncoding::to_vec(&rsa_sig),
            sig,
            "same bytes as aws-lc-rs"
        );
        g.bench_function("sign (rsa 0.9, for comparison)", |b| {
            b.iter(|| signer.sign(black_box(&content)))
        });
    }
    g.finish();

    let header = key.sign_header(
        "1",
        &Message {
            method: "POST",
            uri: "/ams/api/v1/payments/pay",
            client_id: "SANDBOX_5Y3A2N2YEB3002022",
            time: "1700000000000",
            body: b"{}",
        },
    );
    c.bench_function("parse_signature_header", |b| {
        b.iter(|| parse_signature_header(black_box(&header)))
    });
}

fn pay_request(c: &mut Criterion) {
    let client = client(Arc::new(
        PrivateKey::from_text(MERCHANT_PRIVATE, "merchant").expect("merchant key"),
    ));
    let cny = Currency::from_code("CNY").expect("CNY");
    let order = PayOrder {
        payment_request_id: "20261121101530T0001000000012340000042817263".into(),
        amount: Amount::parse("12.34", cny).expect("amount"),
        code: PaymentCode::parse(CODE, &CodeRules::default()).expect("code"),
        order_ref: Some("A-1001".into()),
        description: "Coffee".into(),
        terminal_time: chrono::DateTime::parse_from_rfc3339("2026-11-21T10:15:30+08:00")
            .expect("time"),
        expires_at: None,
    };
    c.bench_function("pay request: build + serialize + sign", |b| {
        b.iter(|| {
            let body =
                serde_json::to_vec(&client.pay_request(black_box(&order))).expect("serializes");
            let sig = client.sign(Operation::Pay, "1700000000000", &body);
            (body, sig)
        })
    });
    c.bench_function("pay request: build + serialize (no signing)", |b| {
        b.iter(|| serde_json::to_vec(&client.pay_request(black_box(&order))).expect("serializes"))
    });
}

fn parsers(c: &mut Criterion) {
    let cny = Currency::from_code("CNY").expect("CNY");
    let rules = CodeRules::default();
    c.bench_function("Amount::parse", |b| {
        b.iter(|| Amount::parse(black_box("12345.67"), cny))
    });
    c.bench_function("PaymentCode::parse", |b| {
        b.iter(|| PaymentCode::parse(black_box("281234567890123456\r\n"), &rules))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = signing, pay_request, parsers
}
/// The pay request's own rate, measured in the same run as the floors and printed beside
/// them: building, serializing and signing needs one sign and no commit.
fn floors() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 5 } else { 500 };
    let dir = tempfile::tempdir().expect("temp dir");
    let floors = floor::Floors::measure(dir.path(), if quick { 5 } else { 200 }, n);
    let client = client(Arc::new(
        PrivateKey::from_text(MERCHANT_PRIVATE, "merchant").expect("merchant key"),
    ));
    let cny = Currency::from_code("CNY").expect("CNY");
    let order = PayOrder {
        payment_request_id: "20261121101530T0001000000012340000042817263".into(),
        amount: Amount::parse("12.34", cny).expect("amount"),
        code: PaymentCode::parse(CODE, &CodeRules::default()).expect("code"),
        order_ref: Some("A-1001".into()),
        description: "Coffee".into(),
        terminal_time: chrono::DateTime::parse_from_rfc3339("2026-11-21T10:15:30+08:00")
            .expect("time"),
        expires_at: None,
    };
    // One thread per core, as the ceiling assumes.
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..floors.cores {
            s.spawn(|| {
                for _ in 0..n {
                    let body = serde_json::to_vec(&client.pay_request(black_box(&order)))
                        .expect("serializes");
                    black_box(client.sign(Operation::Pay, "1700000000000", &body));
                }
            });
        }
    });
    let rate = (n * floors.cores) as f64 / t0.elapsed().as_secs_f64();
    floors.report(
        "pay requests built + serialized + signed",
        rate,
        floor::PerItem {
            fsyncs: 0.0,
            fsyncs_are: "none",
            signs: 1.0,
            verifies: 0.0,
        },
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    floors();
}
