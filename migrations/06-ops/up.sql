-- Operations: the health probe's row and the idempotency keys of the API's creating POSTs.
-- IF NOT EXISTS: re-applying this migration (a database created while migration slots were
-- filled out of order) changes nothing.

-- `GET /healthz` and the systemd watchdog write and commit this one row: a database that can
-- be read but not written (read-only, full disk) is not healthy.
CREATE TABLE IF NOT EXISTS health_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);

-- `Idempotency-Key` of `POST /v1/payments` and `POST /v1/payments/{id}/refunds`, stored in
-- the same transaction as the payment or refund it created: a retry with the same key and
-- body returns that resource, the same key with another body is refused.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,            -- 'payment', or 'refund:' || payment_request_id
    key TEXT NOT NULL,
    request_sha256 TEXT NOT NULL,   -- of the canonical request (method, path, body fields)
    resource_id TEXT NOT NULL,      -- payment_request_id or refund_request_id
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
