-- +goose Up
-- A member's feature state (~2.7 KB) and labels (~2.4 KB) are rewritten by
-- the tag worker with every batch that touches the member; stored inline
-- they are compressed on every write, and pglz's compression was most of
-- the statement's cost (0.50 ms a row in the pipeline bench; lz4 0.20 ms,
-- and a quarter less WAL). Values already stored stay as they are until
-- rewritten. A server built without lz4 keeps pglz.
-- +goose StatementBegin
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
    ALTER TABLE member_features ALTER COLUMN state SET COMPRESSION lz4, ALTER COLUMN labels_pb SET COMPRESSION lz4;
  END IF;
END $$;
-- +goose StatementEnd

-- +goose Down
ALTER TABLE member_features ALTER COLUMN state SET COMPRESSION default, ALTER COLUMN labels_pb SET COMPRESSION default;
