-- +goose Up
-- The foreign keys that the Citus layout drops (docs/scaling-postgres.md,
-- "Foreign keys to another member") and that the stream core checks with
-- every purchase: an origin member on lots, orders, activity, coupons and
-- ledger transactions, a ledger entry's member, a lot's transaction, an
-- ingested event's member. Each insert ran a lookup of the referenced row
-- and locked it FOR KEY SHARE; a members row that a batch of the member
-- stage held meanwhile became a multixact for the two lockers. Together
-- about 4 checks an event: without them a drain's PostgreSQL statements
-- took 10% less time (the median of five pairs of runs), its CPU an event
-- 2-3% less (BENCHMARKS.md, 2026-12-07).
--
-- The checks could not fail: members are never deleted (an erasure blanks
-- the row), nor are ledger transactions (the ledger is append-only, and
-- erasure keeps it), and every writer takes the ids it stores from rows it
-- read or wrote in its transaction. Tests check the references instead
-- (pgtest.CheckReferences, at the end of every test on a pgtest.NewPool
-- database, and the fault suite's final check). Processes of the version
-- before work unchanged: none relied on the checks.
--
-- The foreign keys of identity's writes (member_identifiers.origin_member_id,
-- members.merged_into, merges.source_member_id: a link or a merge, not a
-- purchase) stay until the move to Citus.
ALTER TABLE ingested_events DROP CONSTRAINT ingested_events_member_id_fkey;
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_origin_member_id_fkey;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_member_id_fkey;
ALTER TABLE point_lots DROP CONSTRAINT point_lots_transaction_id_fkey;
ALTER TABLE point_lots DROP CONSTRAINT point_lots_origin_member_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_origin_member_id_fkey;
ALTER TABLE member_activity DROP CONSTRAINT member_activity_origin_member_id_fkey;
ALTER TABLE coupons DROP CONSTRAINT coupons_origin_member_id_fkey;

-- +goose Down
ALTER TABLE coupons ADD CONSTRAINT coupons_origin_member_id_fkey FOREIGN KEY (origin_member_id) REFERENCES members(member_id);
ALTER TABLE member_activity ADD CONSTRAINT member_activity_origin_member_id_fkey FOREIGN KEY (origin_member_id) REFERENCES members(member_id);
ALTER TABLE orders ADD CONSTRAINT orders_origin_member_id_fkey FOREIGN KEY (origin_member_id) REFERENCES members(member_id);
ALTER TABLE point_lots ADD CONSTRAINT point_lots_origin_member_id_fkey FOREIGN KEY (origin_member_id) REFERENCES members(member_id);
ALTER TABLE point_lots ADD CONSTRAINT point_lots_transaction_id_fkey FOREIGN KEY (transaction_id) REFERENCES ledger_transactions(transaction_id);
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_member_id_fkey FOREIGN KEY (member_id) REFERENCES members(member_id);
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_origin_member_id_fkey FOREIGN KEY (origin_member_id) REFERENCES members(member_id);
ALTER TABLE ingested_events ADD CONSTRAINT ingested_events_member_id_fkey FOREIGN KEY (member_id) REFERENCES members(member_id);
