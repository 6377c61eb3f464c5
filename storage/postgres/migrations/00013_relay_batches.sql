-- +goose Up
-- The relay publishes the outbox to member.changes.v1 in Kafka
-- transactions, one batch per transaction (see package relay).
--
-- relay_leaders: each relay group's leadership term, a fencing token that
-- every write of a leader checks, so a leader that lost its lock (a zombie)
-- can no longer claim or mark anything.
CREATE TABLE relay_leaders (
    relay_group text PRIMARY KEY,
    term        bigint NOT NULL,
    leader      text NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
);
-- relay_batches: the batch in flight, recorded before its Kafka
-- transaction commits and deleted when its rows are marked published. A
-- relay taking over finds it here and asks Kafka whether it committed.
CREATE TABLE relay_batches (
    batch_id    uuid PRIMARY KEY,
    relay_group text NOT NULL,
    term        bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE outbox ADD COLUMN relay_batch uuid;
CREATE INDEX outbox_relay_batch ON outbox (relay_batch) WHERE published_at IS NULL AND relay_batch IS NOT NULL;

-- +goose Down
DROP INDEX outbox_relay_batch;
ALTER TABLE outbox DROP COLUMN relay_batch;
DROP TABLE relay_batches;
DROP TABLE relay_leaders;
