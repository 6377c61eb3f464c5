-- +goose Up
-- Identity rules, merges, conflicts and the identity audit.

-- Uniqueness is a rule of the identifier's type (device ids are shared by
-- store tablets), fixed on the row when it is linked.
ALTER TABLE member_identifiers ADD COLUMN is_unique boolean NOT NULL DEFAULT true;
-- The member the identifier was first linked to. A merge moves identifiers
-- to the surviving member; an unmerge sends each back to where it came from.
ALTER TABLE member_identifiers ADD COLUMN origin_member_id uuid REFERENCES members (member_id);
UPDATE member_identifiers SET origin_member_id = member_id;
ALTER TABLE member_identifiers ALTER COLUMN origin_member_id SET NOT NULL;
DROP INDEX member_identifiers_value;
CREATE UNIQUE INDEX member_identifiers_unique_value ON member_identifiers (id_type, scope, value_hash) WHERE is_unique;
CREATE INDEX member_identifiers_value ON member_identifiers (id_type, scope, value_hash);
CREATE INDEX member_identifiers_origin ON member_identifiers (origin_member_id);

-- Members folded into this one, transitively (merge protection).
ALTER TABLE members ADD COLUMN merge_count integer NOT NULL DEFAULT 0;

-- Points follow the same attribution: lots and ledger transactions remember
-- the member they belong to after an unmerge.
ALTER TABLE point_lots ADD COLUMN origin_member_id uuid REFERENCES members (member_id);
UPDATE point_lots SET origin_member_id = member_id;
ALTER TABLE point_lots ALTER COLUMN origin_member_id SET NOT NULL;
ALTER TABLE ledger_transactions ADD COLUMN origin_member_id uuid REFERENCES members (member_id);
UPDATE ledger_transactions SET origin_member_id = member_id;
ALTER TABLE ledger_transactions ALTER COLUMN origin_member_id SET NOT NULL;

CREATE TABLE merges (
    merge_id         uuid PRIMARY KEY,
    source_member_id uuid NOT NULL REFERENCES members (member_id),
    target_member_id uuid NOT NULL REFERENCES members (member_id),
    reason           text NOT NULL,
    cause_id         text NOT NULL,
    actor            text NOT NULL,
    channel          text NOT NULL DEFAULT '',
    merged_at        timestamptz NOT NULL DEFAULT now(),
    -- What the merge changed beyond moving rows, to undo it exactly.
    snapshot         jsonb NOT NULL,
    unmerged_at      timestamptz,
    unmerge_reason   text
);
CREATE INDEX merges_target ON merges (target_member_id);
CREATE INDEX merges_source ON merges (source_member_id);

CREATE TABLE identity_conflicts (
    conflict_id        uuid PRIMARY KEY,
    -- The member the identifiers were attached to first, then the others.
    member_ids         uuid[] NOT NULL,
    identifiers        jsonb NOT NULL,
    reason             text NOT NULL,
    cause_id           text NOT NULL,
    channel            text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,
    resolution         text,
    resolved_member_id uuid
);
CREATE INDEX identity_conflicts_open ON identity_conflicts (created_at, conflict_id) WHERE resolved_at IS NULL;

-- Append-only record of every link, unlink, merge, unmerge, refusal and
-- conflict, with who did it and why.
CREATE TABLE identity_audit (
    audit_id        uuid PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    action          text NOT NULL,
    actor           text NOT NULL,
    channel         text NOT NULL DEFAULT '',
    cause_id        text NOT NULL,
    member_id       uuid NOT NULL,
    other_member_id uuid,
    identifiers     jsonb NOT NULL DEFAULT '[]'::jsonb,
    before          jsonb NOT NULL DEFAULT '{}'::jsonb,
    after           jsonb NOT NULL DEFAULT '{}'::jsonb,
    reason          text NOT NULL DEFAULT ''
);
CREATE INDEX identity_audit_member ON identity_audit (member_id, at);

-- +goose StatementBegin
CREATE FUNCTION identity_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'identity_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
-- +goose StatementEnd

CREATE TRIGGER identity_audit_append_only BEFORE UPDATE OR DELETE ON identity_audit
    FOR EACH ROW EXECUTE FUNCTION identity_audit_append_only();

-- +goose Down
DROP TABLE identity_audit;
DROP FUNCTION identity_audit_append_only;
DROP TABLE identity_conflicts;
DROP TABLE merges;
ALTER TABLE ledger_transactions DROP COLUMN origin_member_id;
ALTER TABLE point_lots DROP COLUMN origin_member_id;
ALTER TABLE members DROP COLUMN merge_count;
DROP INDEX member_identifiers_origin;
DROP INDEX member_identifiers_value;
DROP INDEX member_identifiers_unique_value;
CREATE UNIQUE INDEX member_identifiers_value ON member_identifiers (id_type, scope, value_hash);
ALTER TABLE member_identifiers DROP COLUMN origin_member_id;
ALTER TABLE member_identifiers DROP COLUMN is_unique;
