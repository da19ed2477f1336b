-- The hub's schema, version 1: the terminal registry, the payments and refunds it forwards
-- (write-ahead records), its own store-and-forward queue, notifications and the journal.

CREATE TABLE hub_terminals (
    client_id        text PRIMARY KEY,
    name             text,
    public_key       text NOT NULL,          -- SPKI DER, Base64
    merchant_id      text NOT NULL,
    store_id         text NOT NULL,
    terminal_id      text NOT NULL,          -- order.env.storeTerminalId
    max_amount_minor bigint,                 -- per-pay limit, minor units
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per paymentRequestId the hub has seen (a pay, or a cancel that came first).
CREATE TABLE hub_payments (
    payment_request_id text PRIMARY KEY,
    client_id          text NOT NULL REFERENCES hub_terminals(client_id),
    -- RECEIVED (pay recorded, outcome open), SUCCEEDED, FAILED, CANCELLING, CANCELLED,
    -- REFUNDING, REFUNDED, PARTIALLY_REFUNDED, NEEDS_ATTENTION
    state              text NOT NULL,
    body_hash          bytea,                -- sha256 of the terminal's pay body (NULL: no pay seen)
    forward_body       bytea,                -- the forwarded body, payment code masked
    amount_minor       bigint,
    currency           text,
    payment_id         text,                 -- the upstream's id, once known
    pay_answer         bytea,                -- the verified final pay answer (S or F)
    pay_status         text,                 -- last verified pay resultStatus
    result_code        text,
    upstream_status    text,                 -- last verified paymentStatus (inquiry / notify)
    terminal_cancel_at timestamptz,
    active_cancel_at   timestamptz,
    cancel_answer      bytea,                -- the verified S answer of the cancel
    refunded_minor     bigint NOT NULL DEFAULT 0,
    attention_reason   text,
    ac_lease_owner     text,
    ac_lease_until     timestamptz,
    received_at        timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX hub_payments_payment_id ON hub_payments(payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX hub_payments_open ON hub_payments(received_at) WHERE state = 'RECEIVED';

CREATE TABLE hub_refunds (
    refund_request_id  text PRIMARY KEY,
    payment_request_id text NOT NULL REFERENCES hub_payments(payment_request_id),
    client_id          text NOT NULL REFERENCES hub_terminals(client_id),
    body_hash          bytea NOT NULL,
    forward_body       bytea NOT NULL,
    amount_minor       bigint NOT NULL,
    currency           text NOT NULL,
    state              text NOT NULL,        -- REFUNDING, REFUNDED, FAILED
    answer             bytea,
    result_code        text,
    origin             text NOT NULL,        -- terminal | hub
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Every cancel and refund the hub owes upstream, committed before it is first sent.
CREATE TABLE hub_queue (
    id                 bigserial PRIMARY KEY,
    kind               text NOT NULL,        -- cancel | refund
    payment_request_id text NOT NULL REFERENCES hub_payments(payment_request_id),
    refund_request_id  text,
    body               bytea NOT NULL,       -- identical on every send
    origin             text NOT NULL,        -- terminal | active | advice | hub
    status             text NOT NULL DEFAULT 'PENDING',   -- PENDING, DONE, DEAD
    attempts           integer NOT NULL DEFAULT 0,
    late_attempts      integer NOT NULL DEFAULT 0,  -- attempts after the retry window (backoff)
    next_at            timestamptz NOT NULL DEFAULT now(),
    lease_owner        text,
    lease_until        timestamptz,
    last_error         text,
    answer             bytea,                -- the verified final answer, relayed on repeats
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX hub_queue_due ON hub_queue(next_at) WHERE status = 'PENDING';
CREATE UNIQUE INDEX hub_queue_one_cancel ON hub_queue(payment_request_id) WHERE kind = 'cancel';
CREATE UNIQUE INDEX hub_queue_one_refund ON hub_queue(refund_request_id) WHERE kind = 'refund';

-- notifyPayment from the upstream, as received and verified.
CREATE TABLE hub_notifications (
    id                 bigserial PRIMARY KEY,
    payment_request_id text,
    payment_status     text,
    applied            boolean NOT NULL,
    outcome            text NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now()
);

-- Every decision, with the instance that took it.
CREATE TABLE hub_events (
    id                 bigserial PRIMARY KEY,
    payment_request_id text NOT NULL,
    at                 timestamptz NOT NULL DEFAULT now(),
    instance           text NOT NULL,
    kind               text NOT NULL,
    from_state         text,
    to_state           text,
    result_code        text,
    detail             text
);
CREATE INDEX hub_events_payment ON hub_events(payment_request_id, id);
