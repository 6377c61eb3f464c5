-- +goose Up
-- A member's true labels as one row, a sorted array, in place of a row per
-- label (member_labels, ~25 a member). A member's first labels inserted
-- two dozen rows and their index entries; the freshness run's purchases of
-- members without labels spent more PostgreSQL time on them than on any
-- other statement (`mc-bench pipeline`). The tag worker now writes the
-- member's whole set, once, when a boolean label became true or stopped
-- being true; benefit and campaign conditions read the array. As before,
-- the reference to members is not declared: every writer holds the
-- member's row, and members are never deleted (an erasure blanks the row
-- and deletes this one); the tests check it (pgtest.CheckReferences).
-- Processes of the version before write member_labels: stop them before
-- migrating (they fail on the dropped table, retry, then dead-letter). The
-- lock keeps any of their writes from landing between the copy and the
-- drop, where it would be lost: a set is rewritten only when one of its
-- labels flips, so nothing would repair it.
LOCK TABLE member_labels IN ACCESS EXCLUSIVE MODE;
CREATE TABLE member_label_sets (
    member_id  uuid PRIMARY KEY,
    labels     text[] NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO member_label_sets (member_id, labels, updated_at)
SELECT member_id, array_agg(label_id ORDER BY label_id), max(updated_at)
  FROM member_labels WHERE value = 'true' GROUP BY member_id;
DROP TABLE member_labels;

-- +goose Down
CREATE TABLE member_labels (
    member_id  uuid NOT NULL,
    label_id   text NOT NULL,
    value      text NOT NULL DEFAULT 'true',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, label_id)
);
INSERT INTO member_labels (member_id, label_id, value, updated_at)
SELECT s.member_id, l, 'true', s.updated_at FROM member_label_sets s, unnest(s.labels) l;
DROP TABLE member_label_sets;
