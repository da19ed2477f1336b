-- Every verified notifyPayment the terminal received, with what it did. A notification for
-- a payment this terminal does not know is kept here (payment_request_id NULL) for the back
-- office; it is acknowledged so the gateway stops resending it. Times are epoch ms (UTC).

CREATE TABLE notifications (
    id                 INTEGER PRIMARY KEY,
    received_at        INTEGER NOT NULL,
    -- The payment it settled or was about; NULL when the terminal does not know it.
    payment_request_id TEXT REFERENCES payments(payment_request_id),
    -- What the notification said, verbatim (may name an unknown payment).
    claimed_request_id TEXT,
    payment_id         TEXT,
    notify_type        TEXT,
    result_status      TEXT,
    result_code        TEXT,
    amount_value       TEXT,
    currency           TEXT,
    request_time       TEXT NOT NULL,
    -- SHA-256 of the raw body (hex): a resend of the same body is a duplicate.
    body_sha256        TEXT NOT NULL,
    body               TEXT NOT NULL,
    outcome            TEXT NOT NULL CHECK (outcome IN
                         ('APPLIED','IGNORED','DUPLICATE','UNKNOWN_PAYMENT','PENDING')),
    state_before       TEXT,
    state_after        TEXT
) STRICT;
CREATE INDEX notifications_received ON notifications(received_at);
CREATE INDEX notifications_payment ON notifications(payment_request_id);
CREATE INDEX notifications_body ON notifications(body_sha256);
