-- +goose Up
-- The tag engine's feature state is binary (a version byte, then protobuf:
-- proto/membercenter/tagstate/v1/state.proto), no longer JSON. The JSON
-- states stored so far keep their text, which the engine still reads (and
-- writes back binary with the member's next change). The column is
-- rewritten once.
ALTER TABLE member_features
    ALTER COLUMN state DROP DEFAULT,
    ALTER COLUMN state TYPE bytea USING convert_to(state::text, 'UTF8'),
    ALTER COLUMN state SET DEFAULT '\x'::bytea;

-- +goose Down
-- States still JSON go back; binary ones become empty (every member's
-- state is rebuilt from the event history by `membercenter tags backfill
-- --restart`).
ALTER TABLE member_features
    ALTER COLUMN state DROP DEFAULT,
    ALTER COLUMN state TYPE jsonb USING CASE
        WHEN length(state) = 0 THEN '{}'::jsonb
        WHEN get_byte(state, 0) = 123 THEN convert_from(state, 'UTF8')::jsonb
        ELSE '{}'::jsonb END,
    ALTER COLUMN state SET DEFAULT '{}'::jsonb;
