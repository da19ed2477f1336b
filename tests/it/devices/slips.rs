//! A slip's barcode through the real binary: the daemon's `paymentRequestId` is the 36-digit
//! identifier the slip barcodes, and scanning it — with no sale waiting, or while one waits —
//! looks the payment up and never pays with it.

use std::time::{Duration, Instant};

use posd::domain::request_id::{parse_payment_request_id, PAYMENT_ID_DIGITS};
use serde_json::json;

use crate::daemon::TestDaemon;

/// Waits until the daemon's log holds `needle`.
async fn log_shows(d: &TestDaemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanning_a_slip_looks_the_payment_up_and_never_pays() {
    let mut d = TestDaemon::new("[scanner]\nkind = \"stdin\"\n");
    d.start(None).await;
    let id = d.pay("281234567890123400", "12.34").await;
    assert_eq!(id.len(), PAYMENT_ID_DIGITS, "{id}");
    let parts = parse_payment_request_id(&id).expect("the 36-digit layout");
    assert_eq!(
        (parts.terminal.as_str(), parts.amount_minor),
        ("000001", 1234)
    );
    let v = d.wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!(v["state"], "SUCCEEDED", "{v}");

    // No sale waits: the scan is a look-up.
    d.scan(&id);
    log_shows(&d, &format!("posd: slip {id}: SUCCEEDED CNY 12.34")).await;

    // A sale waits for a code: the slip does not bind to it; the customer's code then does.
    let (status, waiting) = d.create(json!({"amount": "5.00"})).await;
    assert_eq!(status, 202, "{waiting}");
    let waiting = waiting["payment_request_id"].as_str().unwrap().to_string();
    // (An unknown id of the older layout first, so the repeat filter lets the slip through.)
    d.scan("20261121140305T000100000000123400000042123456");
    log_shows(
        &d,
        "slip 20261121140305T000100000000123400000042123456: no payment with this id",
    )
    .await;
    d.scan(&format!("{id}\r"));
    let summary = format!("posd: slip {id}: SUCCEEDED CNY 12.34");
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.log().matches(&summary).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "second look-up missing:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.get(&waiting).await["state"], "AWAITING_CODE");
    assert_eq!(
        d.sandbox_payments(),
        1,
        "the gateway saw one pay only:\n{}",
        d.log()
    );
    d.scan("281234567890123401");
    let v = d.wait_final(&waiting, Duration::from_secs(20)).await;
    assert_eq!(v["state"], "SUCCEEDED", "{v}");
    assert_eq!(d.sandbox_payments(), 2);
}

/// A terminal id the request id cannot carry is refused by the config, saying why; one it
/// can carry is taken.
#[test]
fn the_config_refuses_a_terminal_id_without_digits_or_with_more_than_six() {
    let repo = include_str!("../../../config.toml");
    assert!(
        repo.contains("id = \"T0001\""),
        "the repository config names T0001"
    );
    let dir = tempfile::tempdir().unwrap();
    let parse = |id: &str| {
        posd::config::Config::parse(
            &repo.replace("id = \"T0001\"", &format!("id = \"{id}\"")),
            &dir.path().join("config.toml"),
            dir.path(),
        )
    };
    for bad in ["FRONT", "12345678", "T0000001"] {
        let e = parse(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"))
            .to_string();
        assert!(
            e.contains("terminal.id") && e.contains("1 to 6 digits"),
            "{bad}: {e}"
        );
    }
    for good in ["T0001", "POS12", "123456"] {
        assert!(parse(good).is_ok(), "{good}: {:?}", parse(good).err());
    }
}

/// A payment of the older 45-character layout, already in the database, keeps working: the
/// API finds it, its reprint carries the id as a QR code (CODE128 would not fit 576 dots),
/// and scanning that id looks it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_id_in_an_existing_database_keeps_working() {
    use posd::domain::machine::State;
    use posd::domain::money::{Amount, Currency};
    use posd::store::payments::{self, Change, NewPayment};

    const OLD: &str = "20261121140305T000100000000123400000042123456";
    let mut d = TestDaemon::new("[scanner]\nkind = \"stdin\"\n");
    {
        let store = posd::store::Store::open(&d.state().join("posd.sqlite3")).unwrap();
        store
            .call_blocking(|c| {
                let new = NewPayment {
                    order_ref: None,
                    amount: Amount::parse("12.34", Currency::from_code("CNY")?)?,
                    state: State::Paying,
                    code_masked: Some("2812**********3400".into()),
                    terminal_time: "2026-11-21T14:03:05+08:00".into(),
                    pay_expires_at: None,
                };
                payments::create(c, &new, 0, |_| OLD.to_string())?;
                let change = Change {
                    to: Some(State::Succeeded),
                    cause: "pay succeeded".into(),
                    payment_id: Some("2026112119074102000000000012345".into()),
                    slip: Some(posd::domain::slip::SlipData {
                        kind: posd::domain::slip::SlipKind::Sale,
                        merchant_name: "Demo Cafe".into(),
                        store_name: "Demo Cafe Central".into(),
                        terminal_id: "T0001".into(),
                        amount: new.amount,
                        payment_request_id: OLD.into(),
                        payment_id: Some("2026112119074102000000000012345".into()),
                        refund_request_id: None,
                        local_time: chrono::NaiveDateTime::parse_from_str(
                            "2026-11-21 14:03:05",
                            "%Y-%m-%d %H:%M:%S",
                        )?,
                        copy: false,
                    }),
                    ..Change::default()
                };
                assert!(payments::apply(c, OLD, State::Paying, &change, 0)?.is_some());
                Ok(())
            })
            .unwrap();
    }
    d.start(None).await;
    assert_eq!(d.get(OLD).await["state"], "SUCCEEDED");

    d.scan(OLD);
    log_shows(&d, &format!("posd: slip {OLD}: SUCCEEDED CNY 12.34")).await;

    let r = d
        .request(
            reqwest::Method::POST,
            &format!("/v1/payments/{OLD}/receipt"),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let receipts = d.state().join("receipts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let bin = loop {
        let found = std::fs::read_dir(&receipts).ok().and_then(|mut it| {
            it.find_map(|e| {
                let p = e.ok()?.path();
                (p.to_str()?.ends_with("-copy.bin")).then_some(p)
            })
        });
        if let Some(p) = found {
            break std::fs::read(p).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no reprint in {}",
            receipts.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let dump = posd::devices::escpos::dump(&bin, posd::devices::profile::TextEncoding::Gb18030);
    assert!(dump.contains("GS ( k"), "a QR code:\n{dump}");
    assert!(
        !dump.contains("GS k CODE128"),
        "no CODE128 too wide to print:\n{dump}"
    );
    assert!(bin.windows(OLD.len()).any(|w| w == OLD.as_bytes()));
    assert!(dump.contains("*** COPY ***"), "{dump}");
}
