//! `Idempotency-Key` records: the key of a creating POST, a fingerprint of its request and
//! the resource it created, written in the same transaction as that resource, so a retried
//! request finds what the first one made and a reused key with another body is refused.

use rusqlite::{params, Connection, OptionalExtension};

/// One key, as the API received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// What the key is for: `payment`, or `refund:<payment_request_id>`.
    pub scope: String,
    /// The client's key.
    pub key: String,
    /// SHA-256 (hex) of the request's meaningful fields (never a full payment code).
    pub fingerprint: String,
}

/// What an earlier request with the same key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The key is new.
    New,
    /// The same request created this resource.
    Same(String),
    /// Another request used the key and created this resource.
    Different(String),
}

/// Looks the key up.
pub fn check(conn: &Connection, k: &Idempotency) -> rusqlite::Result<Seen> {
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT request_sha256, resource_id FROM idempotency_keys WHERE scope = ?1 AND key = ?2",
            params![k.scope, k.key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match found {
        None => Seen::New,
        Some((fp, id)) if fp == k.fingerprint => Seen::Same(id),
        Some((_, id)) => Seen::Different(id),
    })
}

/// Records the key for `resource_id`; call it in the transaction that created the resource.
pub fn record(
    conn: &Connection,
    k: &Idempotency,
    resource_id: &str,
    now: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO idempotency_keys (scope, key, request_sha256, resource_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![k.scope, k.key, k.fingerprint, resource_id, now],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn same_key_same_request_finds_the_resource_and_another_request_is_told_apart() {
        let store = Store::open_in_memory().unwrap();
        let k = Idempotency {
            scope: "payment".into(),
            key: "k1".into(),
            fingerprint: "aa".into(),
        };
        store
            .call_blocking(|c| {
                assert_eq!(check(c, &k)?, Seen::New);
                record(c, &k, "P1", 1)?;
                assert_eq!(check(c, &k)?, Seen::Same("P1".into()));
                let other = Idempotency {
                    fingerprint: "bb".into(),
                    ..k.clone()
                };
                assert_eq!(check(c, &other)?, Seen::Different("P1".into()));
                // The same key in another scope is another key.
                let elsewhere = Idempotency {
                    scope: "refund:P1".into(),
                    ..k.clone()
                };
                assert_eq!(check(c, &elsewhere)?, Seen::New);
                assert!(record(c, &k, "P2", 2).is_err(), "a key is recorded once");
                Ok(())
            })
            .unwrap();
    }
}
