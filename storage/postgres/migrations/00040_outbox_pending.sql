-- +goose Up
-- The changes the relay has still to publish, one narrow row each, deleted
-- when the change is published, in place of outbox.published_at. Marking a
-- change published rewrote its whole outbox row (about 1 KB with its
-- payload, and new entries in the outbox's unique indexes: the update
-- could not be HOT, published_at being in the partial index of
-- unpublished rows); deleting its pending row logs a few bytes. In the
-- pipeline bench's drain the mark was 18.6 MB of 236 MB of WAL.
--
-- A change is unpublished while its pending row exists. A row trigger on
-- the outbox writes it, so every writer makes its changes pending: also a
-- process of the version before, which inserts into the outbox alone and
-- may still run beside the migrated database during a rolling upgrade
-- (its relay and retention, which read published_at, fail until it is
-- replaced). The outbox keeps a published change until its retention
-- (MC_OUTBOX_RETENTION) has passed since it was written (created_at: a
-- change's publication time is no longer kept). member_id is the
-- distribution column for Citus, as the outbox's, and the trigger writes
-- on the change's own shard. The reference to the outbox is not declared:
-- the trigger writes the row with its change, and the outbox's pruning and
-- erasure delete only published changes (pgtest.CheckReferences checks it).
LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE;
CREATE TABLE outbox_pending (
    outbox_id bigint NOT NULL,
    member_id uuid NOT NULL,
    PRIMARY KEY (outbox_id, member_id)
);
INSERT INTO outbox_pending (outbox_id, member_id)
SELECT outbox_id, member_id FROM outbox WHERE published_at IS NULL;

-- +goose StatementBegin
CREATE FUNCTION outbox_pending_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_pending (outbox_id, member_id) VALUES (NEW.outbox_id, NEW.member_id);
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER outbox_pending_insert AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_pending_insert();

-- A relay batch recorded before migration 00034 names its rows by tag; the
-- tags of published rows are of no use any more, and would fill the index.
UPDATE outbox SET relay_batch = NULL WHERE relay_batch IS NOT NULL AND published_at IS NOT NULL;
-- Drops outbox_unpublished and outbox_relay_batch, whose predicates read it.
ALTER TABLE outbox DROP COLUMN published_at;
CREATE INDEX outbox_relay_batch ON outbox (relay_batch) WHERE relay_batch IS NOT NULL;

-- +goose Down
LOCK TABLE outbox, outbox_pending IN ACCESS EXCLUSIVE MODE;
DROP TRIGGER outbox_pending_insert ON outbox;
DROP FUNCTION outbox_pending_insert();
DROP INDEX outbox_relay_batch;
ALTER TABLE outbox ADD COLUMN published_at timestamptz;
UPDATE outbox o SET published_at = o.created_at
 WHERE NOT EXISTS (SELECT FROM outbox_pending p WHERE p.outbox_id = o.outbox_id AND p.member_id = o.member_id);
CREATE INDEX outbox_unpublished ON outbox (outbox_id) WHERE published_at IS NULL;
CREATE INDEX outbox_relay_batch ON outbox (relay_batch) WHERE published_at IS NULL AND relay_batch IS NOT NULL;
DROP TABLE outbox_pending;
