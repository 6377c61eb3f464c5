-- +goose Up
-- The scheduled expiry and month-start job (benefits.Service.Advance) finds
-- the members that are due from the due side: open lots by expiry, and
-- loyalty states by the last month evaluated. Scanning every member for them
-- cost a full pass over members each minute (~0.2 s of PostgreSQL CPU per
-- run at 1,000,000 members in `membercenter bench pipeline`, growing with
-- the member count).
CREATE INDEX point_lots_expiring ON point_lots (expires_at) WHERE remaining > 0;
CREATE INDEX loyalty_state_evaluated ON loyalty_state (((state->>'evaluated')::int));

-- +goose Down
DROP INDEX loyalty_state_evaluated;
DROP INDEX point_lots_expiring;
