-- +goose Up
-- The members merged into a member: a merge's fold (FoldRoots), "were
-- others merged into it" (AbsorbedOthers, import verify). Without it each
-- of those read every member row. Merged members are few: a partial index.
CREATE INDEX IF NOT EXISTS members_merged_into ON members (merged_into) WHERE merged_into IS NOT NULL;

-- +goose Down
DROP INDEX members_merged_into;
