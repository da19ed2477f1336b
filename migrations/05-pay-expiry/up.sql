-- When the gateway stops accepting the pay (the paymentExpiryTime sent with it), epoch ms.
-- The pay is committed with it (write ahead): until this time plus the clock-skew margin, a
-- gateway that has no record of the payment may still receive it, so "no such payment" means
-- "not arrived yet", never "not charged". NULL while a sale waits for its code.
ALTER TABLE payments ADD COLUMN pay_expires_at INTEGER;
-- Pays sent before this column existed carried no expiry: the gateway applied its contract
-- default, about three minutes after the request for merchant-scans-customer payments.
UPDATE payments SET pay_expires_at = created_at + 180000 WHERE state <> 'AWAITING_CODE';
