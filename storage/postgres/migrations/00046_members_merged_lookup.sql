-- +goose Up
-- The profile exporter reads, for every member it exports, whom the member
-- is merged into (member_profiles.merged_into). Looked up in members, an
-- active member's row — rewritten at every change (change_seq) — cost a
-- walk of its versions each time; this index holds only the merged members,
-- so most lookups end in it.
CREATE INDEX members_merged_member ON members (member_id) INCLUDE (merged_into) WHERE merged_into IS NOT NULL;

-- +goose Down
DROP INDEX members_merged_member;
