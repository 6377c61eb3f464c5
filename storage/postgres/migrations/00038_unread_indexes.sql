-- +goose Up
-- Two indexes no statement reads, each written by every purchase:
--   - ledger_transactions_member: a member's ledger is read from its
--     entries (ListLedger, by ledger_entries_member) and transactions only
--     by their id;
--   - orders_lot: an order's lot is read from the order (orders.lot_id),
--     and no lot is ever deleted or given a new id, so the reference to it
--     never looks orders up by lot. (The Citus layout of
--     docs/scaling-postgres.md, where orders reference lots by
--     (member_id, lot_id) and a merge moves both, would need that index.)
DROP INDEX ledger_transactions_member;
DROP INDEX orders_lot;

-- +goose Down
CREATE INDEX orders_lot ON orders (lot_id);
CREATE INDEX ledger_transactions_member ON ledger_transactions (member_id, created_at DESC);
