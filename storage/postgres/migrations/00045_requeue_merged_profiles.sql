-- +goose Up
-- member_profiles' rows gained merged_into (the member an id was merged
-- into; '' for a member), which segments and the analyst views read. The
-- rows written before it say '' for every id, and an id merged away gets
-- no new row by itself: the profiles of the members merged into others are
-- queued for export again, one version up, so that their rows say whom.
WITH v AS (
    UPDATE member_features f SET version = f.version + 1, updated_at = now()
      FROM members m
     WHERE m.member_id = f.member_id AND m.status = 'merged'
    RETURNING f.member_id, f.version)
INSERT INTO profile_exports (member_id, version)
SELECT member_id, version FROM v
ON CONFLICT (member_id) DO UPDATE SET version = EXCLUDED.version, queued_at = now();

-- +goose Down
-- A re-export: nothing to undo.
SELECT 1;
