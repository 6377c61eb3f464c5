-- +goose Up
-- The last month evaluated of a member's loyalty state, as a column. Its
-- index (00011, for the month-start job) was on an expression of the state
-- document, so every write of a state (each Commit group, each batch of the
-- benefit stage) changed an indexed column: no update could be HOT (1 of
-- 58,563 in the benefits bench's database), and each inserted a new entry
-- into both of the table's indexes. A stored generated column holds the
-- month; an update that leaves it as it was is HOT when the page has room.
-- Adding the column rewrites the table under an exclusive lock: about 3.5 s
-- at 1,000,000 members (a probe table of that size), during which Commits
-- and the member stage wait. Processes of the version before go on working
-- through it and after, but their month-start job reads the expression
-- without its index: a scan of the whole table a run, so replace them soon.
ALTER TABLE loyalty_state ADD COLUMN evaluated int GENERATED ALWAYS AS ((state->>'evaluated')::int) STORED;
CREATE INDEX loyalty_state_evaluated_month ON loyalty_state (evaluated);
DROP INDEX loyalty_state_evaluated;

-- +goose Down
CREATE INDEX loyalty_state_evaluated ON loyalty_state (((state->>'evaluated')::int));
DROP INDEX loyalty_state_evaluated_month;
ALTER TABLE loyalty_state DROP COLUMN evaluated;
