-- +goose Up
-- A member's feature state in two parts (tags.EncodeStateParts): state, the
-- base, written again only now and then, and state_tail, what was added
-- since, written with every batch that touches the member. A heavy
-- member's state (tens of KB) was rewritten, compressed and logged whole
-- for every event; the base now keeps its stored copy. NULL: state is
-- whole, as every row written before.
ALTER TABLE member_features ADD COLUMN state_tail bytea;
-- +goose StatementBegin
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE member_features ALTER COLUMN state_tail SET COMPRESSION lz4;
  END IF;
END $$;
-- +goose StatementEnd

-- +goose Down
-- Back to whole states: the tail's records, lifetimes and snapshot joined
-- to the base (protobuf concatenation, without the tail's version byte).
UPDATE member_features SET state = '\x01'::bytea || substring(state FROM 2) || substring(state_tail FROM 2) WHERE state_tail IS NOT NULL;
ALTER TABLE member_features DROP COLUMN state_tail;
