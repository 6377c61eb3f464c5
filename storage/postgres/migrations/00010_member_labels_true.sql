-- +goose Up
-- member_labels becomes set membership: one row per label whose value is
-- boolean true, which is what its relational readers (benefit and campaign
-- conditions) ask. Numbers, enums and false values stay in
-- member_features.labels (and labels_pb). Keeping every value here rewrote
-- up to ~240 rows on a member's first event and a few dozen number labels on
-- every purchase: the largest share of the tag worker's PostgreSQL time
-- (`membercenter bench pipeline`).
DELETE FROM member_labels WHERE value <> 'true';

-- +goose Down
-- Every value again, one row per label, from the current label vectors.
INSERT INTO member_labels (member_id, label_id, value, updated_at)
SELECT f.member_id, l.key, l.value, f.updated_at
  FROM member_features f, jsonb_each_text(f.labels) l
    ON CONFLICT (member_id, label_id) DO UPDATE SET value = EXCLUDED.value;
