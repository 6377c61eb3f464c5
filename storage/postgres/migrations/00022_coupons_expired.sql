-- +goose Up
-- A coupon migrated from a legacy system as expired keeps that state: it is
-- kept for the record and never usable, whatever its validity says
-- (docs/benefits.md, "Migrated loyalty"). A platform coupon's expiry is
-- still derived from valid_until, never stored.
ALTER TABLE coupons DROP CONSTRAINT coupons_state_check,
    ADD CONSTRAINT coupons_state_check CHECK (state IN ('issued', 'used', 'restored', 'revoked', 'expired'));

-- +goose Down
-- Rows already expired are kept (the constraint is not checked on them).
ALTER TABLE coupons DROP CONSTRAINT coupons_state_check,
    ADD CONSTRAINT coupons_state_check CHECK (state IN ('issued', 'used', 'restored', 'revoked')) NOT VALID;
