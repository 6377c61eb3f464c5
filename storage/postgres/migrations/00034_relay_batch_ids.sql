-- +goose Up
-- A relay batch records the outbox ids it holds instead of tagging each
-- row with its batch: claiming a batch no longer rewrites its rows (an
-- UPDATE of an indexed column, so a new version of every row and an entry
-- in each of the outbox's indexes), and a row is updated once, when it is
-- marked published. A batch recorded before this migration (its rows
-- tagged, no ids) is still found by its tag.
ALTER TABLE relay_batches ADD COLUMN outbox_ids bigint[] NOT NULL DEFAULT '{}';

-- +goose Down
ALTER TABLE relay_batches DROP COLUMN outbox_ids;
