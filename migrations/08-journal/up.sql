-- What reconciliation against the gateway's statement needs beside the payment itself: the
-- time the gateway gave for the charge and for each refund (the statement's `paymentTime`, ISO
-- 8601 with offset, as the gateway sent it). Terminal and store come from the terminal's
-- identity; the UTC+8 business date is derived from these times.
ALTER TABLE payments ADD COLUMN gateway_time TEXT;
ALTER TABLE refunds ADD COLUMN gateway_time TEXT;
