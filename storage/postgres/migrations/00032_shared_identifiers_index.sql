-- +goose Up
-- A unique identifier (phone, e-mail, card, unionid…) was in two indexes on
-- (id_type, scope, value_hash): the unique one and a plain one for every
-- identifier. Its keys are keyed hashes, so each is a random write into a
-- large index: at 1,000,000 members inserting 4,000,000 identifiers took
-- 219 s, 55 µs a row. The plain index now holds the shared identifiers
-- only (a store's device); lookups probe both (postgres.FindIdentifiers).
CREATE INDEX member_identifiers_shared_value ON member_identifiers (id_type, scope, value_hash) WHERE NOT is_unique;
DROP INDEX member_identifiers_value;

-- +goose Down
CREATE INDEX member_identifiers_value ON member_identifiers (id_type, scope, value_hash);
DROP INDEX member_identifiers_shared_value;
