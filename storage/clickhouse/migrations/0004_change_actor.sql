-- The operator audit in analytics: a member change made by an operator's
-- action (an Adjust) names the operator (actor, "backoffice/alice") and,
-- when the action needed a second operator's approval, the approver; both
-- '' for every other change. The JSON payload carries them too, but 18.16
-- cannot parse it reliably.
--
-- ClickHouse 18.16 has no ADD COLUMN IF NOT EXISTS: this statement is not
-- idempotent, and the migration recorder runs it once (a crash before the
-- record finds the columns there, which Migrate accepts). Both columns in
-- one ALTER.
ALTER TABLE member_changes
    ADD COLUMN actor String DEFAULT '',
    ADD COLUMN approver String DEFAULT '';
