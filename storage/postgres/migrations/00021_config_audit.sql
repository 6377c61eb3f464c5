-- +goose Up
-- The configuration audit (who loaded which programme or label catalogue)
-- and the queues that carry both audits to ClickHouse.

-- Append-only record of every configuration change an operator makes:
-- program.loaded, catalog.loaded, written in the transaction that stores
-- the new version row. actor is who loaded it ("cli/alice" for
-- 'membercenter program load --operator alice'); document the table the
-- version went to (program_versions, label_catalogs); sha256 the hex
-- SHA-256 of the source exactly as stored. Not a member's row: a
-- reference table on Citus, like the versions themselves.
CREATE TABLE config_audit (
    audit_id uuid PRIMARY KEY,
    at       timestamptz NOT NULL,
    actor    text NOT NULL CHECK (actor <> ''),
    action   text NOT NULL,
    document text NOT NULL,
    version  text NOT NULL,
    sha256   text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    detail   jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX config_audit_document ON config_audit (document, at);
CREATE INDEX config_audit_actor ON config_audit (actor, at);

-- +goose StatementBegin
CREATE FUNCTION config_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'config_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
-- +goose StatementEnd

CREATE TRIGGER config_audit_append_only BEFORE UPDATE OR DELETE ON config_audit
    FOR EACH ROW EXECUTE FUNCTION config_audit_append_only();

-- The audit records ClickHouse has yet to get. An audit table cannot say
-- what was exported (it takes no UPDATE), and a read by time or id would
-- miss a record whose transaction commits after a later one's: so each
-- record is queued by the statement that writes it, and leaves the queue
-- only once ClickHouse holds it (the profile_exports pattern). Per member
-- for operator_audit (co-located with it on Citus), by audit id for
-- config_audit.
CREATE TABLE operator_audit_exports (
    member_id uuid NOT NULL,
    audit_id  uuid NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, audit_id)
);
CREATE INDEX operator_audit_exports_queued ON operator_audit_exports (queued_at);

CREATE TABLE config_audit_exports (
    audit_id  uuid PRIMARY KEY REFERENCES config_audit (audit_id),
    queued_at timestamptz NOT NULL DEFAULT now()
);

-- What the operator audit holds already goes to ClickHouse too.
INSERT INTO operator_audit_exports (member_id, audit_id) SELECT member_id, audit_id FROM operator_audit;

-- +goose Down
DROP TABLE config_audit_exports;
DROP TABLE operator_audit_exports;
DROP TABLE config_audit;
DROP FUNCTION config_audit_append_only;
