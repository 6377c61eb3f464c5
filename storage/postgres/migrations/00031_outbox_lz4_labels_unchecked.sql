-- +goose Up
-- A member's first LabelsChanged on the outbox carries every label of the
-- catalogue (~7 KB), so it is compressed when written; pglz made the
-- outbox insert the import's second dearest statement. lz4 where the
-- server has it (as member_features, 00027).
-- +goose StatementBegin
DO $$ BEGIN
  IF 'lz4' = ANY ((SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression')::text[]) THEN
    ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION lz4;
  END IF;
END $$;
-- +goose StatementEnd

-- member_labels holds ~25 rows a member, rewritten as labels change; the
-- foreign key's check of members for every row was half of each insert.
-- Every writer (tag worker, label sweep, merges, import) holds the
-- member's row in the same transaction, and members are never deleted
-- (an erasure blanks the row), so the check could never fail.
ALTER TABLE member_labels DROP CONSTRAINT member_labels_member_id_fkey;

-- +goose Down
ALTER TABLE member_labels ADD CONSTRAINT member_labels_member_id_fkey FOREIGN KEY (member_id) REFERENCES members(member_id);
ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION default;
