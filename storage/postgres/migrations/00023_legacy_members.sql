-- +goose Up
-- Members brought over from a legacy system (membercenter import): which
-- member each legacy record became, so an import run again (after a kill,
-- or a second time) skips what it did and `import verify` finds each
-- member by the id the source knows. row_sha256 is the hash of the source
-- record as imported, to tell a record that changed since. Found by the
-- legacy id (Citus: distributed by it); member_id is indexed for the way
-- back, with no foreign key (a distributed table by another key cannot
-- refer to members).
CREATE TABLE legacy_members (
    source      text NOT NULL,
    legacy_id   text NOT NULL,
    member_id   uuid NOT NULL,
    row_sha256  bytea NOT NULL,
    imported_at timestamptz NOT NULL,
    PRIMARY KEY (legacy_id, source)
);
CREATE INDEX legacy_members_member ON legacy_members (member_id);

-- +goose Down
DROP TABLE legacy_members;
