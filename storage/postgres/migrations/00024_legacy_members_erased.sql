-- +goose Up
-- A legacy member erased at the member's request (EraseMember) keeps its
-- row, marked, so that an import run again does not bring the person back;
-- the record's hash goes.
ALTER TABLE legacy_members ADD COLUMN erased boolean NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE legacy_members DROP COLUMN erased;
