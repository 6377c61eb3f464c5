-- +goose Up
-- Lots are read by member (state loads, merges) and found by order (the
-- order's own lot); without these, both scan the table.
CREATE INDEX point_lots_member ON point_lots (member_id, lot_id);
CREATE INDEX point_lots_order ON point_lots (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX orders_lot ON orders (lot_id);

-- +goose Down
DROP INDEX orders_lot;
DROP INDEX point_lots_order;
DROP INDEX point_lots_member;
