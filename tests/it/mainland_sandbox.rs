//! The sandbox in the mainland dialect through the real `CnClient`, and the sandbox's sticky,
//! time-boxed scenario overrides and delayed outcomes through its admin route, for both
//! dialects (each through its real client and the `Gateway` trait the engine uses).

use std::sync::Arc;
use std::time::Duration;

use posd::domain::code::{CodeRules, PaymentCode};
use posd::domain::machine::{Answer, Inquiry};
use posd::gateway::alipay_cn::{CnClient, CnSettings};
use posd::gateway::client::{AmsClient, ClientSettings, MerchantIdentity};
use posd::gateway::sandbox::{Sandbox, SandboxHandle, SandboxSettings};
use posd::gateway::{Gateway, PayOrder, RefundOrder};
use serde_json::{json, Value};

use crate::support;

const DEADLINE: Duration = Duration::from_millis(400);

async fn start() -> (tempfile::TempDir, SandboxHandle) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = SandboxSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("sandbox.sqlite3"),
        support::gateway_key(),
        support::merchant_public(),
    );
    settings.cancel_outage = Duration::from_millis(300);
    (dir, Sandbox::start(settings).await.unwrap())
}

fn mainland(sandbox: &SandboxHandle) -> Arc<dyn Gateway> {
    Arc::new(
        CnClient::new(CnSettings {
            base_url: format!("{}/gateway.do", sandbox.base_url()),
            app_id: "9021000000000001".into(),
            merchant_key: support::merchant_key(),
            alipay_key: support::gateway_public(),
            notify_url: None,
            app_auth_token: None,
            store_id: Some("S1".into()),
            terminal_id: Some("T1".into()),
            trade_timeout: "5m".into(),
            insecure_http: true,
            connect_timeout: Duration::from_secs(1),
            pay_timeout: DEADLINE,
            inquiry_timeout: DEADLINE,
            cancel_timeout: DEADLINE,
        })
        .unwrap(),
    )
}

fn ams(sandbox: &SandboxHandle) -> Arc<dyn Gateway> {
    Arc::new(
        AmsClient::new(ClientSettings {
            base_url: sandbox.base_url(),
            client_id: "SANDBOX_POSD_TEST".into(),
            key_version: "1".into(),
            merchant_key: support::merchant_key(),
            gateway_key: support::gateway_public(),
            notify_url: None,
            agent_token: None,
            insecure_http: true,
            connect_timeout: Duration::from_secs(1),
            pay_timeout: DEADLINE,
            inquiry_timeout: DEADLINE,
            cancel_timeout: DEADLINE,
            merchant: MerchantIdentity {
                merchant_id: "M1".into(),
                merchant_name: "Test Merchant".into(),
                merchant_mcc: "5812".into(),
                store_id: "S1".into(),
                store_name: "Test Store".into(),
                store_mcc: "5812".into(),
                terminal_id: "T1".into(),
            },
        })
        .unwrap(),
    )
}

fn order(id: &str, last2: &str) -> PayOrder {
    let mut o = support::pay_order(id);
    o.code =
        PaymentCode::parse(&format!("2812345678901234{last2}"), &CodeRules::default()).unwrap();
    o
}

fn failed_with(a: &Answer) -> &str {
    match a {
        Answer::Failed { code, .. } => code,
        other => panic!("not a failure: {other:?}"),
    }
}

