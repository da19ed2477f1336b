-- posd core schema: payments, their journal, the terminal sequence, refunds, and the
-- store-and-forward reversal queue. Times are Unix epoch milliseconds (UTC).
-- Never edit a migration that has shipped: add a new directory instead.
-- payments is WITHOUT ROWID (the id is the clustered key) and carries only the indexes the
-- money path needs, so the intent's commit writes as few pages as it can.

CREATE TABLE terminal_sequence (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL CHECK (value >= 0)
) STRICT;
INSERT INTO terminal_sequence (name, value) VALUES ('request', 0);

CREATE TABLE payments (
    payment_request_id TEXT PRIMARY KEY CHECK (length(payment_request_id) <= 64),
    order_ref          TEXT,
    amount_minor       INTEGER NOT NULL CHECK (amount_minor > 0),
    currency           TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('AWAITING_CODE','PAYING','INQUIRING',
                         'CANCELLING','REFUNDING','SUCCEEDED','FAILED','CANCELLED',
                         'CANCEL_QUEUED','REFUNDED','PARTIALLY_REFUNDED','NEEDS_ATTENTION')),
    -- Only the masked form of the payment code is ever stored (rule 9).
    code_masked        TEXT,
    result_code        TEXT,
    result_message     TEXT,
    payment_id         TEXT,
    refunded_minor     INTEGER NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    attention_reason   TEXT,
    inquiries          INTEGER NOT NULL DEFAULT 0,
    -- The refund a REFUNDING payment carries, and the state a declined requested refund returns to.
    active_refund_id   TEXT,
    refund_return_to   TEXT,
    terminal_time      TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    CHECK (refunded_minor <= amount_minor)
) STRICT, WITHOUT ROWID;
CREATE INDEX payments_order_ref ON payments(order_ref);
CREATE INDEX payments_open ON payments(state)
    WHERE state IN ('AWAITING_CODE','PAYING','INQUIRING','CANCELLING','REFUNDING');

CREATE TABLE payment_events (
    id                 INTEGER PRIMARY KEY,
    payment_request_id TEXT NOT NULL REFERENCES payments(payment_request_id),
    at                 INTEGER NOT NULL,
    from_state         TEXT,
    to_state           TEXT NOT NULL,
    cause              TEXT NOT NULL,
    result_code        TEXT
) STRICT;
CREATE INDEX payment_events_payment ON payment_events(payment_request_id, id);

CREATE TABLE refunds (
    refund_request_id  TEXT PRIMARY KEY CHECK (length(refund_request_id) <= 64),
    payment_request_id TEXT NOT NULL REFERENCES payments(payment_request_id),
    kind               TEXT NOT NULL CHECK (kind IN ('REVERSAL','REQUESTED')),
    amount_minor       INTEGER NOT NULL CHECK (amount_minor > 0),
    currency           TEXT NOT NULL,
    reason             TEXT,
    state              TEXT NOT NULL CHECK (state IN ('PENDING','QUEUED','SUCCEEDED','FAILED','ABANDONED')),
    refund_id          TEXT,
    result_code        TEXT,
    result_message     TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
) STRICT;
CREATE INDEX refunds_payment ON refunds(payment_request_id);

CREATE TABLE reversal_queue (
    id                 INTEGER PRIMARY KEY,
    kind               TEXT NOT NULL CHECK (kind IN ('CANCEL','REFUND')),
    payment_request_id TEXT NOT NULL REFERENCES payments(payment_request_id),
    refund_request_id  TEXT REFERENCES refunds(refund_request_id),
    -- The identical request to replay, versioned so that an upgraded daemon drains the
    -- items an older one wrote.
    payload_version    INTEGER NOT NULL,
    payload            TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('PENDING','DONE','DEAD','ABANDONED')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    INTEGER NOT NULL,
    lease_owner        TEXT,
    lease_until        INTEGER,
    last_error         TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX reversal_queue_one_per_request
    ON reversal_queue(kind, payment_request_id, ifnull(refund_request_id, ''));
CREATE INDEX reversal_queue_due ON reversal_queue(status, next_attempt_at);
