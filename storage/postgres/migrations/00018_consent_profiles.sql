-- +goose Up
-- ClickHouse's member_profiles gains a consent column per purpose (segments
-- for a purpose leave out the members without consent for it); rows
-- written before have the defaults of a member who never decided. The
-- members who did decide are exported again, under a new version, so that
-- their rows carry their decisions.
WITH v AS (
    UPDATE member_features f SET version = f.version + 1
     WHERE EXISTS (SELECT 1 FROM member_consents c WHERE c.member_id = f.member_id)
    RETURNING f.member_id, f.version)
INSERT INTO profile_exports (member_id, version)
SELECT member_id, version FROM v ORDER BY member_id
ON CONFLICT (member_id) DO UPDATE SET version = EXCLUDED.version, queued_at = now();

-- +goose Down
-- Nothing to undo: the export queue drains by itself.
SELECT 1;
