-- +goose Up
-- member_profiles' rows gained merged_into (the member an id was merged
-- into; '' for a member), which segments and the analyst views read. The
-- rows written before it say '' for every id, and an id merged away gets
-- no new row by itself: the profiles of the members merged into others are
-- queued for export again, so that their rows say whom — one version up
-- where the member has features, at version 0 (a consent's row) where it
-- has only consents. A profile exporter of the release before, still
-- running, would export them without the column: stop the pipeline of the
-- release before first (as for any release that adds a profile column).
WITH v AS (
    UPDATE member_features f SET version = f.version + 1, updated_at = now()
      FROM members m
     WHERE m.member_id = f.member_id AND m.status = 'merged'
    RETURNING f.member_id, f.version),
q AS (
    SELECT member_id, version FROM v
    UNION ALL
    SELECT m.member_id, 0 FROM members m
     WHERE m.status = 'merged'
       AND NOT EXISTS (SELECT FROM member_features f WHERE f.member_id = m.member_id)
       AND EXISTS (SELECT FROM member_consents c WHERE c.member_id = m.member_id))
INSERT INTO profile_exports (member_id, version)
SELECT member_id, version FROM q
ON CONFLICT (member_id) DO UPDATE SET version = EXCLUDED.version, queued_at = now();

-- +goose Down
-- A re-export: nothing to undo.
SELECT 1;
