-- Copy of the identity audit for analysts: every member creation, link,
-- unlink, merge, unmerge, refused merge and recorded conflict, with who did
-- it, why, and the identity before and after (identifiers by masked form
-- and keyed hash only; never raw values).
CREATE TABLE IF NOT EXISTS identity_audit (
    audit_id        String,
    at              DateTime,
    action          String,
    actor           String,
    channel         String,
    cause_id        String,
    member_id       String,
    other_member_id String,
    identifiers     String,
    before          String,
    after           String,
    reason          String,
    merge_id        String,
    conflict_id     String,
    sequence        UInt64,
    inserted_at     DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (member_id, at, audit_id);
