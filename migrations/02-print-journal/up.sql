-- The print journal: one row per slip (SALE, CANCEL, REFUND, and reprints marked COPY).
-- A row is written in the same transaction that records the payment's final state, so a
-- slip can never be lost; the print worker prints PENDING rows and marks them PRINTED.
-- The slip's data is stored, not its bytes: it is rendered for the printer configured when
-- it prints.
CREATE TABLE print_slips (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_request_id  TEXT    NOT NULL REFERENCES payments (payment_request_id),
    kind                TEXT    NOT NULL CHECK (kind IN ('SALE', 'CANCEL', 'REFUND')),
    copy                INTEGER NOT NULL DEFAULT 0 CHECK (copy IN (0, 1)),
    payload_version     INTEGER NOT NULL DEFAULT 1,
    merchant_name       TEXT    NOT NULL,
    store_name          TEXT    NOT NULL,
    terminal_id         TEXT    NOT NULL,
    amount_minor        INTEGER NOT NULL,
    currency            TEXT    NOT NULL,
    payment_id          TEXT,
    refund_request_id   TEXT,
    local_time          TEXT    NOT NULL,   -- 'YYYY-MM-DD hh:mm:ss', the terminal's local time
    status              TEXT    NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'PRINTED')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    printer_status      TEXT,               -- what DLE EOT said at the last attempt
    next_attempt_at     INTEGER NOT NULL DEFAULT 0,  -- unix ms; 0 = due now
    created_at          INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    printed_at          INTEGER
);
CREATE INDEX print_slips_by_payment ON print_slips (payment_request_id, id);
CREATE INDEX print_slips_pending ON print_slips (next_attempt_at, id) WHERE status = 'PENDING';
