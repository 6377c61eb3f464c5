-- +goose Up
-- The member a legacy row's applied changes belong to, so that erasing the
-- member deletes the record of them: a row key is a keyed hash of the row's
-- key (a legacy id, an identifier's value), which the HMAC key could test a
-- guessed phone number against. A change of an erased member is skipped
-- (its legacy record is marked erased), so nothing is applied twice after.
ALTER TABLE legacy_changes ADD COLUMN member_id uuid;
CREATE INDEX legacy_changes_member ON legacy_changes (member_id) WHERE member_id IS NOT NULL;

-- +goose Down
DROP INDEX legacy_changes_member;
ALTER TABLE legacy_changes DROP COLUMN member_id;
