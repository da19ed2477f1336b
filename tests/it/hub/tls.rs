//! The hub's TLS listener (rustls, certificate and key from hub.toml) and the terminal's
//! `gateway.ca_file`: a terminal that trusts the hub's private CA pays through it; one that
//! cannot verify the certificate gets Unknown (never plain HTTP), and nothing reaches the hub.

use std::time::Duration;

use super::harness::{code, hub_key_path, hub_state, register, terminal, TestHub, Upstream};
use super::pg::TestDb;

fn tls(name: &str) -> String {
    hub_key_path(&format!("tls/{name}")).display().to_string()
}

async fn tls_hub(db: &TestDb, up: &Upstream) -> (TestHub, String) {
    let hub_extra = format!(
        "insecure_http = false\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        tls("hub_cert.pem"),
        tls("hub_key.pem")
    );
    let mut hub = TestHub::new(db, &up.base_url(), &hub_extra, "");
    hub.start(None).await;
    let base = hub.base.replace("http://", "https://");
    (hub, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_trusting_the_private_ca_pays_over_tls() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let (hub, base) = tls_hub(&db, &up).await;
    let mut t = terminal(
        &base,
        "T_A",
        "terminal_a",
        &format!("ca_file = \"{}\"\n", tls("ca.pem")),
    );
    t.start(None).await;
    let id = t.pay(&code("00"), "12.34").await;
    let p = t.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(p["state"], "SUCCEEDED", "{p}\n{}", hub.log());
    assert_eq!(hub_state(&db, &id).await.as_deref(), Some("SUCCEEDED"));
    // Plain HTTP to the TLS port gets nothing.
    let plain = reqwest::Client::new()
        .post(format!("{}/ams/api/v1/payments/pay", hub.base))
        .body("{}")
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_that_cannot_verify_the_hub_gets_unknown_and_charges_nobody() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let (_hub, base) = tls_hub(&db, &up).await;
    // Trusts another CA only.
    let mut t = terminal(
        &base,
        "T_A",
        "terminal_a",
        &format!("ca_file = \"{}\"\n", tls("other_ca.pem")),
    );
    t.start(None).await;
    let id = t.pay(&code("00"), "12.34").await;
    let p = t.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(
        p["state"], "CANCEL_QUEUED",
        "unknown, then a queued reversal: {p}"
    );
    let events = p["events"].to_string();
    assert!(events.contains("pay result unknown"), "{events}");
    assert!(
        events.to_lowercase().contains("certificate") || events.contains("UnknownIssuer"),
        "{events}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_payments").await,
        0,
        "nothing reached the hub"
    );
    assert_eq!(up.counts().pay, 0);
}
