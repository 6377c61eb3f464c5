-- +goose Up
-- Erasure at the member's request (ProfileService.EraseMember, PIPL art. 47).
-- An erased member keeps its row, its ledger, lots, orders and coupons under
-- its id, which then links to no one (a pseudonym kept for accounting); what
-- identified or described the person is deleted (storage/postgres/erase.go).
ALTER TABLE members DROP CONSTRAINT members_status_check,
    ADD CONSTRAINT members_status_check CHECK (status IN ('active', 'merged', 'erased'));

-- The identity audit stays append-only, with one exception: the erasure
-- transaction (which sets membercenter.erasure locally) blanks the
-- identifier references (keyed hashes and masked values) of its members'
-- records. Who did what, when and why stays.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION identity_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('membercenter.erasure', true) = 'on'
       AND (NEW.audit_id, NEW.at, NEW.action, NEW.actor, NEW.channel, NEW.cause_id, NEW.member_id, NEW.other_member_id, NEW.reason)
           IS NOT DISTINCT FROM (OLD.audit_id, OLD.at, OLD.action, OLD.actor, OLD.channel, OLD.cause_id, OLD.member_id, OLD.other_member_id, OLD.reason) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'identity_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION identity_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'identity_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
-- +goose StatementEnd
ALTER TABLE members DROP CONSTRAINT members_status_check,
    ADD CONSTRAINT members_status_check CHECK (status IN ('active', 'merged'));
