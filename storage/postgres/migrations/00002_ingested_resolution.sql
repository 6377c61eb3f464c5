-- +goose Up
-- The full answer ingest gave for an event (a serialized
-- membercenter.v1.Resolution), so a redelivered event is published with
-- exactly the resolution of its first delivery.
ALTER TABLE ingested_events ADD COLUMN resolution bytea NOT NULL DEFAULT ''::bytea;

-- +goose Down
ALTER TABLE ingested_events DROP COLUMN resolution;
