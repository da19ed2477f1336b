-- The reversal queue's own bookkeeping: how an item ended, and the item's journal
-- (every retry, conversion, dead letter and abandon, with who did it). Times are Unix epoch ms.

-- How a DONE / DEAD / ABANDONED item ended, in words (the back office reads it).
ALTER TABLE reversal_queue ADD COLUMN resolution TEXT;

CREATE TABLE queue_events (
    id       INTEGER PRIMARY KEY,
    item_id  INTEGER NOT NULL REFERENCES reversal_queue(id),
    at       INTEGER NOT NULL,
    -- The lease owner that acted (daemon or back-office command), or `back-office`.
    actor    TEXT NOT NULL,
    what     TEXT NOT NULL CHECK (what IN ('RETRY','HELD','DONE','CONVERTED','DEAD','ABANDONED')),
    detail   TEXT
) STRICT;
CREATE INDEX queue_events_item ON queue_events(item_id, id);

-- The worker's hot query: the earliest due pending item.
CREATE INDEX reversal_queue_pending_due ON reversal_queue(next_attempt_at) WHERE status = 'PENDING';
