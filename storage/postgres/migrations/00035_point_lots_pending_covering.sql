-- +goose Up
-- The lots still pending past an answer's time are read as one sum
-- (postgres.LoyaltyRows.Pending). With the points and expiry in the index,
-- the sum is an index-only scan: a member who bought hundreds of times in
-- the return window no longer costs a heap visit a lot.
DROP INDEX point_lots_pending;
CREATE INDEX point_lots_pending ON point_lots (member_id, available_at) INCLUDE (remaining, expires_at) WHERE remaining > 0;

-- +goose Down
DROP INDEX point_lots_pending;
CREATE INDEX point_lots_pending ON point_lots (member_id, available_at) WHERE remaining > 0;
