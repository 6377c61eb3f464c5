-- The operator and configuration audit for analysts and auditors: a copy of
-- PostgreSQL's append-only operator_audit (adjust.applied, adjust.requested,
-- adjust.approved, adjust.rejected, coupon.issued, member.erased) and
-- config_audit (program.loaded, catalog.loaded), each record with who made
-- it. The audit exporter copies them from queues written in the
-- transaction of the action, so none is missed; a record copied twice
-- collapses (ReplacingMergeTree by audit_id).
--
-- member_id is '' for a configuration record (document, version and sha256
-- are '' for an action on a member). detail is the PostgreSQL record's
-- detail, a JSON object as text (18.16 has no JSON type; visitParamExtract*
-- reads its flat fields).
CREATE TABLE IF NOT EXISTS operator_audit (
    audit_id    String,
    at          DateTime,
    actor       String,
    action      String,
    member_id   String,
    cause_id    String,
    document    String,
    version     String,
    sha256      String,
    detail      String,
    inserted_at DateTime
) ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (member_id, at, audit_id);
