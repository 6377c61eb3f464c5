-- Label history and the event columns the tag engine's analytics need.
-- member_profiles (one row per member, one column per catalogue label) is not
-- created here: its columns follow the label catalogue, so
-- clickhouse.EnsureProfiles creates and extends it, and (re)creates the
-- analyst views, whenever a catalogue is loaded.

-- Every change of a member's label, as the tag worker announced it in a
-- LabelsChanged member change. value is the new value as text ("true" /
-- "false", the enum value, or the number); cleared = 1 when the label no
-- longer applies (value is then ''). sequence is the member change sequence,
-- so a redelivered change collapses to one row (query with FINAL).
CREATE TABLE IF NOT EXISTS label_changes (
    member_id       String,
    label_id        String,
    value           String,
    cleared         UInt8,
    sequence        UInt64,
    changed_at      DateTime,
    cause_id        String,
    catalog_version String,
    inserted_at     DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(changed_at)
ORDER BY (member_id, label_id, sequence);

-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS, so these two statements
-- are not idempotent: they come last, and the migration recorder runs them
-- once. Each adds all of its table's columns in one ALTER.
--
-- origin_member_id: the member the event is attributed to (differs from
-- member_id after a merge); coupon_count: coupons used on a transaction;
-- review_rating: 1..5 on a review event, 0 otherwise.
ALTER TABLE member_events
    ADD COLUMN origin_member_id String DEFAULT '',
    ADD COLUMN coupon_count UInt16 DEFAULT 0,
    ADD COLUMN review_rating UInt8 DEFAULT 0;

-- points_kind: the ledger entry kind of a points_changed change ("earn",
-- "redeem", "expire", "adjust", "transfer", "reverse"), '' for other changes.
-- daily_kpis' benefit usage efficiency needs it; the JSON payload cannot be
-- parsed reliably on 18.16.
ALTER TABLE member_changes
    ADD COLUMN points_kind String DEFAULT '';
