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
-- The other values are rebuilt by `membercenter tags backfill`.
SELECT 1;
