-- +goose Up
-- No NOTIFY at commit: PostgreSQL serialises the commits of every
-- transaction that notified (one lock on the database's notification
-- queue), which capped Commit and the appliers at a few hundred commits a
-- second. The relay and the profile exporter poll instead (an index-only
-- probe of the unpublished outbox every few milliseconds, the export queue
-- at their linger).
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();

-- +goose Down
-- +goose StatementBegin
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mc_outbox', '');
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
