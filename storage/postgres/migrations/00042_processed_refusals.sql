-- +goose Up
-- Why a stage refused an event it recorded as processed (the benefit
-- stage: a refund of more than is left of its order, points the member
-- does not have, an order id another member holds). The refusal's dead
-- letter is sent after the stage's transaction commits; a process that
-- dies in between lost it, and a redelivery of the batch refused nothing
-- (the event was processed). With the reason kept here, a redelivery
-- refuses the event again and its letter is sent again: at least once.
ALTER TABLE processed_events ADD COLUMN refusal text;

-- +goose Down
ALTER TABLE processed_events DROP COLUMN refusal;
