-- Facts marketing queries: every resolved member event and every change of a
-- member's state. No raw PII: identifiers appear only as member ids.
-- ReplacingMergeTree keeps one row per key, so a redelivered record that was
-- inserted twice collapses to one (query with FINAL for exact counts before
-- background merges).
-- Kept to what ClickHouse 18.16 and current releases both accept.
CREATE TABLE IF NOT EXISTS member_events (
    event_id        String,
    member_id       String,
    event_type      String,
    channel         String,
    store_id        String,
    occurred_at     DateTime,
    ingested_at     DateTime,
    order_id        String,
    currency        String,
    amount_minor    Int64,
    discount_minor  Int64,
    points_redeemed Int64,
    items           Nested(
        sku          String,
        category     String,
        brand        String,
        quantity     Int32,
        amount_minor Int64
    ),
    trace_id        String
) ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (member_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS member_changes (
    member_id      String,
    sequence       UInt64,
    change_id      String,
    change_type    String,
    occurred_at    DateTime,
    cause_id       String,
    channel        String,
    store_id       String,
    points_delta   Int64,
    points_balance Int64,
    payload        String,
    trace_id       String,
    inserted_at    DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (member_id, sequence);
