-- +goose Up
-- A keyed hash of what each ingested event said (identity's fingerprint):
-- an event id a channel uses again for another event is told apart from a
-- redelivery of the same event, and refused, where before ingest gave it
-- the first event's answer and passed it on (the stages, which had
-- applied the first event, passed over it; ClickHouse kept its row in
-- place of the first's). Rows of the version before have none and are
-- not compared. An erasure clears it with the resolution.
ALTER TABLE ingested_events ADD COLUMN fingerprint bytea;

-- +goose Down
ALTER TABLE ingested_events DROP COLUMN fingerprint;
