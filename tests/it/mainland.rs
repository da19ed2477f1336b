//! The Alipay mainland dialect: the official SDK's signature vectors reproduced byte for
//! byte from PKCS#1, PKCS#8 and bare keys; answers found in their raw bytes; and the client
//! against a fake mainland gateway on 127.0.0.1:0 for every kind of answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use posd::domain::machine::{Answer, Inquiry};
use posd::gateway::alipay_cn::answer::{asks_for_rescan, Cancel, Reading, RefundStatus, Signed};
use posd::gateway::alipay_cn::client::{read_answer, CnClient, CnSettings};
use posd::gateway::alipay_cn::sign::{
    extract, sign_content, sign_rsa2, verify_extracted, verify_rsa2,
};
use posd::gateway::alipay_cn::wire::{Method, Params};
use posd::gateway::sign::{PrivateKey, PublicKey};
use posd::gateway::RefundOrder;
use serde_json::Value;

use crate::support;

const APP_ID: &str = "2021000000000001";
const DEADLINE: Duration = Duration::from_millis(200);

fn vectors() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/alipay_cn/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("JSON")
}

/// The bare Base64 between the PEM markers (what the mainland key tool hands out).
fn bare(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

fn merchant_keys() -> Vec<(&'static str, PrivateKey)> {
    let pkcs1 = support::key_text("merchant_private_pkcs1.pem");
    let pkcs8 = support::key_text("merchant_private_pkcs8.pem");
    [
        ("pkcs1 pem", pkcs1.clone()),
        ("pkcs8 pem", pkcs8.clone()),
        ("pkcs1 bare", bare(&pkcs1)),
        ("pkcs8 bare", bare(&pkcs8)),
    ]
    .into_iter()
    .map(|(name, text)| (name, PrivateKey::from_text(&text, name).expect(name)))
    .collect()
}

fn params_of(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn request_vectors_reproduce_byte_for_byte_from_every_key_form() {
    let v = vectors();
    let cases = v["requests"].as_array().unwrap();
    assert!(cases.len() >= 6);
    let public = support::merchant_public();
    for (form, key) in merchant_keys() {
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let params = params_of(&case["params"]);
            let content = sign_content(
                params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &["sign"],
                true,
            );
            assert_eq!(content, case["sign_content"].as_str().unwrap(), "{name}");
            let sign = sign_rsa2(&key, &content);
            assert_eq!(sign, case["sign"].as_str().unwrap(), "{name} with {form}");
            assert!(verify_rsa2(&public, content.as_bytes(), &sign));
        }
    }
    // Bare public keys load too.
    let bare_public =
        PublicKey::from_text(&bare(&support::key_text("merchant_public.pem")), "bare").unwrap();
    let case = &cases[0];
    assert!(verify_rsa2(
        &bare_public,
        case["sign_content"].as_str().unwrap().as_bytes(),
        case["sign"].as_str().unwrap()
    ));
}

#[test]
fn a_flipped_byte_fails_anywhere() {
    let v = vectors();
    let case = &v["requests"][0];
    let content = case["sign_content"].as_str().unwrap();
    let sign = case["sign"].as_str().unwrap();
    let public = support::merchant_public();
    assert!(verify_rsa2(&public, content.as_bytes(), sign));
    let mut bytes = content.as_bytes().to_vec();
    for i in [0, bytes.len() / 2, bytes.len() - 1] {
        bytes[i] ^= 0x01;
        assert!(!verify_rsa2(&public, &bytes, sign), "content byte {i}");
        bytes[i] ^= 0x01;
    }
    let mut sig = base64_decode(sign);
    sig[10] ^= 0x80;
    assert!(!verify_rsa2(
        &public,
        content.as_bytes(),
        &base64_encode(&sig)
    ));
    // The gateway's key does not verify the merchant's signature.
    assert!(!verify_rsa2(
        &support::gateway_public(),
        content.as_bytes(),
        sign
    ));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn answers_verify_over_their_raw_bytes_with_braces_and_escaped_slashes_inside() {
    let v = vectors();
    let key = support::gateway_public();
    for case in v["responses"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let body = case["body"].as_str().unwrap();
        let key_name = body[2..body.find("\":").unwrap()].to_string();
        let found = extract(body, &key_name).unwrap();
        assert_eq!(
            found.content,
            case["signed_content"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(verify_extracted(&key, &found), Some(true), "{name}");
        // A flipped byte inside the signed object fails.
        let flipped = body.replacen("\"code\":\"", "\"code\":\" ", 1);
        let found = extract(&flipped, &key_name).unwrap();
        assert_eq!(
            verify_extracted(&key, &found),
            Some(false),
            "{name} flipped"
        );
    }
    let tricky = v["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pay_braces_and_slashes")
        .unwrap();
    let body = tricky["body"].as_str().unwrap();
    assert!(body.contains("}{") && body.contains("\\/"));
    match read_answer(&key, Method::Pay, 200, body.as_bytes()) {
        Reading::Answer { reply, signed } => {
            assert_eq!(signed, Signed::Verified);
            assert_eq!(reply.code, "10000");
            assert_eq!(
                reply.trade_no.as_deref(),
                Some("2026010222001400001234567891")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_answer_signed_before_slash_escaping_verifies_once_unescaped() {
    // The gateway sometimes signs `a/b` and sends `a\/b` (the Java SDK retries the same way).
    let key = support::gateway_key();
    let signed = r#"{"code":"10000","msg":"Success","url":"https://a/b"}"#;
    let sent = signed.replace('/', "\\/");
    let body = format!(
        r#"{{"alipay_trade_query_response":{sent},"sign":"{}"}}"#,
        sign_rsa2(&key, signed)
    );
    let found = extract(&body, "alipay_trade_query_response").unwrap();
    assert_eq!(found.content, sent);
    assert_eq!(
        verify_extracted(&support::gateway_public(), &found),
        Some(true)
    );
}

#[test]
fn notification_vector_verifies_and_a_changed_field_does_not() {
    use posd::gateway::alipay_cn::notify;
    let v = vectors();
    let case = &v["notifications"][0];
    let fields = params_of(&case["fields"]);
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        form.append_pair(k, v);
    }
    let body = form.finish();
    let params = Params::parse_form(body.as_bytes()).unwrap();
    assert_eq!(
        notify::content(&params, true),
        case["sign_content"].as_str().unwrap()
    );
    let n = notify::verify(&support::gateway_public(), APP_ID, body.as_bytes()).unwrap();
    assert_eq!(n.out_trade_no, "T1_0001_pos_20260102");
    assert_eq!(n.status, notify::TradeStatus::Success);
    let forged = body.replace("total_amount=12.34", "total_amount=1234.00");
    assert_eq!(
        notify::verify(&support::gateway_public(), APP_ID, forged.as_bytes()),
        Err(notify::NotifyError::Signature)
    );
    assert!(matches!(
        notify::verify(
            &support::gateway_public(),
            "2021999999999999",
            body.as_bytes()
        ),
        Err(notify::NotifyError::AppId(_))
    ));
    // Signed by the merchant key (someone who has our own key, or a replay of our request).
    assert_eq!(
        notify::verify(&support::merchant_public(), APP_ID, body.as_bytes()),
        Err(notify::NotifyError::Signature)
    );
}

// ---------------------------------------------------------------------------------------------
// The client against a fake mainland gateway

/// How the fake gateway answers.
#[derive(Clone)]
enum Reply {
    /// `{"<method>_response": <obj>, "sign": "<good>"}`.
    Signed(&'static str),
    /// Without `sign`.
    Unsigned(&'static str),
    /// With a `sign` over other bytes.
    WrongSign(&'static str),
    /// `error_response`, unsigned (what the gateway sends when it rejects our signature).
    ErrorUnsigned(&'static str),
    /// This status and body.
    Raw(u16, &'static str),
    /// Never answers.
    Stall,
}

struct Seen {
    params: Params,
    content_type: String,
    query: Option<String>,
    signature_ok: bool,
}

struct Fake {
    reply: Reply,
    gateway: PrivateKey,
    merchant_public: PublicKey,
    seen: Mutex<Vec<Seen>>,
}

async fn fake_handler(
    State(st): State<Arc<Fake>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::parse_form(&body).expect("a form with unique keys");
    let content = sign_content(params.iter(), &["sign"], true);
    let signature_ok = params
        .get("sign")
        .is_some_and(|s| verify_rsa2(&st.merchant_public, content.as_bytes(), s));
    let method = Method::from_name(params.get("method").unwrap_or("")).expect("known method");
    st.seen.lock().unwrap().push(Seen {
        params,
        content_type: headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
        query: uri.query().map(str::to_string),
        signature_ok,
    });
    let key = method.response_key();
    let body = match &st.reply {
        Reply::Signed(obj) => format!(
            r#"{{"{key}":{obj},"sign":"{}"}}"#,
            sign_rsa2(&st.gateway, obj)
        ),
        Reply::Unsigned(obj) => format!(r#"{{"{key}":{obj}}}"#),
        Reply::WrongSign(obj) => format!(
            r#"{{"{key}":{obj},"sign":"{}"}}"#,
            sign_rsa2(&st.gateway, &format!("{obj} "))
        ),
        Reply::ErrorUnsigned(obj) => format!(r#"{{"error_response":{obj}}}"#),
        Reply::Raw(status, body) => {
            return (StatusCode::from_u16(*status).unwrap(), body.to_string()).into_response()
        }
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            unreachable!()
        }
    };
    ([("content-type", "text/html;charset=utf-8")], body).into_response()
}

async fn fake(reply: Reply) -> (CnClient, Arc<Fake>) {
    let st = Arc::new(Fake {
        reply,
        gateway: support::gateway_key(),
        merchant_public: support::merchant_public(),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/gateway.do", axum::routing::post(fake_handler))
        .with_state(st.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = CnClient::new(settings(format!("http://{addr}/gateway.do"))).unwrap();
    (client, st)
}

fn settings(base_url: String) -> CnSettings {
    CnSettings {
        base_url,
        app_id: APP_ID.into(),
        merchant_key: support::merchant_key(),
        alipay_key: support::gateway_public(),
        notify_url: Some("https://pos.example.com/alipay/notify".into()),
        app_auth_token: None,
        store_id: Some("S7".into()),
        terminal_id: Some("T1".into()),
        trade_timeout: "5m".into(),
        insecure_http: true,
        connect_timeout: DEADLINE,
        pay_timeout: DEADLINE,
        inquiry_timeout: DEADLINE,
        cancel_timeout: DEADLINE,
    }
}

const PAY_OK: &str = r#"{"code":"10000","msg":"Success","out_trade_no":"PR1","total_amount":"12.34","trade_no":"2026010222001400001","gmt_payment":"2026-01-02 11:04:07","store_name":"a}\/b"}"#;
const PAY_WAIT: &str = r#"{"code":"10003","msg":" order success pay inprocess","out_trade_no":"PR1","trade_no":"2026010222001400001"}"#;
const PAY_UNKNOWN: &str = r#"{"code":"20000","msg":"Service Currently Unavailable","sub_code":"ACQ.SYSTEM_ERROR","sub_msg":"系统错误"}"#;
const PAY_INVALID_CODE: &str = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.PAYMENT_AUTH_CODE_INVALID","sub_msg":"支付失败，获取顾客账户信息失败"}"#;
const PAY_BALANCE: &str = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.BUYER_BALANCE_NOT_ENOUGH","sub_msg":"买家余额不足"}"#;
const PAY_HAS_SUCCESS: &str = r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_HAS_SUCCESS","sub_msg":"交易已被支付","trade_no":"2026010222001400001"}"#;
const SIGN_ERROR: &str = r#"{"code":"40002","msg":"Invalid Arguments","sub_code":"isv.invalid-signature","sub_msg":"验签出错"}"#;

fn order() -> posd::gateway::PayOrder {
    support::pay_order("PR1")
}

fn failed(code: &str) -> impl Fn(&Answer) -> bool + '_ {
    move |a| matches!(a, Answer::Failed { code: c, .. } if c == code)
}

#[tokio::test]
async fn pay_request_on_the_wire_is_a_signed_form_with_nothing_in_the_url() {
    let (client, st) = fake(Reply::Signed(PAY_OK)).await;
    let r = client.pay(&order()).await;
    assert_eq!(r.answer, Answer::Success);
    assert_eq!(r.facts.payment_id.as_deref(), Some("2026010222001400001"));
    assert_eq!(r.facts.amount.map(|a| a.minor()), Some(1234));
    assert_eq!(r.facts.time.as_deref(), Some("2026-01-02 11:04:07"));
    let seen = st.seen.lock().unwrap();
    let s = &seen[0];
    assert!(
        s.signature_ok,
        "the fake gateway verified our RSA2 signature"
    );
    assert_eq!(s.query, None, "no parameter in the URL");
    assert_eq!(
        s.content_type,
        "application/x-www-form-urlencoded; charset=utf-8"
    );
    let p = &s.params;
    for (k, v) in [
        ("app_id", APP_ID),
        ("method", "alipay.trade.pay"),
        ("format", "JSON"),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("version", "1.0"),
        ("notify_url", "https://pos.example.com/alipay/notify"),
    ] {
        assert_eq!(p.get(k), Some(v), "{k}");
    }
    assert_eq!(p.get("app_auth_token"), None, "never an empty parameter");
    let ts = p.get("timestamp").unwrap();
    let parsed = chrono::NaiveDateTime::parse_from_str(ts, "%Y-%m-%d %H:%M:%S").unwrap();
    let beijing = chrono::Utc::now().naive_utc() + chrono::Duration::hours(8);
    assert!(
        (beijing - parsed).num_seconds().abs() < 60,
        "timestamp {ts} is UTC+8"
    );
    let biz: Value = serde_json::from_str(p.get("biz_content").unwrap()).unwrap();
    assert_eq!(biz["out_trade_no"], "PR1");
    assert_eq!(biz["scene"], "bar_code");
    assert_eq!(biz["auth_code"], support::CODE);
    assert_eq!(biz["total_amount"], "12.34");
    assert_eq!(biz["product_code"], "FACE_TO_FACE_PAYMENT");
    assert_eq!(biz["subject"], "Coffee");
    assert_eq!(biz["store_id"], "S7");
    assert_eq!(biz["terminal_id"], "T1");
    assert_eq!(biz["timeout_express"], "5m");
}

/// What an answer must satisfy.
type Check = Box<dyn Fn(&Answer) -> bool>;

#[tokio::test]
async fn every_pay_answer_maps_to_its_outcome() {
    let cases: Vec<(Reply, Check)> = vec![
        (Reply::Signed(PAY_OK), Box::new(|a| *a == Answer::Success)),
        (
            Reply::Signed(PAY_WAIT),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::Signed(PAY_UNKNOWN),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::Signed(PAY_INVALID_CODE),
            Box::new(failed("ACQ.PAYMENT_AUTH_CODE_INVALID")),
        ),
        (
            Reply::Signed(PAY_BALANCE),
            Box::new(failed("ACQ.BUYER_BALANCE_NOT_ENOUGH")),
        ),
        (
            Reply::Signed(PAY_HAS_SUCCESS),
            Box::new(|a| *a == Answer::Success),
        ),
        (
            Reply::Unsigned(PAY_HAS_SUCCESS),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::ErrorUnsigned(SIGN_ERROR),
            Box::new(failed("isv.invalid-signature")),
        ),
        (
            Reply::Unsigned(PAY_BALANCE),
            Box::new(failed("ACQ.BUYER_BALANCE_NOT_ENOUGH")),
        ),
        (
            Reply::Unsigned(PAY_OK),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::WrongSign(PAY_OK),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::WrongSign(PAY_BALANCE),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::Raw(500, "Internal Server Error"),
            Box::new(|a| matches!(a, Answer::Unknown { why } if why.contains("500"))),
        ),
        (
            Reply::Raw(200, "<html>gateway busy</html>"),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::Raw(200, r#"{"alipay_trade_pay_response":{"code":"10000"}"#),
            Box::new(|a| matches!(a, Answer::Unknown { .. })),
        ),
        (
            Reply::Stall,
            Box::new(|a| matches!(a, Answer::Unknown { why } if why.contains("timed out"))),
        ),
    ];
    for (i, (reply, check)) in cases.into_iter().enumerate() {
        let (client, _st) = fake(reply).await;
        let started = std::time::Instant::now();
        let posd::gateway::Reply { answer, facts } = client.pay(&order()).await;
        assert!(check(&answer), "case {i}: {answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "case {i} ended by its deadline"
        );
        if i == 3 {
            assert!(
                asks_for_rescan(facts.result_code.as_deref().unwrap()),
                "an invalid code asks for a rescan"
            );
        }
        if i == 7 {
            assert_eq!(
                facts.payment_id, None,
                "an unsigned answer carries no facts"
            );
        }
    }
}

#[tokio::test]
async fn query_cancel_refund_and_refund_query_map_their_answers() {
    let q = |obj| async move {
        let (c, _st) = fake(Reply::Signed(obj)).await;
        c.query("PR1").await.answer
    };
    assert_eq!(
        q(r#"{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS","trade_no":"1"}"#)
            .await,
        Inquiry::Paid
    );
    assert_eq!(
        q(r#"{"code":"10000","msg":"Success","trade_status":"TRADE_FINISHED"}"#).await,
        Inquiry::Paid
    );
    assert_eq!(
        q(r#"{"code":"10000","msg":"Success","trade_status":"TRADE_CLOSED"}"#).await,
        Inquiry::Closed
    );
    assert_eq!(
        q(r#"{"code":"10000","msg":"Success","trade_status":"WAIT_BUYER_PAY"}"#).await,
        Inquiry::Pending {
            status: "WAIT_BUYER_PAY".into()
        }
    );
    assert_eq!(
        q(r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST"}"#).await,
        Inquiry::NotFound
    );

    let c = |reply| async move {
        let (client, st) = fake(reply).await;
        let v = client.cancel("PR1").await.0;
        let biz: Value = serde_json::from_str(
            st.seen.lock().unwrap()[0]
                .params
                .get("biz_content")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(biz["out_trade_no"], "PR1");
        v
    };
    assert_eq!(
        c(Reply::Signed(
            r#"{"code":"10000","msg":"Success","action":"close","retry_flag":"N"}"#
        ))
        .await,
        Cancel::Closed
    );
    assert_eq!(
        c(Reply::Signed(
            r#"{"code":"10000","msg":"Success","action":"refund","retry_flag":"N"}"#
        ))
        .await,
        Cancel::Reversed
    );
    assert!(matches!(
        c(Reply::Signed(r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.SYSTEM_ERROR","retry_flag":"Y"}"#)).await,
        Cancel::Retry { .. }
    ));
    assert!(matches!(c(Reply::Stall).await, Cancel::Retry { .. }));
    assert!(matches!(c(Reply::Raw(502, "")).await, Cancel::Retry { .. }));
    assert_eq!(
        c(Reply::Signed(r#"{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_CANCEL_TIME_OUT","retry_flag":"N"}"#)).await,
        Cancel::WindowPassed
    );

    let refund = RefundOrder {
        refund_request_id: "R1".into(),
        payment_id: "2026010222001400001".into(),
        amount: posd::domain::money::Amount::parse("5.00", support::cny()).unwrap(),
        reason: Some("return a/b".into()),
    };
    let (client, st) = fake(Reply::Signed(r#"{"code":"10000","msg":"Success","fund_change":"Y","refund_fee":"5.00","trade_no":"2026010222001400001"}"#)).await;
    let (r, moved) = client.refund(&refund).await;
    assert_eq!((r.answer, moved), (Answer::Success, Some(true)));
    assert_eq!(r.facts.amount.map(|a| a.minor()), Some(500));
    let biz: Value = serde_json::from_str(
        st.seen.lock().unwrap()[0]
            .params
            .get("biz_content")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(biz["out_request_no"], "R1");
    assert_eq!(biz["refund_amount"], "5.00");
    assert_eq!(biz["trade_no"], "2026010222001400001");
    assert_eq!(biz["refund_reason"], "return ab");
    let (client, _st) = fake(Reply::Stall).await;
    assert!(matches!(
        client.refund(&refund).await.0.answer,
        Answer::Unknown { .. }
    ));

    let (client, _st) = fake(Reply::Signed(r#"{"code":"10000","msg":"Success","out_request_no":"R1","refund_amount":"5.00","refund_status":"REFUND_SUCCESS"}"#)).await;
    assert_eq!(
        client.refund_query("2026010222001400001", "R1").await.0,
        RefundStatus::Refunded
    );
    let (client, _st) = fake(Reply::Signed(
        r#"{"code":"10000","msg":"Success","out_request_no":"R1"}"#,
    ))
    .await;
    assert_eq!(
        client.refund_query("2026010222001400001", "R1").await.0,
        RefundStatus::NotRefunded
    );
}

#[tokio::test]
async fn orders_the_mainland_wire_cannot_carry_are_not_sent() {
    let (client, st) = fake(Reply::Signed(PAY_OK)).await;
    let a = client.pay(&support::pay_order("PR-1")).await.answer;
    assert!(
        matches!(a, Answer::Failed { ref code, .. } if code == "posd.REQUEST_NOT_SENT"),
        "{a:?}"
    );
    let mut usd = order();
    usd.amount = posd::domain::money::Amount::parse(
        "1.00",
        posd::domain::money::Currency::from_code("USD").unwrap(),
    )
    .unwrap();
    assert!(matches!(
        client.pay(&usd).await.answer,
        Answer::Failed { .. }
    ));
    assert!(
        st.seen.lock().unwrap().is_empty(),
        "nothing reached the gateway"
    );
}

#[test]
fn base_urls_are_checked() {
    let mut s = settings("http://example.com/gateway.do".into());
    assert!(
        CnClient::new(s.clone()).is_err(),
        "http to a non-loopback host"
    );
    s.base_url = "https://openapi.alipay.com/gateway.do?charset=utf-8".into();
    assert!(CnClient::new(s.clone()).is_err(), "a query in the base URL");
    s.base_url = "https://openapi.alipay.com/gateway.do".into();
    s.insecure_http = false;
    assert!(CnClient::new(s).is_ok());
}

// ---------------------------------------------------------------------------------------------
// `posd config check` for the mainland keys

/// A config for `gateway_section` (replacing the example's `[gateway]`), with the merchant
/// private key at `merchant_private.pem` (0600) and the public keys beside it.
fn config_with(dir: &std::path::Path, gateway_section: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    for (name, mode) in [
        ("merchant_private_pkcs1.pem", 0o600),
        ("merchant_public.pem", 0o644),
        ("gateway_public.pem", 0o644),
    ] {
        let to = dir.join(name);
        std::fs::copy(support::keys_dir().join(name), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let example = include_str!("../../config.toml");
    let mut out = String::new();
    let mut skipping = false;
    for line in example.lines() {
        if line.starts_with('[') {
            skipping = line.trim() == "[gateway]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(gateway_section);
    let path = dir.join("config.toml");
    std::fs::write(&path, out).unwrap();
    path
}

fn config_check(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_posd"))
        .args(["config", "check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn config_check_refuses_our_own_public_key_as_the_gateways_in_both_dialects() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let mainland = |alipay_key: &str| {
        format!(
            "[gateway]\nkind = \"alipay_cn\"\napp_id = \"{APP_ID}\"\nmerchant_private_key = \"{d}/merchant_private_pkcs1.pem\"\nalipay_public_key = \"{d}/{alipay_key}\"\n"
        )
    };
    let ams = |gateway_key: &str| {
        format!(
            "[gateway]\nkind = \"alipay_plus\"\nbase_url = \"https://open-sea-global.alipay.com\"\nclient_id = \"2188120000000001\"\nmerchant_private_key = \"{d}/merchant_private_pkcs1.pem\"\ngateway_public_key = \"{d}/{gateway_key}\"\n"
        )
    };
    let good = config_check(&config_with(dir.path(), &mainland("gateway_public.pem")));
    assert_eq!(good.status.code(), Some(0), "{good:?}");
    assert!(String::from_utf8_lossy(&good.stdout)
        .contains("Alipay mainland at https://openapi.alipay.com/gateway.do"));
    for (section, key) in [
        (mainland("merchant_public.pem"), "gateway.alipay_public_key"),
        (ams("merchant_public.pem"), "gateway.gateway_public_key"),
    ] {
        let out = config_check(&config_with(dir.path(), &section));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(err.contains(key) && err.contains("our own"), "{err}");
    }
    let good = config_check(&config_with(dir.path(), &ams("gateway_public.pem")));
    assert_eq!(good.status.code(), Some(0), "{good:?}");
}

#[test]
fn mainland_config_is_validated_with_messages_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let base = format!(
        "[gateway]\nkind = \"alipay_cn\"\nmerchant_private_key = \"{d}/merchant_private_pkcs1.pem\"\nalipay_public_key = \"{d}/gateway_public.pem\"\n"
    );
    for (section, key, hint) in [
        (base.clone(), "gateway.app_id", "required"),
        (format!("{base}app_id = \"abc\"\n"), "gateway.app_id", "digits"),
        (format!("{base}app_id = \"{APP_ID}\"\nsign_type = \"RSA\"\n"), "gateway.sign_type", "RSA2"),
        (
            format!("{base}app_id = \"{APP_ID}\"\nbase_url = \"http://openapi.alipay.com/gateway.do\"\n"),
            "gateway.base_url",
            "https",
        ),
        (
            format!("[gateway]\nkind = \"alipay_cn\"\napp_id = \"{APP_ID}\"\nmerchant_private_key = \"{d}/merchant_private_pkcs1.pem\"\n"),
            "gateway.alipay_public_key",
            "支付宝公钥",
        ),
        (
            "[gateway]\nkind = \"alipay_plus\"\ndialect = \"alipay_cn\"\n".to_string(),
            "gateway.dialect",
            "sandbox",
        ),
    ] {
        let out = config_check(&config_with(dir.path(), &section));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{section}: {out:?}");
        assert!(err.contains(key) && err.contains(hint), "{section}: {err}");
    }
    // The sandbox in the mainland dialect needs no keys and takes 16-24 digit codes.
    let cfg_path = config_with(
        dir.path(),
        "[gateway]\nkind = \"sandbox\"\ndialect = \"alipay_cn\"\n",
    );
    let out = config_check(&cfg_path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let cfg = posd::config::Config::load(&cfg_path).unwrap();
    assert!(cfg.mainland());
    let rules = cfg.code_rules();
    assert_eq!((rules.min_len, rules.max_len), (16, 24));
}

#[tokio::test]
async fn a_pay_with_an_expiry_sends_time_expire_in_beijing_time_instead_of_timeout_express() {
    let (client, st) = fake(Reply::Signed(PAY_OK)).await;
    let mut o = order();
    o.expires_at = Some(chrono::DateTime::parse_from_rfc3339("2026-01-02T03:05:00Z").unwrap());
    assert_eq!(client.pay(&o).await.answer, Answer::Success);
    let seen = st.seen.lock().unwrap();
    let biz: Value = serde_json::from_str(seen[0].params.get("biz_content").unwrap()).unwrap();
    assert_eq!(biz["time_expire"], "2026-01-02 11:05:00");
    assert!(biz.get("timeout_express").is_none(), "{biz}");
}

#[tokio::test]
async fn every_call_reaches_the_metrics_observer_with_its_outcome_and_code() {
    use posd::gateway::client::{CallRecord, Operation};
    for (reply, want) in [
        (Reply::Signed(PAY_OK), ("success", Some("10000"))),
        (
            Reply::Signed(PAY_BALANCE),
            ("failed", Some("ACQ.BUYER_BALANCE_NOT_ENOUGH")),
        ),
        (Reply::WrongSign(PAY_OK), ("unknown", Some("10000"))),
        (Reply::Raw(500, ""), ("unknown", None)),
    ] {
        let seen: Arc<Mutex<Vec<CallRecord>>> = Arc::default();
        let (client, _st) = fake(reply).await;
        let sink = seen.clone();
        let client = client.with_observer(Arc::new(move |r: &CallRecord| {
            sink.lock().unwrap().push(r.clone())
        }));
        client.pay(&order()).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].operation, Operation::Pay);
        assert_eq!((seen[0].outcome, seen[0].result_code.as_deref()), want);
    }
}

// ---------------------------------------------------------------------------------------------
// `gateway.ca_file`: a private gateway (or a hub) whose certificate a private CA signed

fn cn_tls(name: &str) -> std::path::PathBuf {
    support::keys_dir().join("cn_tls").join(name)
}

/// The fake gateway answering `reply`, over TLS with a certificate the test CA signed.
async fn fake_tls(reply: Reply) -> (String, Arc<Fake>, tokio_util::sync::CancellationToken) {
    let st = Arc::new(Fake {
        reply,
        gateway: support::gateway_key(),
        merchant_public: support::merchant_public(),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/gateway.do", axum::routing::post(fake_handler))
        .with_state(st.clone());
    let tls =
        posd::hub::server::tls_config(&cn_tls("gateway_cert.pem"), &cn_tls("gateway_key.pem"))
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(posd::hub::server::serve_tls(
        listener,
        tls,
        app,
        stop.clone(),
    ));
    (format!("https://{addr}/gateway.do"), st, stop)
}

#[tokio::test]
async fn ca_file_roots_are_trusted_and_without_them_the_private_gateway_is_unknown() {
    let (url, st, stop) = fake_tls(Reply::Signed(PAY_OK)).await;
    let https = CnSettings {
        insecure_http: false,
        ..settings(url)
    };
    let ca = std::fs::read(cn_tls("ca.pem")).unwrap();
    // Trusting the private CA: the certificate verifies and the pay is answered.
    let trusted = CnClient::new_with_roots(https.clone(), Some(&ca)).unwrap();
    assert_eq!(trusted.pay(&order()).await.answer, Answer::Success);
    assert_eq!(st.seen.lock().unwrap().len(), 1);
    // Without it verification stays on: the handshake fails, the answer is unknown (never a
    // failure), and nothing reached the gateway.
    let untrusted = CnClient::new(https.clone()).unwrap();
    let r = untrusted.pay(&order()).await;
    assert!(matches!(r.answer, Answer::Unknown { .. }), "{r:?}");
    assert!(matches!(
        untrusted.cancel("PR1").await.0,
        Cancel::Retry { .. }
    ));
    assert_eq!(st.seen.lock().unwrap().len(), 1, "no request got through");
    // Another CA is not this one.
    let other = std::fs::read(cn_tls("other_ca.pem")).unwrap();
    let wrong = CnClient::new_with_roots(https, Some(&other)).unwrap();
    assert!(matches!(
        wrong.pay(&order()).await.answer,
        Answer::Unknown { .. }
    ));
    assert_eq!(st.seen.lock().unwrap().len(), 1);
    stop.cancel();
}

#[tokio::test]
async fn the_daemon_builds_the_mainland_client_with_gateway_ca_file() {
    let (url, st, stop) = fake_tls(Reply::Signed(PAY_OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let section = |extra: &str| {
        format!(
            "[gateway]\nkind = \"alipay_cn\"\napp_id = \"{APP_ID}\"\nbase_url = \"{url}\"\nmerchant_private_key = \"{d}/merchant_private_pkcs1.pem\"\nalipay_public_key = \"{d}/gateway_public.pem\"\n{extra}"
        )
    };
    let with_ca = format!("ca_file = \"{}\"\n", cn_tls("ca.pem").display());
    let cfg = posd::config::Config::load(&config_with(dir.path(), &section(&with_ca))).unwrap();
    let (client, _) = posd::daemon::connect_mainland(&cfg, None).await.unwrap();
    assert_eq!(client.pay(&order()).await.answer, Answer::Success);
    let cfg = posd::config::Config::load(&config_with(dir.path(), &section(""))).unwrap();
    let (client, _) = posd::daemon::connect_mainland(&cfg, None).await.unwrap();
    assert!(matches!(
        client.pay(&order()).await.answer,
        Answer::Unknown { .. }
    ));
    assert_eq!(st.seen.lock().unwrap().len(), 1);
    // A ca_file that cannot be read stops the start, naming the key.
    let missing = format!("ca_file = \"{d}/missing.pem\"\n");
    let cfg = posd::config::Config::load(&config_with(dir.path(), &section(&missing))).unwrap();
    let Err(err) = posd::daemon::connect_mainland(&cfg, None).await else {
        panic!("an unreadable ca_file is refused");
    };
    assert!(format!("{err:#}").contains("gateway.ca_file"), "{err:#}");
    stop.cancel();
}

/// Every unknown kind of answer — `20000`, an unsigned or wrongly signed success, HTTP 500,
/// garbage, no answer in time — is unknown for the query, the cancel (resend), the refund and
/// the refund query too, never a result; and an unsigned `error_response` is a refusal of the
/// call only where a failure can be taken unsigned.
#[tokio::test]
async fn query_cancel_refund_and_refund_query_read_every_unknown_answer_as_unknown() {
    const SUCCESS: &str = r#"{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS","action":"refund","fund_change":"Y","refund_status":"REFUND_SUCCESS","trade_no":"2026010222001400001"}"#;
    let refund = RefundOrder {
        refund_request_id: "R1".into(),
        payment_id: "2026010222001400001".into(),
        amount: posd::domain::money::Amount::parse("5.00", support::cny()).unwrap(),
        reason: None,
    };
    let unknown = [
        ("20000", Reply::Signed(PAY_UNKNOWN)),
        ("unsigned success", Reply::Unsigned(SUCCESS)),
        ("wrong sign", Reply::WrongSign(SUCCESS)),
        ("HTTP 500", Reply::Raw(500, "Internal Server Error")),
        ("garbage", Reply::Raw(200, "<html>busy</html>")),
        (
            "cut short",
            Reply::Raw(200, r#"{"alipay_trade_query_response":{"code":"10000""#),
        ),
        ("timeout", Reply::Stall),
    ];
    for (name, reply) in unknown {
        let (client, _st) = fake(reply).await;
        let q = client.query("PR1").await.answer;
        assert!(matches!(q, Inquiry::Unknown { .. }), "{name}: query {q:?}");
        let c = client.cancel("PR1").await.0;
        assert!(matches!(c, Cancel::Retry { .. }), "{name}: cancel {c:?}");
        let r = client.refund(&refund).await.0.answer;
        assert!(matches!(r, Answer::Unknown { .. }), "{name}: refund {r:?}");
        let rq = client.refund_query(&refund.payment_id, "R1").await.0;
        assert!(
            matches!(rq, RefundStatus::Unknown { .. }),
            "{name}: refund query {rq:?}"
        );
    }
    // The gateway's unsigned protocol error refuses the call: a query that cannot be made
    // goes to cancel, a refund is refused; neither is a result about the trade.
    let (client, _st) = fake(Reply::ErrorUnsigned(SIGN_ERROR)).await;
    assert_eq!(
        client.query("PR1").await.answer,
        Inquiry::Failed {
            code: "isv.invalid-signature".into()
        }
    );
    assert!(matches!(
        client.refund(&refund).await.0.answer,
        Answer::Failed { ref code, .. } if code == "isv.invalid-signature"
    ));
}
