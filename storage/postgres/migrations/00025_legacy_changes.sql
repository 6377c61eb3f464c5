-- +goose Up
-- Incremental catch-up from a legacy system (membercenter import catch-up,
-- import cdc): per source and per legacy row, the position in the legacy
-- system's change log of the last change applied, written in the
-- transaction of its effect. A change at or before it is skipped, so a
-- delta file or a CDC topic applied twice changes nothing the second time
-- and an older change arriving after a newer one cannot roll the row back.
-- row_key is a keyed hash (the platform's PII keys) of the table and the
-- row's key (a legacy id, an identifier's value): nothing here reads back
-- to a person. position is compared element by element (PostgreSQL lsn;
-- MySQL binlog file, pos, row; Oracle scn; a delta file's pos). Citus:
-- distributed by row_key.
CREATE TABLE legacy_changes (
    source     text NOT NULL,
    row_key    bytea NOT NULL,
    position   bigint[] NOT NULL,
    applied_at timestamptz NOT NULL,
    PRIMARY KEY (row_key, source)
);

-- +goose Down
DROP TABLE legacy_changes;