#[tokio::test]
async fn the_mainland_sandbox_plays_each_row_through_the_real_client() {
    let (_dir, sandbox) = start().await;
    let g = mainland(&sandbox);
    let paid = g.pay(&order("R00", "00")).await;
    assert_eq!(paid.answer, Answer::Success);
    let trade = paid.facts.payment_id.clone().expect("trade_no");
    assert_eq!(paid.facts.amount.map(|a| a.minor()), Some(1234));
    // A repeat answers ACQ.TRADE_HAS_SUCCESS, which is success, never a second charge.
    assert_eq!(g.pay(&order("R00", "00")).await.answer, Answer::Success);
    assert_eq!(g.inquiry_payment("R00").await.answer, Inquiry::Paid);
    assert_eq!(
        failed_with(&g.pay(&order("R80", "80")).await.answer),
        "ACQ.BUYER_BALANCE_NOT_ENOUGH"
    );
    assert_eq!(
        failed_with(&g.pay(&order("R81", "81")).await.answer),
        "ACQ.PAYMENT_AUTH_CODE_INVALID"
    );
    assert_eq!(g.inquiry_payment("R80").await.answer, Inquiry::NotFound);
    // 82: waiting for the buyer, pending twice, then paid.
    assert!(matches!(
        g.pay(&order("R82", "82")).await.answer,
        Answer::Unknown { .. }
    ));
    for _ in 0..2 {
        assert!(matches!(
            g.inquiry_payment("R82").await.answer,
            Inquiry::Pending { .. }
        ));
    }
    assert_eq!(g.inquiry_payment("R82").await.answer, Inquiry::Paid);
    // 83: cancelled unpaid (action=close); 84: no answer but charged; 85: never arrived.
    assert!(matches!(
        g.pay(&order("R83", "83")).await.answer,
        Answer::Unknown { .. }
    ));
    let closed = g.cancel("R83").await;
    assert_eq!(closed.answer, Answer::Success);
    assert!(!closed.facts.cancel_refunded, "action=close: never charged");
    assert_eq!(g.inquiry_payment("R83").await.answer, Inquiry::Closed);
    assert!(matches!(
        g.pay(&order("R84", "84")).await.answer,
        Answer::Unknown { .. }
    ));
    assert_eq!(g.inquiry_payment("R84").await.answer, Inquiry::Paid);
    assert!(matches!(
        g.inquiry_payment("R85").await.answer,
        Inquiry::NotFound
    ));
    // 87: too late to cancel, refund instead; 88: a wrong signature is unknown, found by query.
    assert!(matches!(
        g.pay(&order("R87", "87")).await.answer,
        Answer::Unknown { .. }
    ));
    assert!(matches!(
        g.cancel("R87").await.answer,
        Answer::Failed {
            refusal: posd::gateway::Refusal::CancelWindowPassed,
            ..
        }
    ));
    let r88 = g.pay(&order("R88", "88")).await;
    assert!(
        matches!(&r88.answer, Answer::Unknown { why } if why.contains("signature")),
        "{r88:?}"
    );
    assert_eq!(g.inquiry_payment("R88").await.answer, Inquiry::Paid);
    // Refunds of the paid row: partial, repeated (no second refund), too much.
    let refund = |id: &str, amount: &str| RefundOrder {
        refund_request_id: id.into(),
        payment_id: trade.clone(),
        amount: posd::domain::money::Amount::parse(amount, support::cny()).unwrap(),
        reason: None,
    };
    assert_eq!(
        g.refund(&refund("RF1", "10.00")).await.answer,
        Answer::Success
    );
    let again = g.refund(&refund("RF1", "10.00")).await;
    assert_eq!(again.answer, Answer::Success);
    assert_eq!(
        again.facts.amount.map(|a| a.minor()),
        Some(1000),
        "cumulative refund_fee"
    );
    assert_eq!(
        failed_with(&g.refund(&refund("RF2", "3.00")).await.answer),
        "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    );
    assert_eq!(
        g.inquiry_refund(&refund("RF1", "10.00")).await.answer,
        Answer::Success
    );
    assert!(matches!(
        g.inquiry_refund(&refund("RF2", "3.00")).await.answer,
        Answer::Failed { .. }
    ));
    // A cancel of a charged trade refunds it (action=refund): confirmed, and said so.
    let reversed = g.cancel("R84").await;
    assert_eq!(reversed.answer, Answer::Success);
    assert!(
        reversed.facts.cancel_refunded,
        "action=refund: {reversed:?}"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_request_signed_with_another_key_gets_the_unsigned_error_response() {
    let (_dir, sandbox) = start().await;
    // Signed with a key that is not the merchant's.
    let client = CnClient::new(CnSettings {
        base_url: format!("{}/gateway.do", sandbox.base_url()),
        app_id: "9021000000000001".into(),
        merchant_key: Arc::new(support::gateway_key()),
        alipay_key: support::gateway_public(),
        notify_url: None,
        app_auth_token: None,
        store_id: None,
        terminal_id: None,
        trade_timeout: "5m".into(),
        insecure_http: true,
        connect_timeout: Duration::from_secs(1),
        pay_timeout: DEADLINE,
        inquiry_timeout: DEADLINE,
        cancel_timeout: DEADLINE,
    })
    .unwrap();
    let r = client.pay(&order("BADKEY", "00")).await;
    assert_eq!(failed_with(&r.answer), "isv.invalid-signature");
    assert_eq!(sandbox.counts().rejected, 1);
    assert_eq!(sandbox.counts().pay, 1);
    sandbox.shutdown().await;
}

async fn admin(
    sandbox: &SandboxHandle,
    method: reqwest::Method,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req =
        reqwest::Client::new().request(method, format!("{}/sandbox/override", sandbox.base_url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_sticky_override_rules_new_pays_in_both_dialects_until_it_ends() {
    let (_dir, sandbox) = start().await;
    let (s, v) = admin(
        &sandbox,
        reqwest::Method::PUT,
        Some(json!({"scenario": "80", "for": "30m"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["override"]["scenario"], 80);
    let (_, v) = admin(&sandbox, reqwest::Method::GET, None).await;
    assert_eq!(v["override"]["scenario"], 80, "sticky: still there");
    for (name, g) in [("ams", ams(&sandbox)), ("alipay_cn", mainland(&sandbox))] {
        // A code ending in 00 would pay; the override declines it.
        let r = g.pay(&order(&format!("O1{name}"), "00")).await;
        assert!(matches!(r.answer, Answer::Failed { .. }), "{name}: {r:?}");
    }
    let (s, v) = admin(&sandbox, reqwest::Method::DELETE, None).await;
    assert_eq!((s, &v["override"]), (200, &Value::Null));
    for (name, g) in [("ams", ams(&sandbox)), ("alipay_cn", mainland(&sandbox))] {
        assert_eq!(
            g.pay(&order(&format!("O2{name}"), "00")).await.answer,
            Answer::Success,
            "{name}"
        );
    }
    // Time-boxed: an override for 300 ms no longer applies after it.
    admin(
        &sandbox,
        reqwest::Method::PUT,
        Some(json!({"scenario": "89", "for": "300ms"})),
    )
    .await;
    let g = mainland(&sandbox);
    assert!(matches!(
        g.pay(&order("O3", "00")).await.answer,
        Answer::Failed { .. }
    ));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(g.pay(&order("O4", "00")).await.answer, Answer::Success);
    let (_, v) = admin(&sandbox, reqwest::Method::GET, None).await;
    assert_eq!(v["override"], Value::Null);
    // Bad requests say what to send and change nothing.
    for bad in [
        json!({"scenario": "8"}),
        json!({"scenario": "83", "approve_after": "5s"}),
        json!({"scenario": "83", "for": "3h"}),
        json!({}),
    ] {
        let (s, v) = admin(&sandbox, reqwest::Method::PUT, Some(bad.clone())).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, v) = admin(&sandbox, reqwest::Method::GET, None).await;
    assert_eq!(v["override"], Value::Null);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_delayed_outcome_approves_on_the_first_inquiry_after_its_delay_in_both_dialects() {
    let (_dir, sandbox) = start().await;
    let (s, _) = admin(
        &sandbox,
        reqwest::Method::PUT,
        Some(json!({"approve_after": "300ms"})),
    )
    .await;
    assert_eq!(s, 200);
    let gateways = [("ams", ams(&sandbox)), ("alipay_cn", mainland(&sandbox))];
    for (name, g) in &gateways {
        let r = g.pay(&order(&format!("D{name}"), "00")).await;
        assert!(
            matches!(r.answer, Answer::Unknown { .. }),
            "{name}: in process, {r:?}"
        );
        assert!(
            matches!(
                g.inquiry_payment(&format!("D{name}")).await.answer,
                Inquiry::Pending { .. }
            ),
            "{name}"
        );
    }
    tokio::time::sleep(Duration::from_millis(350)).await;
    for (name, g) in &gateways {
        assert_eq!(
            g.inquiry_payment(&format!("D{name}")).await.answer,
            Inquiry::Paid,
            "{name}"
        );
        assert_eq!(
            g.inquiry_payment(&format!("D{name}")).await.answer,
            Inquiry::Paid,
            "{name}: stays paid"
        );
    }
    // A delayed sale cancelled before its approval stays cancelled.
    let g = mainland(&sandbox);
    assert!(matches!(
        g.pay(&order("DC", "00")).await.answer,
        Answer::Unknown { .. }
    ));
    assert_eq!(g.cancel("DC").await.answer, Answer::Success);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(g.inquiry_payment("DC").await.answer, Inquiry::Closed);
    sandbox.shutdown().await;
}
