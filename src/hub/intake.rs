//! What the hub reads from a terminal's verified request body before anything is recorded:
//! the ids, the amount, the fields the registry fixes, the body's canonical hash, and for a
//! pay the body forwarded upstream and the one recorded with the payment code masked. Pure
//! (no database, no clock), so a refusal here provably records and forwards nothing, and
//! the fuzz target `hub_request` drives it with any bytes.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::registry::Terminal;
use crate::domain::code::mask;
use crate::domain::money::Amount;

/// Why a body is refused: the AMS result code and a message for the terminal's operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `PARAM_ILLEGAL`, `ACCESS_DENIED` or `PAYMENT_AMOUNT_EXCEED_LIMIT`.
    pub code: &'static str,
    /// What is wrong and what to send instead.
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// The string at `path` in `v`, if every step is an object key and the last holds a string.
pub fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// An id the hub keys a record by: 1 to 64 bytes (the AMS limit).
pub fn valid_id(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty() && s.len() <= 64)
}

/// The amount at `key` (`{"value": minor units, "currency": ISO 4217}`); `Err` says why it
/// is not one.
pub fn amount_at(v: &Value, key: &str) -> Result<Amount, String> {
    match (str_at(v, &[key, "value"]), str_at(v, &[key, "currency"])) {
        (Some(value), Some(currency)) => Amount::from_wire(value, currency)
            .map_err(|e| format!("{key} is not a valid amount: {e}")),
        _ => Err(format!("{key} needs a value and a currency")),
    }
}

/// The canonical hash of a JSON body (key order and whitespace do not matter).
pub fn body_hash(v: &Value) -> Vec<u8> {
    Sha256::digest(serde_json::to_vec(v).expect("a Value always serializes")).to_vec()
}

/// Where a pay body carries the payment code.
pub const CODE_POINTER: &str = "/paymentMethod/paymentMethodId";

/// A pay the hub may record and forward.
#[derive(Debug, Clone)]
pub struct PayIntake {
    /// `paymentRequestId`.
    pub id: String,
    /// `paymentAmount`.
    pub amount: Amount,
    /// [`body_hash`] of the terminal's body: the same id with another body is refused.
    pub hash: Vec<u8>,
    /// The body sent upstream: the terminal's, with the hub's `paymentNotifyUrl` (or none).
    pub forward_body: Vec<u8>,
    /// The body kept in the record: the forwarded one with the payment code masked.
    pub recorded_body: Vec<u8>,
}

/// Reads a terminal's pay body. `notify_url` is the hub's own notification listener, put in
/// place of the terminal's (a terminal never hears from the upstream directly).
pub fn pay(v: &Value, t: &Terminal, notify_url: Option<&str>) -> Result<PayIntake, Refusal> {
    let id = valid_id(str_at(v, &["paymentRequestId"]))
        .ok_or_else(|| refuse("PARAM_ILLEGAL", "paymentRequestId must be 1–64 characters"))?;
    let amount = amount_at(v, "paymentAmount")
        .map_err(|_| refuse("PARAM_ILLEGAL", "paymentAmount is missing or not valid"))?;
    // The code must be where the record masks it: a code sent as a number, an object or
    // inside an array would be recorded in clear (rule 9) and cannot be charged anyway.
    if str_at(v, &["paymentMethod", "paymentMethodId"]).is_none() {
        return Err(refuse(
            "PARAM_ILLEGAL",
            "paymentMethod.paymentMethodId must be the payment code, as a string",
        ));
    }
    for (path, want, what) in [
        (
            &["order", "merchant", "referenceMerchantId"][..],
            &t.merchant_id,
            "merchant",
        ),
        (
            &["order", "merchant", "store", "referenceStoreId"][..],
            &t.store_id,
            "store",
        ),
        (
            &["order", "env", "storeTerminalId"][..],
            &t.terminal_id,
            "terminal",
        ),
    ] {
        if str_at(v, path) != Some(want.as_str()) {
            return Err(refuse(
                "ACCESS_DENIED",
                format!("the {what} id is not the one registered for this terminal"),
            ));
        }
    }
    if t.max_amount_minor.is_some_and(|max| amount.minor() > max) {
        return Err(refuse(
            "PAYMENT_AMOUNT_EXCEED_LIMIT",
            "the amount is above this terminal's limit",
        ));
    }
    let mut forward = v.clone();
    if let Some(o) = forward.as_object_mut() {
        match notify_url {
            Some(url) => {
                o.insert("paymentNotifyUrl".into(), Value::String(url.into()));
            }
            None => {
                o.remove("paymentNotifyUrl");
            }
        }
    }
    let forward_body = serde_json::to_vec(&forward).expect("a Value always serializes");
    // The record keeps the body with the payment code masked (rule 9: never stored in
    // clear); a repeat carries the code again, and only a repeat is ever re-forwarded.
    let mut recorded = forward;
    if let Some(Value::String(code)) = recorded.pointer_mut(CODE_POINTER) {
        *code = mask(code);
    }
    Ok(PayIntake {
        id: id.to_string(),
        amount,
        hash: body_hash(v),
        forward_body,
        recorded_body: serde_json::to_vec(&recorded).expect("a Value always serializes"),
    })
}

