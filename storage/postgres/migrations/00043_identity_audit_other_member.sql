-- +goose Up
-- Erasure finds the audit records naming an erased member as the other
-- side (a merge, unmerge, refusal or conflict with it) to blank them, and
-- the members they belong to, whose changes in the outbox it blanks too.
-- Without an index each erasure read the whole audit, behind the erased
-- members' row locks. Most records (creations, links) name no other
-- member: the index holds only those that do.
CREATE INDEX identity_audit_other_member ON identity_audit (other_member_id) WHERE other_member_id IS NOT NULL;

-- +goose Down
DROP INDEX identity_audit_other_member;
