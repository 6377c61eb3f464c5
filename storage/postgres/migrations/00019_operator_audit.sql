-- +goose Up
-- Maker–checker for large point adjustments, and the operators' audit trail.

-- An Adjust whose size exceeds the programme's limits.adjust_approval_points
-- is not applied: it waits here for a second operator (the checker) to
-- approve or reject it. approval_id is derived from the request's
-- idempotency key (a name-based UUID of it), so the primary key is also the
-- uniqueness of request_key: a retried request finds its approval, never a
-- second one, and the table stays keyed by one column (distributed by
-- approval_id on Citus: DecideAdjustment knows only the id).
CREATE TABLE adjustment_approvals (
    approval_id  uuid PRIMARY KEY,
    -- No reference to members: looked up by id, not by member, so not on the
    -- member's shard (the member's existence is checked by the request).
    member_id    uuid NOT NULL,
    points       bigint NOT NULL CHECK (points <> 0),
    reason       text NOT NULL,
    maker        text NOT NULL,
    requested_at timestamptz NOT NULL,
    request_key  text NOT NULL,
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected')),
    checker      text,
    decided_at   timestamptz,
    note         text NOT NULL DEFAULT '',
    CHECK ((state = 'pending') = (checker IS NULL AND decided_at IS NULL)),
    -- The service refuses it first (PermissionDenied); this is the last word.
    CHECK (checker IS NULL OR checker <> maker)
);
CREATE INDEX adjustment_approvals_state ON adjustment_approvals (state, requested_at, approval_id);
CREATE INDEX adjustment_approvals_member ON adjustment_approvals (member_id, requested_at, approval_id);

-- A request is decided once: a decided approval never changes again, what
-- was requested never changes, and no approval is deleted.
-- +goose StatementBegin
CREATE FUNCTION adjustment_approvals_decide_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'adjustment_approvals rows are never deleted' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF OLD.state <> 'pending' THEN
        RAISE EXCEPTION 'adjustment approval % is already %', OLD.approval_id, OLD.state USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.approval_id, NEW.member_id, NEW.points, NEW.reason, NEW.maker, NEW.requested_at, NEW.request_key)
       IS DISTINCT FROM (OLD.approval_id, OLD.member_id, OLD.points, OLD.reason, OLD.maker, OLD.requested_at, OLD.request_key) THEN
        RAISE EXCEPTION 'adjustment approval %: only the decision may change', OLD.approval_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
-- +goose StatementEnd

CREATE TRIGGER adjustment_approvals_decide_once BEFORE UPDATE OR DELETE ON adjustment_approvals
    FOR EACH ROW EXECUTE FUNCTION adjustment_approvals_decide_once();

-- Append-only record of every operator action on a member's benefits —
-- adjust.applied, adjust.requested, adjust.approved, adjust.rejected — with
-- who did it (the authenticated actor, "backoffice/alice"), written in the
-- transaction that makes the action's effect. cause_id is the request
-- ("rpc:benefits.Adjust:<key>", "rpc:benefits.DecideAdjustment:<key>") or,
-- for an approved adjustment's application, "approval:<approval_id>", the
-- cause of its ledger transaction.
CREATE TABLE operator_audit (
    audit_id  uuid NOT NULL,
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    member_id uuid NOT NULL,
    cause_id  text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (audit_id, member_id)
);
CREATE INDEX operator_audit_member ON operator_audit (member_id, at);
CREATE INDEX operator_audit_actor ON operator_audit (actor, at);

-- +goose StatementBegin
CREATE FUNCTION operator_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator_audit is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
-- +goose StatementEnd

CREATE TRIGGER operator_audit_append_only BEFORE UPDATE OR DELETE ON operator_audit
    FOR EACH ROW EXECUTE FUNCTION operator_audit_append_only();

-- +goose Down
DROP TABLE operator_audit;
DROP FUNCTION operator_audit_append_only;
DROP TABLE adjustment_approvals;
DROP FUNCTION adjustment_approvals_decide_once;