/// A refund the hub may record and forward.
#[derive(Debug, Clone)]
pub struct RefundIntake {
    /// `refundRequestId`.
    pub refund_request_id: String,
    /// `paymentId`: the upstream's id of the payment refunded.
    pub payment_id: String,
    /// `refundAmount`.
    pub amount: Amount,
    /// [`body_hash`] of the terminal's body.
    pub hash: Vec<u8>,
    /// The body sent upstream: only the refund's own AMS fields.
    pub forward_body: Vec<u8>,
}

/// Reads a terminal's refund body.
pub fn refund(v: &Value) -> Result<RefundIntake, Refusal> {
    let rid = valid_id(str_at(v, &["refundRequestId"]))
        .ok_or_else(|| refuse("PARAM_ILLEGAL", "refundRequestId must be 1–64 characters"))?;
    let pid = valid_id(str_at(v, &["paymentId"]))
        .ok_or_else(|| refuse("PARAM_ILLEGAL", "paymentId is required"))?;
    let amount = amount_at(v, "refundAmount")
        .map_err(|_| refuse("PARAM_ILLEGAL", "refundAmount is missing or not valid"))?;
    let mut forward = Map::new();
    for k in [
        "refundRequestId",
        "paymentId",
        "refundAmount",
        "refundReason",
        "refundRequestTime",
    ] {
        if let Some(x) = v.get(k) {
            forward.insert(k.to_string(), x.clone());
        }
    }
    Ok(RefundIntake {
        refund_request_id: rid.to_string(),
        payment_id: pid.to_string(),
        amount,
        hash: body_hash(v),
        forward_body: serde_json::to_vec(&Value::Object(forward))
            .expect("a Value always serializes"),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn terminal() -> Terminal {
        Terminal {
            client_id: "T_A".into(),
            name: None,
            public_key: String::new(),
            merchant_id: "M1".into(),
            store_id: "S1".into(),
            terminal_id: "T1".into(),
            max_amount_minor: Some(100_000),
            enabled: true,
        }
    }

    fn body() -> Value {
        json!({
            "paymentRequestId": "R-1",
            "paymentAmount": {"value": "1000", "currency": "SGD"},
            "paymentMethod": {"paymentMethodType": "CONNECT_WALLET", "paymentMethodId": "281234567890123400"},
            "paymentNotifyUrl": "https://terminal.example/notify",
            "order": {
                "merchant": {"referenceMerchantId": "M1", "store": {"referenceStoreId": "S1"}},
                "env": {"storeTerminalId": "T1"}
            }
        })
    }

    fn read(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn a_pay_is_forwarded_with_the_hubs_notify_url_and_recorded_masked() {
        let p = pay(&body(), &terminal(), Some("https://hub.example/n")).unwrap();
        assert_eq!((p.id.as_str(), p.amount.minor()), ("R-1", 1000));
        let fwd = read(&p.forward_body);
        assert_eq!(fwd.pointer(CODE_POINTER).unwrap(), "281234567890123400");
        assert_eq!(fwd["paymentNotifyUrl"], "https://hub.example/n");
        let rec = read(&p.recorded_body);
        assert_eq!(rec.pointer(CODE_POINTER).unwrap(), "2812**********3400");
        assert_eq!(rec["paymentNotifyUrl"], "https://hub.example/n");
        let without = pay(&body(), &terminal(), None).unwrap();
        assert!(read(&without.forward_body)
            .get("paymentNotifyUrl")
            .is_none());
        assert_eq!(without.hash, p.hash, "the hash is the terminal's body's");
    }

    #[test]
    fn a_code_the_record_could_not_mask_is_refused() {
        for code in [
            json!(281234567890123400_u64),
            json!({"value": "281234567890123400"}),
            json!(["281234567890123400"]),
            Value::Null,
        ] {
            let mut b = body();
            b["paymentMethod"]["paymentMethodId"] = code.clone();
            let r = pay(&b, &terminal(), None).unwrap_err();
            assert_eq!(r.code, "PARAM_ILLEGAL", "{code}");
            assert!(r.message.contains("paymentMethodId"), "{r:?}");
        }
        let mut b = body();
        b["paymentMethod"] = json!([{"paymentMethodId": "281234567890123400"}]);
        assert_eq!(
            pay(&b, &terminal(), None).unwrap_err().code,
            "PARAM_ILLEGAL"
        );
    }

    #[test]
    fn the_registry_fixes_merchant_store_terminal_and_limit() {
        for (path, what) in [
            ("/order/merchant/referenceMerchantId", "merchant"),
            ("/order/merchant/store/referenceStoreId", "store"),
            ("/order/env/storeTerminalId", "terminal"),
        ] {
            let mut b = body();
            *b.pointer_mut(path).unwrap() = json!("OTHER");
            let r = pay(&b, &terminal(), None).unwrap_err();
            assert_eq!(r.code, "ACCESS_DENIED");
            assert!(r.message.contains(what), "{r:?}");
        }
        let mut b = body();
        b["paymentAmount"]["value"] = json!("100001");
        assert_eq!(
            pay(&b, &terminal(), None).unwrap_err().code,
            "PAYMENT_AMOUNT_EXCEED_LIMIT"
        );
        b["paymentAmount"]["value"] = json!("100000");
        assert!(
            pay(&b, &terminal(), None).is_ok(),
            "the limit itself is allowed"
        );
    }

    #[test]
    fn ids_and_amounts_are_checked() {
        for (path, bad) in [
            ("/paymentRequestId", json!("")),
            ("/paymentRequestId", json!("x".repeat(65))),
            ("/paymentRequestId", json!(7)),
            ("/paymentAmount/value", json!("-5")),
            ("/paymentAmount/value", json!("10.00")),
            ("/paymentAmount/currency", json!("XXX1")),
        ] {
            let mut b = body();
            *b.pointer_mut(path).unwrap() = bad.clone();
            assert_eq!(
                pay(&b, &terminal(), None).unwrap_err().code,
                "PARAM_ILLEGAL",
                "{path} = {bad}"
            );
        }
        let mut b = body();
        b["paymentRequestId"] = json!("x".repeat(64));
        assert!(pay(&b, &terminal(), None).is_ok());
    }

    #[test]
    fn a_refund_forwards_only_its_own_fields() {
        let v = json!({
            "refundRequestId": "RF-1",
            "paymentId": "G1",
            "refundAmount": {"value": "500", "currency": "SGD"},
            "refundReason": "returned",
            "paymentMethodId": "281234567890123400",
        });
        let r = refund(&v).unwrap();
        assert_eq!(
            (r.refund_request_id.as_str(), r.payment_id.as_str()),
            ("RF-1", "G1")
        );
        assert_eq!(r.amount.minor(), 500);
        let fwd = read(&r.forward_body);
        assert!(fwd.get("paymentMethodId").is_none(), "{fwd}");
        assert_eq!(fwd["refundReason"], "returned");
        for k in ["refundRequestId", "paymentId", "refundAmount"] {
            let mut b = v.clone();
            b.as_object_mut().unwrap().remove(k);
            assert_eq!(refund(&b).unwrap_err().code, "PARAM_ILLEGAL", "{k}");
        }
    }

    #[test]
    fn the_body_hash_ignores_key_order_and_spacing() {
        let a: Value = serde_json::from_str(r#"{"a":"1","b":{"c":"2"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "b": {"c":"2"}, "a": "1" }"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"a":"1","b":{"c":"3"}}"#).unwrap();
        assert_eq!(body_hash(&a), body_hash(&b));
        assert_ne!(body_hash(&a), body_hash(&c));
        // A number written out again reads back as the same number (serde_json's
        // `float_roundtrip`; without it this one came back one unit off in the last place).
        let n: Value = serde_json::from_str(r#"{"n":6E97}"#).unwrap();
        let again: Value = serde_json::from_slice(&serde_json::to_vec(&n).unwrap()).unwrap();
        assert_eq!(again, n);
        assert_eq!(body_hash(&again), body_hash(&n));
    }
}
