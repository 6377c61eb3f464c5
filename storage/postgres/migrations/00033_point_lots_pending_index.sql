-- +goose Up
-- An answer that says how many points are available (Quote, Commit) reads
-- a member's open lots one by one only where it can tell them apart: the
-- ones expiring by its time (point_lots_open) and the ones still pending
-- (this index); the others it reads as one sum, the balance less those
-- (postgres.LoadLoyalty, LoadLoyaltyBatch). Heavy shoppers hold a lot per
-- purchase for a year, so reading every open lot was the benefit stage's
-- and Quote's dearest statement.
CREATE INDEX point_lots_pending ON point_lots (member_id, available_at) WHERE remaining > 0;

-- +goose Down
DROP INDEX point_lots_pending;
