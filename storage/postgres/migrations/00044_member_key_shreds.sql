-- +goose Up
-- The data keys an erasure has still to shred. EraseMember shredded the
-- keys first, in the key store (which may be a database of its own), and
-- then erased in a transaction: when that transaction failed and was
-- retried after an unmerge had separated the members (or failed for good),
-- the keys of members it did not erase were gone, and their data
-- unreadable. Now the erasure queues its members here, in its own
-- transaction, and shreds their keys once it has committed; a key left
-- queued (the process ended in between) is shredded by the next sweep of
-- any serve process, or when the erasure is asked again.
CREATE TABLE member_key_shreds (
    member_id uuid PRIMARY KEY,
    erased_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE member_key_shreds;
