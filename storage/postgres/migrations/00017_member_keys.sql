-- +goose Up
-- Primary keys that contain the member column, so that Citus can enforce
-- them when these tables are distributed by member (docs/scaling-postgres.md:
-- a distributed table's primary key must contain its distribution column).
-- Only tables where it costs nothing else: no foreign key refers to the old
-- key, no ON CONFLICT names it, and every statement keeps an index.
--   - outbox, identity_audit, merges: the old key stays the leading column,
--     so the relay's lookups by outbox_id and the unmerge's by merge_id use
--     the new key's index as they used the old one. merges is distributed by
--     its target (the survivor), the side FoldedInto walks.
--   - tier_history, benefit_history: nothing reads them by id; the key is
--     led by the member and replaces tier_history_member, the same columns.
-- Each ALTER rebuilds one index under an exclusive lock (seconds on a table
-- of millions of rows), like any key change.
ALTER TABLE outbox
    DROP CONSTRAINT outbox_pkey,
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (outbox_id, member_id);
ALTER TABLE identity_audit
    DROP CONSTRAINT identity_audit_pkey,
    ADD CONSTRAINT identity_audit_pkey PRIMARY KEY (audit_id, member_id);
ALTER TABLE merges
    DROP CONSTRAINT merges_pkey,
    ADD CONSTRAINT merges_pkey PRIMARY KEY (merge_id, target_member_id);
ALTER TABLE tier_history
    DROP CONSTRAINT tier_history_pkey,
    ADD CONSTRAINT tier_history_pkey PRIMARY KEY (member_id, id);
DROP INDEX tier_history_member;
ALTER TABLE benefit_history
    DROP CONSTRAINT benefit_history_pkey,
    ADD CONSTRAINT benefit_history_pkey PRIMARY KEY (member_id, id);

-- +goose Down
ALTER TABLE benefit_history
    DROP CONSTRAINT benefit_history_pkey,
    ADD CONSTRAINT benefit_history_pkey PRIMARY KEY (id);
CREATE INDEX tier_history_member ON tier_history (member_id, id);
ALTER TABLE tier_history
    DROP CONSTRAINT tier_history_pkey,
    ADD CONSTRAINT tier_history_pkey PRIMARY KEY (id);
ALTER TABLE merges
    DROP CONSTRAINT merges_pkey,
    ADD CONSTRAINT merges_pkey PRIMARY KEY (merge_id);
ALTER TABLE identity_audit
    DROP CONSTRAINT identity_audit_pkey,
    ADD CONSTRAINT identity_audit_pkey PRIMARY KEY (audit_id);
ALTER TABLE outbox
    DROP CONSTRAINT outbox_pkey,
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (outbox_id);
